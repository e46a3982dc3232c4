//! TLS on the public listener, from the operator's certificate files: one
//! or more certificates, each chosen by the names it carries (SNI), the
//! first for a client that names none of them; in a cluster, the node's
//! own certificate for the nodes and Envoys that name the trust domain
//! (`source`). The files are read again
//! when they change, so a renewed certificate is served without a restart;
//! a file that does not load keeps the certificates served before, and says
//! why in the log. ALPN offers h2 and http/1.1 (gRPC takes h2).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::{NodeTls, TlsSource};

/// How often the files are checked for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// One certificate's files, as the config names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// One loaded certificate and the names it serves.
struct Served {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
    described: Described,
}

/// What `/status` shows of a certificate the public listener serves.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Described {
    pub cert_file: PathBuf,
    pub subject: String,
    /// Its DNS names (subject alternative names).
    pub names: Vec<String>,
    pub serial: String,
    pub not_after: String,
}

fn describe(
    der: &CertificateDer<'_>,
    files: &CertFiles,
    names: &[String],
) -> Result<Described, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("does not parse: {e}"))?;
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
    Ok(Described {
        cert_file: files.cert_file.clone(),
        subject: cert.subject().to_string(),
        names: names.to_vec(),
        serial: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
        not_after: super::identity::rfc3339(not_after),
    })
}

/// The certificates served now.
struct Loaded {
    served: Arc<Vec<Served>>,
    /// The files' modification times and lengths when they were read.
    stamp: Vec<Option<(SystemTime, u64)>>,
}

fn stamp(files: &[CertFiles]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .flat_map(|f| [&f.cert_file, &f.key_file])
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The DNS names a certificate is for.
fn names_of(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("does not parse: {e}"))?;
    let names: Vec<String> = cert
        .subject_alternative_name()
        .map_err(|e| format!("its subject alternative names do not parse: {e}"))?
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return Err(
            "names no DNS name (subject alternative names): clients could not check it".into(),
        );
    }
    Ok(names)
}

fn load_one(
    files: &CertFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Served, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(&files.cert_file)?)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{} is not PEM: {e}", files.cert_file.display()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{} holds no certificate", files.cert_file.display()))?;
    let names = names_of(leaf).map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
    let described =
        describe(leaf, files, &names).map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key_file)?)
        .map_err(|e| format!("{} is not a PEM private key: {e}", files.key_file.display()))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "{} and {} do not go together: {e}",
            files.cert_file.display(),
            files.key_file.display()
        )
    })?;
    Ok(Served {
        names,
        key: Arc::new(key),
        described,
    })
}

fn load(files: &[CertFiles]) -> Result<Loaded, String> {
    let provider = provider();
    let stamp = stamp(files);
    let served = files
        .iter()
        .map(|f| load_one(f, &provider))
        .collect::<Result<Vec<_>, _>>()?;
    if served.is_empty() {
        return Err("no certificate is given".into());
    }
    Ok(Loaded {
        served: Arc::new(served),
        stamp,
    })
}

/// Checks the files as the listener would load them (the config's check,
/// before anything is bound): the names of each certificate, or why not.
pub fn check(files: &[CertFiles]) -> Result<Vec<Vec<String>>, String> {
    Ok(load(files)?
        .served
        .iter()
        .map(|s| s.names.clone())
        .collect())
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        // A wildcard covers one label.
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

/// Picks the certificate by the name the client asks for.
struct Resolver {
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let wanted = hello.server_name().map(str::to_ascii_lowercase);
        let chosen = wanted
            .and_then(|name| {
                loaded
                    .served
                    .iter()
                    .find(|s| s.names.iter().any(|p| matches(p, &name)))
            })
            .unwrap_or(&loaded.served[0]);
        Some(chosen.key.clone())
    }
}

/// Whether `sni` is the trust domain `domain` or a name under it.
fn names_domain(sni: &str, domain: &str) -> bool {
    let sni = sni.trim_end_matches('.').to_ascii_lowercase();
    sni == domain
        || sni
            .strip_suffix(domain)
            .is_some_and(|head| head.ends_with('.'))
}

/// The public listener's TLS for each handshake:
/// - a client that names the cluster's trust domain (SNI `flotilla.local`,
///   or a name under it) gets this node's cluster certificate: the nodes
///   forwarding to each other and Envoys in front, which trust the
///   cluster's CA;
/// - any other client gets the operator's certificates (`tls.public`),
///   chosen by the name it asks for;
/// - without operator certificates, every TLS client gets the node's.
pub fn source(node: NodeTls, operator: Option<Arc<PublicTls>>) -> TlsSource {
    Arc::new(move |sni: Option<&str>| match (&node(), &operator) {
        (Some(node), _) if sni.is_some_and(|s| names_domain(s, node.domain())) => {
            Some(node.public_server_config())
        }
        (_, Some(operator)) => Some(operator.config()),
        (Some(node), None) => Some(node.public_server_config()),
        (None, None) => None,
    })
}

/// The public listener's TLS: its server configuration, and the task that
/// reloads the files.
pub struct PublicTls {
    files: Vec<CertFiles>,
    resolver: Arc<Resolver>,
    config: Arc<ServerConfig>,
}

impl PublicTls {
    pub fn load(files: &[CertFiles]) -> Result<PublicTls, String> {
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(load(files)?)),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(PublicTls {
            files: files.to_vec(),
            resolver,
            config: Arc::new(config),
        })
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The certificates served now, for `/status`.
    pub fn status(&self) -> Vec<Described> {
        self.resolver
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .served
            .iter()
            .map(|s| s.described.clone())
            .collect()
    }

    /// Reads the files again if they changed since they were read; whether
    /// new certificates are served now.
    pub fn reload(&self) -> bool {
        let now = stamp(&self.files);
        let current = self
            .resolver
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if now == current.stamp {
            return false;
        }
        match load(&self.files) {
            Ok(loaded) => {
                let names: Vec<&Vec<String>> = loaded.served.iter().map(|s| &s.names).collect();
                tracing::info!(?names, "public listener: certificates reloaded");
                *self
                    .resolver
                    .current
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "public listener: the changed certificate files do not load; the previous certificates are still served (fix the files: they are read again when they change)");
                // Not again until they change again.
                let kept = Loaded {
                    served: current.served.clone(),
                    stamp: now,
                };
                *self
                    .resolver
                    .current
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Arc::new(kept);
                false
            }
        }
    }

    /// Checks the files every `RELOAD_EVERY` until `stop`.
    pub async fn watch(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
            }
            let tls = self.clone();
            // File reads off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trust_domain_and_names_under_it_get_the_nodes_certificate() {
        assert!(names_domain("flotilla.local", "flotilla.local"));
        assert!(names_domain("Flotilla.Local.", "flotilla.local"));
        assert!(names_domain("kv-1.flotilla.local", "flotilla.local"));
        assert!(!names_domain("evilflotilla.local", "flotilla.local"));
        assert!(!names_domain("api.example.com", "flotilla.local"));
    }

    #[test]
    fn status_shows_each_served_certificate_with_its_subject_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["api.example.com".into()]).unwrap();
        let files = CertFiles {
            cert_file: dir.path().join("api.pem"),
            key_file: dir.path().join("api.key"),
        };
        std::fs::write(&files.cert_file, generated.cert.pem()).unwrap();
        std::fs::write(&files.key_file, generated.signing_key.serialize_pem()).unwrap();
        let tls = PublicTls::load(std::slice::from_ref(&files)).unwrap();
        let [served] = tls.status().try_into().unwrap();
        assert_eq!(served.cert_file, files.cert_file);
        assert_eq!(served.names, ["api.example.com"]);
        assert_eq!(served.subject, "CN=rcgen self signed cert");
        // rcgen's default validity ends in 4096.
        assert!(served.not_after.starts_with("4096-01-01"), "{served:?}");
        assert!(!served.serial.is_empty());
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(matches("*.example.com", "api.example.com"));
        assert!(!matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("api.example.com", "api.example.com"));
        assert!(!matches("api.example.com", "web.example.com"));
    }
}
