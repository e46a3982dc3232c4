//! Mutual TLS between nodes (the peer listener and its clients).
//!
//! A member issues its own certificate from the cluster's CA (derived from
//! the cluster secret, or the operator's files); a store client asks a
//! member for one (`cluster::certify`). `PeerTls` holds a node's
//! credentials and the rustls configurations made from them: rebuilt when
//! the certificate is renewed, taken by every connection opened or accepted
//! afterwards, so a renewal needs no restart and cuts no connection.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use sha2::Digest;

use super::{
    ca::{BACKDATE, Ca, NODE_LIFETIME, NodeKey},
    credentials::{Accept, Credentials, Material},
    identity::{CertInfo, Identity},
};

/// The trust domain unless the config names one.
pub const DEFAULT_DOMAIN: &str = "flotilla.local";

/// Where a cluster's CA comes from (`cluster.tls` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// Derived from the cluster secret (`Ca::derive`): the default.
    Secret,
    /// `ca.crt` and `ca.key` in this directory (`flotilla ca init`, or the
    /// operator's own CA), on every member.
    Dir(PathBuf),
}

/// TLS between nodes, as the config says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerTlsMode {
    /// `tls: off`, written out: plaintext, the HMAC credentials as proof.
    Off,
    On(PeerTlsSettings),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTlsSettings {
    pub ca: CaSource,
    /// The trust domain every identity names.
    pub domain: String,
    /// How long a certificate a member issues is valid (renewed at two
    /// thirds).
    pub lifetime: Duration,
    /// The hosts (DNS names, IP addresses) a member's own certificate
    /// names beside its identity: where clients that check the server's
    /// name reach it (`xds.tls_names`, and the xDS listener's address).
    pub hosts: Vec<String>,
}

impl Default for PeerTlsSettings {
    /// What a config without `cluster.tls` gets.
    fn default() -> PeerTlsSettings {
        PeerTlsSettings {
            ca: CaSource::Secret,
            domain: DEFAULT_DOMAIN.to_owned(),
            lifetime: NODE_LIFETIME,
            hosts: Vec::new(),
        }
    }
}

/// The CA a member signs with, and the roots it trusts: the CA's own
/// certificate, and during a rotation's overlap the other CA's
/// (`trusted.crt` in the CA's directory).
pub struct HeldCa {
    ca: Ca,
    bundle: String,
}

impl HeldCa {
    /// The CA itself.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The roots nodes trust, in PEM.
    pub fn bundle(&self) -> &str {
        &self.bundle
    }
}

/// The files of a CA directory, in the order `stamp` reads them.
const CA_FILES: [&str; 3] = ["ca.crt", "ca.key", "trusted.crt"];

/// The cluster's CA as a member (or a tool with a member's config) has it.
pub fn load_ca(source: &CaSource, secret: &str, domain: &str) -> Result<HeldCa, String> {
    match source {
        CaSource::Secret => {
            let ca = Ca::derive(secret, domain)?;
            let bundle = ca.cert_pem().to_owned();
            Ok(HeldCa { ca, bundle })
        }
        CaSource::Dir(dir) => {
            let read = |name: &str| {
                let path = dir.join(name);
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read the CA's {}: {e}", path.display()))
            };
            let ca = Ca::import(&read("ca.crt")?, &read("ca.key")?)?;
            let mut bundle = ca.cert_pem().trim_end().to_owned();
            bundle.push('\n');
            if dir.join("trusted.crt").exists() {
                let trusted = read("trusted.crt")?;
                let count = CertificateDer::pem_slice_iter(trusted.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        format!(
                            "{}: not PEM certificates: {e}",
                            dir.join("trusted.crt").display()
                        )
                    })?
                    .len();
                if count == 0 {
                    return Err(format!(
                        "{} holds no certificate: put the other CA's certificate there, or remove the file",
                        dir.join("trusted.crt").display()
                    ));
                }
                bundle.push_str(trusted.trim_end());
                bundle.push('\n');
            }
            Ok(HeldCa { ca, bundle })
        }
    }
}

/// When each file of the CA directory `dir` last changed (and its size).
fn stamp(dir: &std::path::Path) -> Vec<Option<(SystemTime, u64)>> {
    CA_FILES
        .iter()
        .map(|f| {
            let m = std::fs::metadata(dir.join(f)).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// How often a member looks at its CA directory.
const CA_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Follows a member's CA directory until `stop`: when its files change
/// (a CA rotation's steps), the member takes the CA and roots they hold and
/// issues itself a certificate from it at once. Files that do not load
/// leave everything as it was, and the log says why.
pub async fn follow_ca_dir(
    tls: PeerTls,
    dir: PathBuf,
    domain: String,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut seen = stamp(&dir);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CA_CHECK_EVERY) => {}
        }
        let now = stamp(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        let taken =
            load_ca(&CaSource::Dir(dir.clone()), "", &domain).and_then(|held| tls.take_ca(held));
        match taken {
            Ok(()) => {
                let info = tls.info();
                tracing::info!(dir = %dir.display(), serial = %info.serial, "took the CA directory's new files: this member's certificate and trusted roots are theirs now");
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "the CA directory's changed files do not load; keeping the CA and roots in use")
            }
        }
    }
}

/// A certificate for `/status`: identity, serial, validity.
pub fn describe(info: &CertInfo, domain: &str) -> serde_json::Value {
    serde_json::json!({
        "identity": info.identity.uri(domain),
        "serial": info.serial,
        "not_before": super::identity::rfc3339(info.not_before),
        "not_after": super::identity::rfc3339(info.not_after),
    })
}

/// The SHA-256 of a certificate (what the certify exchange binds to).
pub fn fingerprint(der: &[u8]) -> String {
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Members take members and store clients; an Envoy's certificate is for
/// the xDS listener only.
fn accept_nodes() -> Accept {
    Arc::new(|identity: &Identity| match identity {
        Identity::Member { .. } | Identity::Client { .. } => Ok(()),
        Identity::Envoy { name } => Err(format!(
            "`{name}` holds an Envoy's certificate, not a node's: it is for the xDS listener only"
        )),
    })
}

/// The xDS listener takes Envoys (and proxyless gRPC clients holding an
/// Envoy's certificate) only.
fn accept_envoys() -> Accept {
    Arc::new(|identity: &Identity| match identity {
        Identity::Envoy { .. } => Ok(()),
        other => Err(format!(
            "`{}` is a node's certificate; the xDS listener takes Envoys' (`flotilla ca issue --envoy`)",
            other.name()
        )),
    })
}

/// Nodes call members only.
fn accept_members() -> Accept {
    Arc::new(|identity: &Identity| match identity {
        Identity::Member { .. } => Ok(()),
        other => Err(format!(
            "the peer at this address is `{}`, not a db member",
            other.name()
        )),
    })
}

struct Configs {
    server: Arc<ServerConfig>,
    /// For the xDS listener: an Envoy's certificate required.
    xds: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// For the public listener: this node's certificate to nodes and
    /// Envoys that ask for it by the trust domain's name.
    public: Arc<ServerConfig>,
    /// For forwarding to another node's public listener: any node of the
    /// cluster.
    forward: Arc<ClientConfig>,
    /// The fingerprints of the certificate served now and of the one before
    /// it (a store client may have seen either while asking).
    served: [String; 2],
}

/// A node's TLS between nodes; cheap to clone.
#[derive(Clone)]
pub struct PeerTls {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("identity", &self.inner.identity.uri(&self.inner.domain))
            .finish_non_exhaustive()
    }
}

struct Inner {
    domain: String,
    identity: Identity,
    credentials: Credentials,
    /// A member's CA: it issues its own renewals and store clients'
    /// certificates, valid for `lifetime`.
    ca: Option<RwLock<Arc<HeldCa>>>,
    lifetime: Duration,
    /// The hosts a member's own certificate names.
    hosts: Vec<String>,
    configs: RwLock<Arc<Configs>>,
}

fn leaf_fingerprint(chain_pem: &str) -> Result<String, String> {
    let leaf = CertificateDer::from_pem_slice(chain_pem.as_bytes())
        .map_err(|e| format!("the certificate is not PEM: {e}"))?;
    Ok(fingerprint(&leaf))
}

fn configs(
    credentials: &Credentials,
    chain_pem: &str,
    before: &str,
) -> Result<Arc<Configs>, String> {
    Ok(Arc::new(Configs {
        server: Arc::new(credentials.server_config(accept_nodes(), true)?),
        xds: Arc::new(credentials.server_config(accept_envoys(), false)?),
        client: Arc::new(credentials.client_config(accept_members())?),
        public: Arc::new(credentials.public_server_config()?),
        forward: Arc::new(credentials.client_config(accept_nodes())?),
        served: [leaf_fingerprint(chain_pem)?, before.to_owned()],
    }))
}

impl PeerTls {
    /// A member's: its certificate issued here from `ca`, valid for
    /// `lifetime`.
    pub fn member(
        ca: HeldCa,
        domain: &str,
        node: &str,
        lifetime: Duration,
        hosts: &[String],
    ) -> Result<PeerTls, String> {
        let identity = Identity::member(node)?;
        let material = issue(&ca, &identity, hosts, domain, lifetime)?;
        PeerTls::new(domain, identity, material, Some(ca), lifetime, hosts)
    }

    /// A member's, from the cluster's settings and secret.
    pub fn of_member(
        settings: &PeerTlsSettings,
        secret: &str,
        node: &str,
    ) -> Result<PeerTls, String> {
        let ca = load_ca(&settings.ca, secret, &settings.domain)?;
        PeerTls::member(
            ca,
            &settings.domain,
            node,
            settings.lifetime,
            &settings.hosts,
        )
    }

    /// A store client's: the certificate a member issued to it.
    pub fn client(domain: &str, identity: Identity, material: Material) -> Result<PeerTls, String> {
        PeerTls::new(domain, identity, material, None, NODE_LIFETIME, &[])
    }

    fn new(
        domain: &str,
        identity: Identity,
        material: Material,
        ca: Option<HeldCa>,
        lifetime: Duration,
        hosts: &[String],
    ) -> Result<PeerTls, String> {
        let credentials = Credentials::new(domain, &material)?;
        let configs = configs(&credentials, &material.chain_pem, "")?;
        Ok(PeerTls {
            inner: Arc::new(Inner {
                domain: domain.to_owned(),
                identity,
                credentials,
                ca: ca.map(|ca| RwLock::new(Arc::new(ca))),
                lifetime,
                hosts: hosts.to_vec(),
                configs: RwLock::new(configs),
            }),
        })
    }

    fn configs(&self) -> Arc<Configs> {
        self.inner
            .configs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn domain(&self) -> &str {
        &self.inner.domain
    }

    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// For the peer listener: every connection's handshake takes the
    /// current one.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.configs().server.clone()
    }

    /// For the xDS listener (`xds.tls`): Envoys' certificates only.
    pub fn xds_server_config(&self) -> Arc<ServerConfig> {
        self.configs().xds.clone()
    }

    /// For connections to members.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.configs().client.clone()
    }

    /// For the public listener, to clients that name the trust domain
    /// (see `tls::public::source`).
    pub fn public_server_config(&self) -> Arc<ServerConfig> {
        self.configs().public.clone()
    }

    /// For forwarding requests to other nodes' public listeners.
    pub fn forward_client_config(&self) -> Arc<ClientConfig> {
        self.configs().forward.clone()
    }

    /// Whether `fingerprint` is of a certificate this node serves (or
    /// served until its last renewal).
    pub fn serves(&self, fingerprint: &str) -> bool {
        self.configs()
            .served
            .iter()
            .any(|f| !f.is_empty() && f == fingerprint)
    }

    /// This node's certificate: identity, serial, validity.
    pub fn info(&self) -> CertInfo {
        self.inner.credentials.info()
    }

    /// This node's certificate for `/status`: identity, serial, validity,
    /// when it is renewed.
    pub fn status(&self) -> serde_json::Value {
        let mut status = describe(&self.info(), self.domain());
        status["renew_at"] = super::identity::rfc3339(self.renew_at()).into();
        status
    }

    /// When the certificate is due for renewal: two thirds into its life
    /// (counted from its issue, not from its backdated start).
    pub fn renew_at(&self) -> SystemTime {
        let info = self.info();
        let life = info
            .not_after
            .duration_since(info.not_before)
            .unwrap_or_default();
        // Every certificate a CA here issues starts BACKDATE before its
        // issue: its nominal life is longer than that.
        let issued = if life > BACKDATE {
            info.not_before + BACKDATE
        } else {
            info.not_before
        };
        let life = info.not_after.duration_since(issued).unwrap_or_default();
        issued + life * 2 / 3
    }

    /// Takes `material` (a renewed certificate, or new roots): connections
    /// opened or accepted from now on present and trust it.
    pub fn replace(&self, material: &Material) -> Result<(), String> {
        let before = self.configs().served[0].clone();
        self.inner.credentials.replace(material)?;
        let next = configs(&self.inner.credentials, &material.chain_pem, &before)?;
        *self
            .inner
            .configs
            .write()
            .unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    fn held(&self) -> Result<Arc<HeldCa>, String> {
        Ok(self
            .inner
            .ca
            .as_ref()
            .ok_or("this node holds no CA: ask a db member")?
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    /// A member renews its own certificate from its CA.
    pub fn renew_own(&self) -> Result<(), String> {
        let held = self.held()?;
        self.replace(&issue(
            &held,
            &self.inner.identity,
            &self.inner.hosts,
            &self.inner.domain,
            self.inner.lifetime,
        )?)
    }

    /// A member takes a CA (a rotation's step): it signs with it and trusts
    /// its bundle from now on, starting with a certificate of its own.
    pub fn take_ca(&self, held: HeldCa) -> Result<(), String> {
        let lock = self.inner.ca.as_ref().ok_or("only a member holds a CA")?;
        let material = issue(
            &held,
            &self.inner.identity,
            &self.inner.hosts,
            &self.inner.domain,
            self.inner.lifetime,
        )?;
        self.replace(&material)?;
        *lock.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(held);
        Ok(())
    }

    /// A member issues `identity` a certificate for `csr_pem`: the chain
    /// and the CA bundle, in PEM.
    pub fn issue_for(
        &self,
        csr_pem: &str,
        identity: &Identity,
    ) -> Result<(String, String), String> {
        let held = self.held()?;
        let chain = held.ca.issue(
            csr_pem,
            identity,
            &self.inner.domain,
            SystemTime::now(),
            self.inner.lifetime,
        )?;
        Ok((chain, held.bundle.clone()))
    }
}

/// A fresh key and a certificate for it from `held`, as `identity` (and
/// naming `hosts`).
fn issue(
    held: &HeldCa,
    identity: &Identity,
    hosts: &[String],
    domain: &str,
    lifetime: Duration,
) -> Result<Material, String> {
    let key = NodeKey::generate()?;
    let chain_pem = held.ca.issue_named(
        &key.request()?,
        identity,
        hosts,
        domain,
        SystemTime::now(),
        lifetime,
    )?;
    Ok(Material {
        chain_pem,
        key_pem: key.pem(),
        roots_pem: held.bundle.clone(),
    })
}

/// Keeps a member's certificate renewed (at two thirds of its life; a
/// failure is retried after a minute) until `stop`.
pub async fn renew_member(tls: PeerTls, stop: tokio_util::sync::CancellationToken) {
    loop {
        let wait = tls
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match tls.renew_own() {
            Ok(()) => {
                let info = tls.info();
                tracing::info!(serial = %info.serial, identity = %info.identity.uri(tls.domain()), "renewed this node's certificate");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot renew this node's certificate; retrying in a minute");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
        }
    }
}

/// What a connection opened by `connector` presented: the server's
/// certificate, for the certify exchange to bind to.
pub type SeenServer = Arc<Mutex<Option<CertificateDer<'static>>>>;

type Connecting = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
                    Box<dyn std::error::Error + Send + Sync>,
                >,
            > + Send,
    >,
>;

/// TCP to `uri`'s host and port (within `connect_timeout`, if given), then
/// the TLS handshake with `config`, asking for `name` (the host's name when
/// `None`, or `flotilla` for an address).
pub async fn dial(
    uri: &http::Uri,
    config: Arc<ClientConfig>,
    name: Option<&str>,
    connect_timeout: Option<Duration>,
) -> Result<
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    let host = uri
        .host()
        .ok_or_else(|| format!("no host in {uri}"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    let tcp = match connect_timeout {
        Some(limit) => tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| format!("connecting to {host}:{port} timed out"))??,
        None => connect.await?,
    };
    tcp.set_nodelay(true)?;
    let name = match name {
        Some(name) => ServerName::try_from(name.to_owned())?,
        None => ServerName::try_from(host)
            .unwrap_or_else(|_| ServerName::try_from("flotilla").expect("a valid name")),
    };
    Ok(tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?)
}

/// A connector for tonic: TCP to the URI's host and port, then the TLS
/// handshake with the configuration `config` gives at that moment.
pub fn connector(
    config: impl Fn() -> Arc<ClientConfig> + Send + Sync + 'static,
    seen: Option<SeenServer>,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = Box<dyn std::error::Error + Send + Sync>,
    Future = Connecting,
> + Clone
+ Send
+ 'static {
    let config = Arc::new(config);
    tower::service_fn(move |uri: http::Uri| -> Connecting {
        let config = config();
        let seen = seen.clone();
        Box::pin(async move {
            // Node certificates name identities, not hosts: the verifier
            // ignores the name, which only has to be well formed.
            let tls = dial(&uri, config, None, None).await?;
            if let Some(seen) = seen {
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.clone().into_owned());
            }
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    })
}

/// For a node asking for its first certificate: it cannot check the
/// server's chain (it does not know the CA yet), so it takes any
/// certificate whose key signs the handshake, and binds its request to
/// that certificate's fingerprint instead (see `cluster::certify`).
pub fn first_contact_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(FirstContact(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct FirstContact(Arc<CryptoProvider>);

impl ServerCertVerifier for FirstContact {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_two_thirds_into_the_life_counted_from_the_issue() {
        for (lifetime, due) in [(6, 4), (3600, 2400), (86_400, 57_600)] {
            let settings = PeerTlsSettings {
                lifetime: Duration::from_secs(lifetime),
                ..Default::default()
            };
            let tls =
                PeerTls::of_member(&settings, "a-secret-for-this-test-0123456789", "m").unwrap();
            let after = tls
                .renew_at()
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs_f64();
            assert!(
                (due as f64 - 2.0..=due as f64).contains(&after),
                "a {lifetime} s certificate is renewed in {after} s, not about {due} s"
            );
        }
    }
}
