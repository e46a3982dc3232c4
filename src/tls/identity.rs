//! Who a certificate names: one SPIFFE-style URI in its subject alternative
//! names, in the cluster's trust domain.
//!
//! - `spiffe://<domain>/member/<node>`: a db member (votes, replicates,
//!   serves every peer call);
//! - `spiffe://<domain>/client/<service>+<service>/<node>`: a store client,
//!   limited to its services' namespaces;
//! - `spiffe://<domain>/envoy/<name>`: an Envoy or proxyless gRPC client of
//!   the xDS server.
//!
//! The CA writes the identity the caller authenticated as, never one a
//! certificate request asks for.

use std::time::{Duration, SystemTime};

const SCHEME: &str = "spiffe://";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Member { node: String },
    Client { node: String, services: Vec<String> },
    Envoy { name: String },
}

/// A name within an identity: what node names and service names are made
/// of, and nothing that could split a path.
fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} `{name}` cannot be part of an identity: use letters, digits, '-', '_' and '.' (at most 253)"
        ))
    }
}

impl Identity {
    pub fn member(node: &str) -> Result<Identity, String> {
        check_name("node", node)?;
        Ok(Identity::Member {
            node: node.to_owned(),
        })
    }

    pub fn client(node: &str, services: &[String]) -> Result<Identity, String> {
        check_name("node", node)?;
        if services.is_empty() {
            return Err(format!("store client `{node}` has no services"));
        }
        for s in services {
            check_name("service", s)?;
        }
        let mut services = services.to_vec();
        services.sort();
        services.dedup();
        Ok(Identity::Client {
            node: node.to_owned(),
            services,
        })
    }

    pub fn envoy(name: &str) -> Result<Identity, String> {
        check_name("Envoy", name)?;
        Ok(Identity::Envoy {
            name: name.to_owned(),
        })
    }

    /// The URI the certificate carries.
    pub fn uri(&self, domain: &str) -> String {
        match self {
            Identity::Member { node } => format!("{SCHEME}{domain}/member/{node}"),
            Identity::Client { node, services } => {
                format!("{SCHEME}{domain}/client/{}/{node}", services.join("+"))
            }
            Identity::Envoy { name } => format!("{SCHEME}{domain}/envoy/{name}"),
        }
    }

    /// The identity `uri` names, if it is one of `domain`'s.
    pub fn parse(uri: &str, domain: &str) -> Result<Identity, String> {
        let path = uri
            .strip_prefix(SCHEME)
            .and_then(|rest| rest.strip_prefix(domain))
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| format!("`{uri}` is not an identity of trust domain `{domain}`"))?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["member", node] => Identity::member(node),
            ["client", services, node] => Identity::client(
                node,
                &services
                    .split('+')
                    .map(str::to_owned)
                    .collect::<Vec<String>>(),
            ),
            ["envoy", name] => Identity::envoy(name),
            _ => Err(format!(
                "`{uri}` names no role: member/<node>, client/<services>/<node> or envoy/<name>"
            )),
        }
    }

    /// The node or Envoy name.
    pub fn name(&self) -> &str {
        match self {
            Identity::Member { node } | Identity::Client { node, .. } => node,
            Identity::Envoy { name } => name,
        }
    }
}

/// What a certificate says, read without checking its signature (the TLS
/// verifiers check the chain; this reads what they accepted, or a file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: Identity,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The identity and validity of the certificate `der`, which must name
/// exactly one identity of `domain`.
pub fn read(der: &[u8], domain: &str) -> Result<CertInfo, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .map_err(|e| format!("its subject alternative names do not parse: {e}"))?
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let [uri] = uris.as_slice() else {
        return Err(format!(
            "a node certificate names exactly one identity (a spiffe:// URI); this one names {}",
            uris.len()
        ));
    };
    let time = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Ok(CertInfo {
        identity: Identity::parse(uri, domain)?,
        serial: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

/// `t` as UTC, to the second (RFC 3339).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} s after the epoch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uris() {
        for id in [
            Identity::member("flotilla-db-0").unwrap(),
            Identity::client("echo-5d8f-0", &["kv".into(), "echo".into()]).unwrap(),
            Identity::envoy("envoy-7c9d-0").unwrap(),
        ] {
            let uri = id.uri("cluster.local");
            assert_eq!(Identity::parse(&uri, "cluster.local").unwrap(), id, "{uri}");
        }
        assert_eq!(
            Identity::client("e", &["kv".into(), "echo".into()])
                .unwrap()
                .uri("d"),
            "spiffe://d/client/echo+kv/e"
        );
    }

    #[test]
    fn uris_of_another_domain_or_role_or_with_bad_names_are_refused() {
        for (uri, why) in [
            ("spiffe://other/member/n1", "trust domain"),
            ("spiffe://d.evil/member/n1", "trust domain"),
            ("spiffe://d/admin/n1", "names no role"),
            ("spiffe://d/member/n1/extra", "names no role"),
            ("spiffe://d/member/", "cannot be part"),
            ("spiffe://d/client//n1", "cannot be part"),
            ("https://d/member/n1", "trust domain"),
        ] {
            let e = Identity::parse(uri, "d").unwrap_err();
            assert!(e.contains(why), "{uri}: {e}");
        }
        assert!(Identity::member("a/b").is_err());
        assert!(Identity::client("n", &[]).is_err());
    }
}
