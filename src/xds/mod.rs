//! The Envoy xDS management server's building blocks:
//!
//! - `resources`: the Envoy resources built from the routing table and the
//!   registry (shared with `gen-envoy`).
//! - [`Snapshot`]: every resource encoded once, with its content hash; what
//!   all streams serve from.
//! - `sotw` and `delta`: the state-of-the-world and incremental ADS
//!   protocols for one stream, as pure logic (requests and snapshots in,
//!   responses out), so that every rule of docs/xds-protocol.md is tested beside
//!   the code.

pub mod bootstrap;
pub mod clients;
pub mod delta;
pub mod resources;
pub mod server;
pub mod sidecar;
pub mod sotw;
pub mod view;

#[cfg(test)]
mod properties;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
};

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;
use prost::Name;
use sha2::{Digest, Sha256};

use resources::ServiceView;

/// The resource types served, in the order additions are pushed (clusters
/// and their endpoints before the listeners and routes that use them).
pub const TYPES: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// One resource, encoded once and shared by every stream that sends it.
#[derive(Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    pub body: Any,
    /// SHA-256 of the encoding, in hex (16 characters suffice for versions).
    pub hash: String,
    /// Sent to wildcard subscribers (Envoy's LDS and CDS). API listeners
    /// for proxyless gRPC clients are only sent when named.
    pub wildcard: bool,
    /// The clusters a route configuration sends traffic to.
    pub clusters: BTreeSet<String>,
    /// Its entry in a response's `resources` (field 2), encoded once:
    /// `DiscoveryResponse` holds the `Any`, `DeltaDiscoveryResponse` a
    /// `Resource` with the name and version around it.
    pub sotw_entry: Bytes,
    pub delta_entry: Bytes,
}

impl Resource {
    fn new<T: Name + prost::Message>(name: String, body: T, wildcard: bool) -> Arc<Resource> {
        let body = envoy_types::util::pack_any(body);
        let hash = hex(&Sha256::digest(&body.value)[..8]);
        let entry = |message: &dyn Fn(&mut Vec<u8>)| {
            let mut buf = Vec::new();
            message(&mut buf);
            Bytes::from(buf)
        };
        let sotw_entry =
            entry(&|buf| prost::encoding::message::encode(RESOURCES_FIELD, &body, buf));
        let delta_entry = entry(&|buf| {
            let resource = envoy_types::pb::envoy::service::discovery::v3::Resource {
                name: name.clone(),
                version: hash.clone(),
                resource: Some(body.clone()),
                ..Default::default()
            };
            prost::encoding::message::encode(RESOURCES_FIELD, &resource, buf)
        });
        Arc::new(Resource {
            name,
            body,
            hash,
            wildcard,
            clusters: BTreeSet::new(),
            sotw_entry,
            delta_entry,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The version of a set of resources: a hash of their names and content
/// hashes. Unchanged input gives the same version, on every replica and
/// across restarts.
pub fn version<'a>(resources: impl IntoIterator<Item = &'a Arc<Resource>>) -> String {
    let mut h = Sha256::new();
    for r in resources {
        h.update(r.name.as_bytes());
        h.update([0]);
        h.update(r.hash.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize()[..8])
}

/// Every resource the server can send, by type and name.
#[derive(Debug, Default, PartialEq)]
pub struct Snapshot {
    types: BTreeMap<&'static str, BTreeMap<String, Arc<Resource>>>,
    /// The ingress's route configuration, built even when this server has
    /// no ingress listener: sidecars' outbound listeners use it.
    routes: Option<Arc<Resource>>,
}

impl Snapshot {
    /// The resources for `services`, with the ingress listener on
    /// `ingress` if given.
    pub fn build(services: &[ServiceView], ingress: Option<SocketAddr>) -> Snapshot {
        let mut s = Snapshot::default();
        let mut routes = Resource::new(
            resources::INGRESS_ROUTES.into(),
            resources::ingress_routes(services),
            true,
        );
        Arc::get_mut(&mut routes).expect("just built").clusters =
            services.iter().map(|s| s.name.clone()).collect();
        if let Some(addr) = ingress {
            s.insert(
                LISTENER,
                Resource::new(
                    resources::INGRESS_LISTENER.into(),
                    resources::ingress_listener(addr),
                    true,
                ),
            );
            s.insert(ROUTE, routes.clone());
        }
        s.routes = Some(routes);
        for service in services {
            let name = &service.name;
            s.insert(
                CLUSTER,
                Resource::new(
                    name.clone(),
                    resources::service_cluster(service, true),
                    true,
                ),
            );
            s.insert(
                ENDPOINT,
                Resource::new(name.clone(), resources::load_assignment(service), true),
            );
            s.insert(
                LISTENER,
                Resource::new(name.clone(), resources::api_listener(name), false),
            );
            let mut routes = Resource::new(name.clone(), resources::api_routes(service), false);
            Arc::get_mut(&mut routes).expect("just built").clusters =
                BTreeSet::from([name.clone()]);
            s.insert(ROUTE, routes);
        }
        s
    }

    fn insert(&mut self, type_url: &'static str, r: Arc<Resource>) {
        self.types
            .entry(type_url)
            .or_default()
            .insert(r.name.clone(), r);
    }

    /// The resources of one type, by name.
    pub fn of(&self, type_url: &str) -> Option<&BTreeMap<String, Arc<Resource>>> {
        self.types.get(type_url)
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&Arc<Resource>> {
        self.types.get(type_url).and_then(|m| m.get(name))
    }
}

/// The types whose due responses a request of `type_url` can change: its
/// own, and for clusters and routes each other's too (make before break,
/// rule 10: what a client ACKed of one decides what it may be sent of the
/// other). A snapshot change goes through every type (`on_snapshot`).
pub(crate) fn affected(type_url: &str) -> Vec<&str> {
    match type_url {
        CLUSTER => vec![CLUSTER, ROUTE],
        ROUTE => vec![ROUTE, CLUSTER],
        other => vec![other],
    }
}

/// What a client that takes clusters by wildcard (Envoy) has ACKed: make
/// before break (docs/xds-protocol.md, rule 10) is decided from it.
pub(crate) struct Gate<'a> {
    pub acked_clusters: &'a BTreeMap<String, Arc<Resource>>,
    pub acked_routes: &'a BTreeMap<String, Arc<Resource>>,
}

/// The resources of `type_url` a subscription (wildcard and/or names)
/// should hold now. With a `gate`: `None` while a route configuration names
/// a cluster the client has not ACKed (it keeps what it has), and a cluster
/// that ACKed routes still name stays until routes without it are ACKed.
pub(crate) fn select(
    type_url: &str,
    snap: &Snapshot,
    wildcard: bool,
    names: &BTreeSet<String>,
    gate: Option<Gate<'_>>,
) -> Option<BTreeMap<String, Arc<Resource>>> {
    let mut want: BTreeMap<String, Arc<Resource>> = snap
        .of(type_url)
        .into_iter()
        .flatten()
        .filter(|(name, r)| (wildcard && r.wildcard) || names.contains(name.as_str()))
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect();
    let Some(gate) = gate else {
        return Some(want);
    };
    match type_url {
        ROUTE => {
            let ready = |r: &Resource| {
                r.clusters
                    .iter()
                    .all(|c| gate.acked_clusters.contains_key(c))
            };
            if want.values().any(|r| !ready(r)) {
                return None;
            }
        }
        CLUSTER => {
            for c in gate.acked_routes.values().flat_map(|r| &r.clusters) {
                if !want.contains_key(c)
                    && let Some(old) = gate.acked_clusters.get(c)
                {
                    want.insert(c.clone(), old.clone());
                }
            }
        }
        _ => {}
    }
    Some(want)
}

/// The `resources` field of both response messages.
const RESOURCES_FIELD: u32 = 2;

/// A response whose resources stay the shared encodings: a stream's queue
/// holds references, and what goes on the wire is the message's own fields
/// followed by each resource's encoded entry, never a copy per stream.
pub struct Outgoing<M> {
    pub message: M,
    pub resources: Vec<Arc<Resource>>,
}

/// A response message whose resources are sent as encoded entries.
pub trait Wire: prost::Message {
    /// The encoded `resources` entry of `resource` in this message type.
    fn entry(resource: &Resource) -> &Bytes;
}

impl Wire for envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
    fn entry(resource: &Resource) -> &Bytes {
        &resource.sotw_entry
    }
}

impl Wire for envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse {
    fn entry(resource: &Resource) -> &Bytes {
        &resource.delta_entry
    }
}

impl<M: Wire> Outgoing<M> {
    /// The response as one length-prefixed gRPC message, in pieces: the
    /// prefix and the message's own fields, then the resources' shared
    /// entries (a protobuf parser takes fields in any order).
    pub fn frames(&self) -> Result<Vec<Bytes>, tonic::Status> {
        let head = self.message.encode_to_vec();
        let len = head.len()
            + self
                .resources
                .iter()
                .map(|r| M::entry(r).len())
                .sum::<usize>();
        let len = u32::try_from(len).map_err(|_| {
            tonic::Status::resource_exhausted(format!(
                "a response of {len} bytes is over gRPC's 4 GiB message limit"
            ))
        })?;
        let mut first = Vec::with_capacity(5 + head.len());
        first.push(0); // not compressed
        first.extend_from_slice(&len.to_be_bytes());
        first.extend_from_slice(&head);
        let mut frames = Vec::with_capacity(1 + self.resources.len());
        frames.push(Bytes::from(first));
        frames.extend(self.resources.iter().map(|r| M::entry(r).clone()));
        Ok(frames)
    }
}

/// A response message that can take its resources (the tests read whole
/// messages).
#[cfg(test)]
pub trait Fill {
    fn fill(&mut self, resources: &[Arc<Resource>]);
}

#[cfg(test)]
impl<M: Fill> Outgoing<M> {
    pub fn materialize(mut self) -> M {
        self.message.fill(&self.resources);
        self.message
    }
}

#[cfg(test)]
impl Fill for envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
    fn fill(&mut self, resources: &[Arc<Resource>]) {
        self.resources = resources.iter().map(|r| r.body.clone()).collect();
    }
}

#[cfg(test)]
impl Fill for envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse {
    fn fill(&mut self, resources: &[Arc<Resource>]) {
        self.resources = resources
            .iter()
            .map(
                |r| envoy_types::pb::envoy::service::discovery::v3::Resource {
                    name: r.name.clone(),
                    version: r.hash.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                },
            )
            .collect();
    }
}

/// Decodes what a resource holds.
pub fn decode<T: Name + prost::Message + Default>(r: &Resource) -> Option<T> {
    (r.body.type_url == T::type_url())
        .then(|| T::decode(r.body.value.as_slice()).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::{
        cluster::v3::Cluster,
        endpoint::v3::ClusterLoadAssignment,
        listener::v3::Listener,
        route::v3::{RouteConfiguration, route_match::PathSpecifier},
    };

    use super::*;
    use crate::xds::resources::EndpointView;

    /// The frames of a response, joined, without the gRPC prefix, after
    /// checking the prefix's length.
    fn joined<M: Wire>(out: &Outgoing<M>) -> Vec<u8> {
        let frames = out.frames().unwrap();
        let mut all: Vec<u8> = frames.iter().flat_map(|b| b.iter().copied()).collect();
        let body = all.split_off(5);
        assert_eq!(all[0], 0, "not compressed");
        assert_eq!(
            u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize,
            body.len()
        );
        body
    }

    #[test]
    fn routes_retry_as_the_policy_says_per_grpc_method_and_http_method() {
        use crate::{
            catalogue::Catalogue,
            mesh::registry::{NodeRecord, Registry},
            protocol::{RetryPolicy, RouteKind},
        };
        let table = Catalogue::builtin().check().unwrap().table().clone();
        let registry = Registry::single(NodeRecord {
            id: "n1".into(),
            public: "127.0.0.1:8080".parse().unwrap(),
            services: vec!["kv".into(), "echo".into(), "accounts".into()],
            healthy: true,
        });
        let services = resources::services(&table, &registry);
        let retry_on = |rc: &RouteConfiguration, path: &str| -> String {
            let route = rc.virtual_hosts[0]
                .routes
                .iter()
                .find(
                    |r| match r.r#match.as_ref().unwrap().path_specifier.as_ref().unwrap() {
                        PathSpecifier::Path(p) => p == path,
                        PathSpecifier::Prefix(p) | PathSpecifier::PathSeparatedPrefix(p) => {
                            path.starts_with(p.as_str())
                        }
                        _ => false,
                    },
                )
                .unwrap_or_else(|| panic!("no route for {path}"));
            let Some(envoy_types::pb::envoy::config::route::v3::route::Action::Route(action)) =
                &route.action
            else {
                panic!("{path} is not routed to a cluster");
            };
            action.retry_policy.as_ref().unwrap().retry_on.clone()
        };
        let ingress = resources::ingress_routes(&services);
        assert_eq!(
            retry_on(&ingress, "/flotilla.kv.v1.Kv/Get"),
            RetryPolicy::envoy_retry_on(RouteKind::IdempotentGrpc)
        );
        assert_eq!(
            retry_on(&ingress, "/flotilla.kv.v1.Kv/CompareAndSet"),
            RetryPolicy::envoy_retry_on(RouteKind::Grpc)
        );
        assert_eq!(
            retry_on(&ingress, "/flotilla.accounts.v1.Accounts/Signup"),
            RetryPolicy::envoy_retry_on(RouteKind::Grpc)
        );
        let kv = services.iter().find(|s| s.name == "kv").unwrap();
        let api = resources::api_routes(kv);
        assert!(retry_on(&api, "/flotilla.kv.v1.Kv/Get").contains("unavailable"));
        assert!(!retry_on(&api, "/flotilla.kv.v1.Kv/CompareAndSet").contains("unavailable"));
        assert!(!retry_on(&api, "/flotilla.kv.v1.Kv/NoSuchMethod").contains("unavailable"));
    }

    #[test]
    fn responses_on_the_wire_decode_to_the_whole_message() {
        use envoy_types::pb::envoy::service::discovery::v3::{
            DeltaDiscoveryResponse, DiscoveryResponse,
        };
        use prost::Message;
        let snap = Snapshot::build(
            &[service("kv", &[8080, 8081]), service("echo", &[8082])],
            None,
        );
        let resources: Vec<Arc<Resource>> = snap.of(CLUSTER).unwrap().values().cloned().collect();
        assert_eq!(resources.len(), 2);
        let sotw = Outgoing {
            message: DiscoveryResponse {
                version_info: "v1".into(),
                type_url: CLUSTER.into(),
                nonce: "7".into(),
                ..Default::default()
            },
            resources: resources.clone(),
        };
        let wire = DiscoveryResponse::decode(joined(&sotw).as_slice()).unwrap();
        assert_eq!(wire, sotw.materialize());
        let delta = Outgoing {
            message: DeltaDiscoveryResponse {
                system_version_info: "v1".into(),
                type_url: CLUSTER.into(),
                nonce: "8".into(),
                removed_resources: vec!["gone".into()],
                ..Default::default()
            },
            resources,
        };
        let wire = DeltaDiscoveryResponse::decode(joined(&delta).as_slice()).unwrap();
        assert_eq!(wire, delta.materialize());
    }

    pub(crate) fn service(name: &str, ports: &[u16]) -> ServiceView {
        ServiceView {
            name: name.into(),
            grpc_services: vec![format!("flotilla.{name}.v1.Svc")],
            idempotent_grpc_methods: vec![],
            endpoints: ports
                .iter()
                .enumerate()
                .map(|(i, p)| EndpointView {
                    node: format!("n{i}"),
                    addr: format!("127.0.0.1:{p}").parse().unwrap(),
                    healthy: true,
                })
                .collect(),
        }
    }

    #[test]
    fn type_urls_are_the_messages_own() {
        assert_eq!(LISTENER, Listener::type_url());
        assert_eq!(ROUTE, RouteConfiguration::type_url());
        assert_eq!(CLUSTER, Cluster::type_url());
        assert_eq!(ENDPOINT, ClusterLoadAssignment::type_url());
    }

    #[test]
    fn versions_are_content_hashes() {
        let a = Snapshot::build(
            &[service("echo", &[1, 2])],
            Some("127.0.0.1:10000".parse().unwrap()),
        );
        let b = Snapshot::build(
            &[service("echo", &[1, 2])],
            Some("127.0.0.1:10000".parse().unwrap()),
        );
        let c = Snapshot::build(
            &[service("echo", &[1, 3])],
            Some("127.0.0.1:10000".parse().unwrap()),
        );
        for t in TYPES {
            assert_eq!(
                version(a.of(t).unwrap().values()),
                version(b.of(t).unwrap().values())
            );
        }
        // An endpoint change touches the endpoints only.
        assert_ne!(
            version(a.of(ENDPOINT).unwrap().values()),
            version(c.of(ENDPOINT).unwrap().values())
        );
        for t in [CLUSTER, LISTENER, ROUTE] {
            assert_eq!(
                version(a.of(t).unwrap().values()),
                version(c.of(t).unwrap().values())
            );
        }
    }

    #[test]
    fn the_snapshot_holds_what_envoy_and_grpc_clients_need() {
        let s = Snapshot::build(
            &[service("echo", &[1, 2]), service("kv", &[])],
            Some("127.0.0.1:10000".parse().unwrap()),
        );
        // Envoy: the ingress listener and its routes, a cluster and an
        // assignment per service (an empty one for a service with no
        // healthy instance).
        let l: Listener = decode(s.get(LISTENER, resources::INGRESS_LISTENER).unwrap()).unwrap();
        assert_eq!(l.filter_chains.len(), 1);
        let rc: RouteConfiguration =
            decode(s.get(ROUTE, resources::INGRESS_ROUTES).unwrap()).unwrap();
        let prefixes: Vec<String> = rc.virtual_hosts[0]
            .routes
            .iter()
            .filter_map(|r| match r.r#match.as_ref()?.path_specifier.as_ref()? {
                PathSpecifier::Prefix(p) | PathSpecifier::PathSeparatedPrefix(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        assert!(
            prefixes.contains(&"/flotilla.echo.v1.Svc/".to_string()),
            "{prefixes:?}"
        );
        assert!(prefixes.contains(&"/api/kv".to_string()), "{prefixes:?}");
        let c: Cluster = decode(s.get(CLUSTER, "echo").unwrap()).unwrap();
        assert!(
            c.typed_extension_protocol_options
                .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        );
        assert!(c.outlier_detection.is_some());
        let e: ClusterLoadAssignment = decode(s.get(ENDPOINT, "echo").unwrap()).unwrap();
        assert_eq!(e.endpoints[0].lb_endpoints.len(), 2);
        assert_eq!(e.endpoints[0].load_balancing_weight.unwrap().value, 1);
        let e: ClusterLoadAssignment = decode(s.get(ENDPOINT, "kv").unwrap()).unwrap();
        assert!(e.endpoints[0].lb_endpoints.is_empty());
        // Proxyless gRPC: an API listener named after the service, not sent
        // to wildcard subscribers.
        let api = s.get(LISTENER, "echo").unwrap();
        assert!(!api.wildcard);
        let l: Listener = decode(api).unwrap();
        assert!(l.api_listener.is_some());
        assert_eq!(
            s.get(ROUTE, "echo").unwrap().clusters,
            BTreeSet::from(["echo".to_string()])
        );
    }
}
