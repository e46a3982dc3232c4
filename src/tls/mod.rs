//! TLS between nodes: the cluster's certificate
//! authority, the identities its certificates name, and the rustls
//! configurations built from a node's certificate that are replaced, not
//! restarted, when it is renewed or the CA rotates.
//!
//! - `identity`: `spiffe://<domain>/member/<node>`, `.../client/<services>/<node>`,
//!   `.../envoy/<name>`, read from a certificate;
//! - `ca`: `Ca` (made, or an operator's imported) signs a node's request
//!   with the identity the node authenticated as; `NodeKey` is made where
//!   it is used;
//! - `credentials`: a node's chain, key and trusted roots as rustls server
//!   and client configurations that check the peer's identity at the
//!   handshake;
//! - `peer`: mutual TLS between nodes: a member's certificate issued from
//!   the CA it holds, a store client's from a member, renewed in place;
//! - `public`: the public listener's TLS: the operator's certificate
//!   files, chosen by SNI and reloaded when the files change, and in a
//!   cluster the node's own certificate for nodes and Envoys that name the
//!   trust domain.
//!
//! The plan it serves is ADR 0010.

use std::sync::Arc;

pub mod ca;
pub mod credentials;
pub mod identity;
pub mod peer;
pub mod public;

/// A listener's current TLS configuration for one handshake, given the
/// name the client asks for (SNI): each connection takes what this gives at
/// that moment (certificates change while a listener serves). `None`
/// refuses the handshake.
pub type TlsSource = Arc<dyn Fn(Option<&str>) -> Option<Arc<rustls::ServerConfig>> + Send + Sync>;

/// This node's TLS between nodes as it is now: a node can become a cluster
/// member, or leave its cluster, while it runs. `None`: no TLS between
/// nodes (single mode, or `cluster.tls: off`).
pub type NodeTls = Arc<dyn Fn() -> Option<peer::PeerTls> + Send + Sync>;

/// A source that gives every handshake `config()`, whatever name it asks
/// for.
pub fn fixed(config: impl Fn() -> Arc<rustls::ServerConfig> + Send + Sync + 'static) -> TlsSource {
    Arc::new(move |_| Some(config()))
}

/// The certificate a client presented in the TLS handshake (checked by the
/// listener's verifier), in every request of its connection; what it says
/// is read once per connection.
#[derive(Clone, Debug)]
pub struct PeerCertificate(Arc<Presented>);

#[derive(Debug)]
struct Presented {
    der: rustls_pki_types::CertificateDer<'static>,
    info: std::sync::OnceLock<Option<identity::CertInfo>>,
}

impl PeerCertificate {
    pub fn new(der: rustls_pki_types::CertificateDer<'static>) -> PeerCertificate {
        PeerCertificate(Arc::new(Presented {
            der,
            info: std::sync::OnceLock::new(),
        }))
    }

    pub fn der(&self) -> &[u8] {
        &self.0.der
    }

    /// Its identity and validity in trust domain `domain` (the first
    /// caller's domain: a listener has one), or None if it names none.
    pub fn info(&self, domain: &str) -> Option<&identity::CertInfo> {
        self.0
            .info
            .get_or_init(|| identity::read(&self.0.der, domain).ok())
            .as_ref()
    }
}

#[cfg(test)]
mod tests;
