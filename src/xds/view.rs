//! What one ADS stream is served: the shared snapshot, or a view of it made
//! for its client from the client's node metadata:
//!
//! - a sidecar's (`sidecar`): its own inbound and outbound listeners and
//!   its pod's cluster;
//! - an Envoy that reaches the nodes over TLS (`gen-envoy --upstream-tls`):
//!   every service's cluster with a TLS transport socket, Envoy's
//!   certificate and the cluster's CA read from files on Envoy's side.
//!   Its metadata says where those files are and which trust domain they
//!   belong to:
//!   - `flotilla.upstream_tls_dir`: the directory `flotilla ca issue
//!     --envoy` wrote, as mounted beside Envoy;
//!   - `flotilla.trust_domain`: the cluster's trust domain.
//!
//! A client without such metadata (an Envoy without TLS to the nodes, a
//! proxyless gRPC client) is served the shared snapshot as it is.

use std::sync::Arc;

use envoy_types::pb::{
    envoy::config::{cluster::v3::Cluster, core::v3::Node},
    google::protobuf::{Value, value::Kind},
};

use super::{CLUSTER, Resource, Snapshot, bootstrap, decode, resources, sidecar::Sidecar};

pub const UPSTREAM_TLS_DIR: &str = "flotilla.upstream_tls_dir";
pub const TRUST_DOMAIN: &str = "flotilla.trust_domain";

/// Where an Envoy holds the files for TLS to the nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    pub dir: std::path::PathBuf,
    pub domain: String,
}

impl UpstreamTls {
    /// The metadata `gen-envoy --upstream-tls` writes.
    pub fn metadata(&self) -> [(String, Value); 2] {
        let text = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        };
        [
            (
                UPSTREAM_TLS_DIR.to_owned(),
                text(&self.dir.display().to_string()),
            ),
            (TRUST_DOMAIN.to_owned(), text(&self.domain)),
        ]
    }

    /// `Ok(None)` for a client that does not ask for it; an error names
    /// what a client that does lacks.
    pub fn of(node: &Node) -> Result<Option<UpstreamTls>, String> {
        let Some(fields) = node.metadata.as_ref().map(|m| &m.fields) else {
            return Ok(None);
        };
        let text = |key: &str| match fields.get(key).and_then(|v| v.kind.as_ref()) {
            None => Ok(None),
            Some(Kind::StringValue(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "node metadata {key} is {other:?}, not a non-empty string (gen-envoy --upstream-tls writes it)"
            )),
        };
        match (text(UPSTREAM_TLS_DIR)?, text(TRUST_DOMAIN)?) {
            (None, None) => Ok(None),
            (Some(dir), Some(domain)) => {
                crate::tls::identity::Identity::member(&domain)
                    .map_err(|e| format!("node metadata {TRUST_DOMAIN}: {e}"))?;
                Ok(Some(UpstreamTls {
                    dir: dir.into(),
                    domain,
                }))
            }
            _ => Err(format!(
                "node metadata has one of {UPSTREAM_TLS_DIR} and {TRUST_DOMAIN} without the other (gen-envoy --upstream-tls writes both)"
            )),
        }
    }
}

impl Snapshot {
    /// `self` with every service's cluster reaching its nodes over TLS
    /// (`bootstrap::to_nodes_over_tls`); a sidecar's local cluster, on
    /// loopback, stays as it is.
    pub fn with_upstream_tls(&self, tls: &UpstreamTls) -> Snapshot {
        let mut s = Snapshot {
            types: self.types.clone(),
            routes: self.routes.clone(),
        };
        let socket = bootstrap::to_nodes_over_tls(&tls.dir, &tls.domain);
        let clusters: Vec<Arc<Resource>> = self
            .of(CLUSTER)
            .into_iter()
            .flatten()
            .filter(|(name, _)| name.as_str() != resources::LOCAL_CLUSTER)
            .filter_map(|(_, r)| {
                let mut cluster: Cluster = decode(r)?;
                cluster.transport_socket = Some(socket.clone());
                Some(Resource::new(r.name.clone(), cluster, r.wildcard))
            })
            .collect();
        for r in clusters {
            s.insert(CLUSTER, r);
        }
        s
    }
}

/// The snapshot one stream serves, derived again only when the shared one
/// changes.
#[derive(Default)]
pub(crate) struct View {
    sidecar: Option<Sidecar>,
    upstream_tls: Option<UpstreamTls>,
    derived: Option<(Arc<Snapshot>, Arc<Snapshot>)>,
}

impl View {
    /// The view for the client `node` describes; an error says what its
    /// metadata gets wrong.
    pub fn of_node(node: &Node) -> Result<View, String> {
        let sidecar = Sidecar::of(node)?;
        let upstream_tls = UpstreamTls::of(node)?;
        if sidecar.is_some() && upstream_tls.is_some() {
            return Err(format!(
                "node metadata asks for a sidecar with {UPSTREAM_TLS_DIR}: a sidecar reaches the other pods through their sidecars, which take plaintext; TLS to the nodes is for the front Envoy (gen-envoy refuses --sidecar with --upstream-tls)"
            ));
        }
        Ok(View {
            sidecar,
            upstream_tls,
            derived: None,
        })
    }

    pub fn sidecar(&self) -> Option<&Sidecar> {
        self.sidecar.as_ref()
    }

    pub fn upstream_tls(&self) -> Option<&UpstreamTls> {
        self.upstream_tls.as_ref()
    }

    pub fn of(&mut self, shared: &Arc<Snapshot>) -> Arc<Snapshot> {
        if self.sidecar.is_none() && self.upstream_tls.is_none() {
            return shared.clone();
        }
        match &self.derived {
            Some((from, view)) if Arc::ptr_eq(from, shared) => view.clone(),
            _ => {
                let mut view = match &self.sidecar {
                    Some(sidecar) => shared.for_sidecar(sidecar),
                    None => Snapshot {
                        types: shared.types.clone(),
                        routes: shared.routes.clone(),
                    },
                };
                if let Some(tls) = &self.upstream_tls {
                    view = view.with_upstream_tls(tls);
                }
                let view = Arc::new(view);
                self.derived = Some((shared.clone(), view.clone()));
                view
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::{
        envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext, google::protobuf::Struct,
    };

    use super::*;
    use crate::xds::{
        ENDPOINT,
        sidecar::{POD_IP, metadata},
        tests::service,
    };

    fn node(fields: Vec<(String, Value)>) -> Node {
        Node {
            id: "p".into(),
            metadata: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
            ..Default::default()
        }
    }

    fn tls() -> UpstreamTls {
        UpstreamTls {
            dir: "/etc/envoy-tls".into(),
            domain: "flotilla.local".into(),
        }
    }

    #[test]
    fn a_view_is_derived_once_per_shared_snapshot() {
        let mut fields: Vec<(String, Value)> =
            metadata(8080, 8090, 15001).fields.into_iter().collect();
        fields.push((
            POD_IP.into(),
            Value {
                kind: Some(Kind::StringValue("10.0.0.1".into())),
            },
        ));
        let mut view = View::of_node(&node(fields)).unwrap();
        assert!(view.sidecar().is_some());
        let a = Arc::new(Snapshot::build(&[service("echo", &[1])], None));
        let first = view.of(&a);
        assert!(Arc::ptr_eq(&first, &view.of(&a)));
        let b = Arc::new(Snapshot::build(&[service("echo", &[2])], None));
        assert!(!Arc::ptr_eq(&first, &view.of(&b)));
        let mut plain = View::of_node(&Node::default()).unwrap();
        assert!(Arc::ptr_eq(&plain.of(&a), &a));
    }

    #[test]
    fn an_envoy_that_asks_gets_its_service_clusters_over_tls_and_nothing_else_changes() {
        let mut view = View::of_node(&node(tls().metadata().into())).unwrap();
        assert_eq!(view.upstream_tls(), Some(&tls()));
        let shared = Arc::new(Snapshot::build(
            &[service("echo", &[1, 2]), service("kv", &[3])],
            Some("127.0.0.1:10000".parse().unwrap()),
        ));
        let seen = view.of(&shared);
        for name in ["echo", "kv"] {
            let cluster: Cluster = decode(seen.get(CLUSTER, name).unwrap()).unwrap();
            let socket = cluster.transport_socket.expect("a TLS transport socket");
            assert_eq!(socket.name, "envoy.transport_sockets.tls");
            let Some(
                envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                    any,
                ),
            ) = socket.config_type
            else {
                panic!("no typed config")
            };
            let context: UpstreamTlsContext = prost::Message::decode(any.value.as_slice()).unwrap();
            assert_eq!(context.sni, "flotilla.local");
            let text = format!("{context:?}");
            assert!(text.contains("/etc/envoy-tls/sds-ca.yaml"), "{text}");
            assert!(text.contains("spiffe://flotilla.local/client/"), "{text}");
            // A new version: Envoy must take the changed cluster.
            assert_ne!(
                seen.get(CLUSTER, name).unwrap().hash,
                shared.get(CLUSTER, name).unwrap().hash
            );
        }
        for t in [ENDPOINT, crate::xds::LISTENER, crate::xds::ROUTE] {
            for (name, r) in shared.of(t).unwrap() {
                assert!(Arc::ptr_eq(r, &seen.of(t).unwrap()[name]), "{t} {name}");
            }
        }
    }

    #[test]
    fn half_of_the_upstream_tls_metadata_is_refused_with_what_is_missing() {
        let [dir, domain] = tls().metadata();
        let e = View::of_node(&node(vec![dir])).err().unwrap();
        assert!(e.contains("without the other"), "{e}");
        let bad = (
            TRUST_DOMAIN.to_owned(),
            Value {
                kind: Some(Kind::StringValue("a/b".into())),
            },
        );
        let e = View::of_node(&node(vec![tls().metadata()[0].clone(), bad]))
            .err()
            .unwrap();
        assert!(e.contains(TRUST_DOMAIN), "{e}");
        assert!(View::of_node(&node(vec![domain])).is_err());
    }
}
