//! What a node presents and trusts, as rustls configurations that are
//! replaced whole when its certificate is renewed or the CA rotates: a
//! listener takes the current server configuration for every connection it
//! accepts, a client the current client configuration for every connection
//! it opens, so neither restarts and no connection in progress is cut.
//!
//! Both sides check the peer's chain against the trusted roots (one, or two
//! during a CA rotation's overlap) and then its identity, at the handshake:
//! a peer without a certificate (where one is required), with one from an
//! unknown CA, expired, or naming an identity the listener does not take, is
//! refused before any request, and the reason is logged.

use std::sync::{Arc, RwLock};

use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    server::{
        ParsedCertificate, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};

use super::identity::{self, CertInfo, Identity};

/// Which identities a side takes from the other.
pub type Accept = Arc<dyn Fn(&Identity) -> Result<(), String> + Send + Sync>;

/// A node's certificate chain, key and trusted roots, in PEM.
#[derive(Clone)]
pub struct Material {
    pub chain_pem: String,
    pub key_pem: String,
    /// One CA certificate, or two during a rotation's overlap.
    pub roots_pem: String,
}

struct Current {
    info: CertInfo,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Arc<RootCertStore>,
}

/// A node's TLS credentials; cheap to clone, shared by its listeners and
/// clients.
#[derive(Clone)]
pub struct Credentials {
    domain: Arc<str>,
    provider: Arc<CryptoProvider>,
    current: Arc<RwLock<Arc<Current>>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load(material: &Material, domain: &str) -> Result<Current, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(material.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the certificate chain is not PEM: {e}"))?;
    let leaf = chain
        .first()
        .ok_or("the certificate file holds no certificate")?;
    let info = identity::read(leaf, domain)?;
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes())
        .map_err(|e| format!("the key is not a PEM private key: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(material.roots_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("the CA bundle is not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("a CA certificate in the bundle is not usable: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA bundle holds no certificate".into());
    }
    Ok(Current {
        info,
        chain,
        key: Arc::new(key),
        roots: Arc::new(roots),
    })
}

impl Credentials {
    /// Credentials of trust domain `domain` from `material`.
    pub fn new(domain: &str, material: &Material) -> Result<Credentials, String> {
        let current = load(material, domain)?;
        Ok(Credentials {
            domain: domain.into(),
            provider: provider(),
            current: Arc::new(RwLock::new(Arc::new(current))),
        })
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes a renewed certificate, or new roots: connections opened or
    /// accepted from now on use them.
    pub fn replace(&self, material: &Material) -> Result<(), String> {
        let next = Arc::new(load(material, &self.domain)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// This node's certificate: identity, serial, validity.
    pub fn info(&self) -> CertInfo {
        self.current().info.clone()
    }

    /// A server configuration for one listener: clients must present a
    /// certificate (unless `optional`) of an identity `accept` takes.
    pub fn server_config(&self, accept: Accept, optional: bool) -> Result<ServerConfig, String> {
        let current = self.current();
        let mut webpki = WebPkiClientVerifier::builder_with_provider(
            current.roots.clone(),
            self.provider.clone(),
        );
        if optional {
            webpki = webpki.allow_unauthenticated();
        }
        let inner = webpki
            .build()
            .map_err(|e| format!("cannot verify clients with this CA bundle: {e}"))?;
        let verifier = Arc::new(ClientIdentity {
            inner,
            domain: self.domain.clone(),
            accept,
        });
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(current.chain.clone(), current.key.clone_key())
            .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// A server configuration for the public listener, for the nodes and
    /// Envoys that reach it over TLS: this node's certificate, no client
    /// certificate asked for (who may call is the ingress's decision), h2
    /// and http/1.1.
    pub fn public_server_config(&self) -> Result<ServerConfig, String> {
        let current = self.current();
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(current.chain.clone(), current.key.clone_key())
            .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// A client configuration: presents this node's certificate, and takes
    /// servers of an identity `accept` takes.
    pub fn client_config(&self, accept: Accept) -> Result<ClientConfig, String> {
        let current = self.current();
        let verifier = server_verifier(&self.provider, &current.roots, &self.domain, accept)?;
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(current.chain.clone(), current.key.clone_key())
            .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// For a node that has no certificate yet (it is asking for its first):
/// checks the server as `Credentials::client_config` does, presents none.
pub fn anonymous_client_config(
    domain: &str,
    roots_pem: &str,
    accept: Accept,
) -> Result<ClientConfig, String> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("the CA bundle is not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("a CA certificate in the bundle is not usable: {e}"))?;
    }
    let verifier = server_verifier(&provider, &Arc::new(roots), domain, accept)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn server_verifier(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    domain: &str,
    accept: Accept,
) -> Result<Arc<ServerIdentity>, String> {
    let schemes = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| format!("cannot verify servers with this CA bundle: {e}"))?
        .supported_verify_schemes();
    Ok(Arc::new(ServerIdentity {
        roots: roots.clone(),
        provider: provider.clone(),
        domain: domain.into(),
        accept,
        schemes,
    }))
}

/// Refused handshakes: the first in 10 s is a warning, the rest debug lines,
/// so that a flood of bad clients does not flood the log.
static REFUSALS: crate::telemetry::Throttle =
    crate::telemetry::Throttle::new(std::time::Duration::from_secs(10));

/// Logs why a handshake was refused (`side`: whose certificate).
fn log_refusal(side: &str, why: &dyn std::fmt::Display) {
    if REFUSALS.ready() {
        tracing::warn!(%why, "TLS handshake refused: the {side}'s certificate (further refusals within 10 s are logged at debug level)");
    } else {
        tracing::debug!(%why, "TLS handshake refused: the {side}'s certificate");
    }
}

/// The identity the end-entity certificate names, checked by `accept`.
fn check_identity(
    end_entity: &CertificateDer<'_>,
    domain: &str,
    accept: &Accept,
    side: &str,
) -> Result<Identity, rustls::Error> {
    let refuse = |why: String| {
        log_refusal(side, &why);
        rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
    };
    let info = identity::read(end_entity, domain).map_err(refuse)?;
    accept(&info.identity).map_err(refuse)?;
    Ok(info.identity)
}

/// A listener's check of its clients: the chain (webpki), then the
/// identity.
struct ClientIdentity {
    inner: Arc<dyn ClientCertVerifier>,
    domain: Arc<str>,
    accept: Accept,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClientIdentity {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| log_refusal("client", e))?;
        check_identity(end_entity, &self.domain, &self.accept, "client")?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client's check of the server: the chain against the roots (node
/// certificates name an identity, not a host name), then the identity.
struct ServerIdentity {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    domain: Arc<str>,
    accept: Accept,
    schemes: Vec<SignatureScheme>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for ServerIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .inspect_err(|e| log_refusal("server", e))?;
        check_identity(end_entity, &self.domain, &self.accept, "server")?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}
