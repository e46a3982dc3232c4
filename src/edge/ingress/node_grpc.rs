//! The gRPC that this node answers itself, ahead of the routing table, as
//! `health` answers `/healthz`: the standard health service
//! (`grpc.health.v1.Health`, what Kubernetes `grpc:` probes call) and
//! server reflection (`grpc.reflection.v1` and `v1alpha`, so that `grpcurl
//! list` and `describe` need no proto files). Both are public, never
//! forwarded: health is about this node, and reflection describes the
//! routing table, the same on every node.
//!
//! Health names, each SERVING or NOT_SERVING:
//! - `""`: the node as a whole, as `/readyz` says it;
//! - a service's name (`kv`), and each of its gRPC services
//!   (`flotilla.kv.v1.Kv`): whether this node runs it and it has started.
//!
//! Every one is NOT_SERVING once the node drains. A name the catalogue does
//! not have is NOT_FOUND.
//!
//! Reflection describes the routed gRPC services from flotilla's own
//! protos, health and reflection themselves, and nothing else: the peer
//! protocol between nodes is not in it.

use std::sync::Arc;

use axum::{extract::Request, response::Response};
use futures_util::future::BoxFuture;
use prost::Message;
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::ServiceExt;

use super::{Labels, Layer, Next};
use crate::{catalogue::routing::RoutingTable, edge::admin::Readiness, telemetry::metrics::Label};

/// The gRPC services answered here, by name.
pub const SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The names health reports on, each with the service of this catalogue it
/// stands for (`None`: the node as a whole).
fn health_names(table: &RoutingTable) -> Vec<(String, Option<&'static str>)> {
    let mut names = vec![(String::new(), None)];
    let mut services: Vec<&'static str> = table.routes().iter().map(|r| r.service).collect();
    services.sort_unstable();
    services.dedup();
    names.extend(services.iter().map(|s| (s.to_string(), Some(*s))));
    names.extend(
        table
            .grpc_services()
            .into_iter()
            .map(|(grpc, service)| (grpc.to_owned(), Some(service))),
    );
    names
}

/// flotilla's descriptors of the gRPC services the table routes (and the
/// message-only files), without any other service's: what reflection may
/// tell.
fn routed_descriptors(table: &RoutingTable) -> Result<prost_types::FileDescriptorSet, String> {
    let mut set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("flotilla's own descriptor set does not decode: {e}"))?;
    let routed: Vec<&'static str> = table.grpc_services().into_iter().map(|(g, _)| g).collect();
    set.file.retain(|file| {
        file.service.iter().all(|s| {
            let full = format!("{}.{}", file.package(), s.name());
            routed.contains(&full.as_str())
        })
    });
    Ok(set)
}

/// Keeps `reporter` at what `readiness` says, at every change of it. Once
/// the node drains, every name is NOT_SERVING and the open `Watch` streams
/// end after saying so: a client watching health (gRPC's client-side
/// health checking) must not hold the graceful stop for its whole grace.
async fn follow(
    mut reporter: HealthReporter,
    readiness: Arc<Readiness>,
    names: Vec<(String, Option<&'static str>)>,
) {
    let mut changes = readiness.changes();
    loop {
        if readiness.draining() {
            for (name, _) in &names {
                reporter
                    .set_service_status(name.as_str(), ServingStatus::NotServing)
                    .await;
                // Dropping a name's channel ends its streams once they have
                // passed NOT_SERVING on; a new one answers `Check` from then.
                reporter.clear_service_status(name).await;
                reporter
                    .set_service_status(name.as_str(), ServingStatus::NotServing)
                    .await;
            }
            return;
        }
        for (name, service) in &names {
            let serving = match service {
                None => readiness.serving(),
                Some(service) => readiness.serves(service),
            };
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(name.as_str(), status).await;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// The layer: answers [`SERVICES`] with their tonic servers.
pub(super) struct NodeGrpc {
    router: axum::Router,
}

impl NodeGrpc {
    /// Health for this node's `readiness`, reflection of `table`. Must be
    /// called within a tokio runtime: health follows readiness in a task.
    pub(super) fn new(table: &RoutingTable, readiness: Arc<Readiness>) -> Result<NodeGrpc, String> {
        let (reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(follow(reporter, readiness, health_names(table)));
        let descriptors = routed_descriptors(table)?;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_file_descriptor_set(descriptors.clone())
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let v1 = reflection()
            .build_v1()
            .map_err(|e| format!("gRPC reflection (v1) cannot be built: {e}"))?;
        let v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| format!("gRPC reflection (v1alpha) cannot be built: {e}"))?;
        let router = crate::protocol::grpc_router(health)
            .merge(crate::protocol::grpc_router(v1))
            .merge(crate::protocol::grpc_router(v1alpha));
        Ok(NodeGrpc { router })
    }
}

/// The service of [`SERVICES`] that `path` calls, if any.
fn answered_here(path: &str) -> Option<&'static str> {
    let service = path.strip_prefix('/')?.split('/').next()?;
    SERVICES.iter().copied().find(|s| *s == service)
}

impl Layer for NodeGrpc {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        let Some(service) = answered_here(req.uri().path()) else {
            return Box::pin(next.run(req));
        };
        let router = self.router.clone();
        Box::pin(async move {
            let mut response = match router.oneshot(req).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            response.extensions_mut().insert(Labels {
                service: Some(Label::Static("node")),
                route: Some(Label::Static(service)),
            });
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::Catalogue;

    #[test]
    fn only_the_node_services_are_answered_here() {
        assert_eq!(
            answered_here("/grpc.health.v1.Health/Check"),
            Some("grpc.health.v1.Health")
        );
        assert_eq!(
            answered_here("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Some("grpc.reflection.v1alpha.ServerReflection")
        );
        assert_eq!(answered_here("/flotilla.kv.v1.Kv/Get"), None);
        assert_eq!(answered_here("/grpc.health.v1.HealthX/Check"), None);
        assert_eq!(answered_here("/api/echo"), None);
    }

    #[test]
    fn reflection_tells_the_routed_services_and_not_the_peer_protocol() {
        let services = Catalogue::builtin().check().expect("the catalogue holds");
        let set = routed_descriptors(services.table()).expect("descriptors");
        let told: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| {
                f.service
                    .iter()
                    .map(move |s| format!("{}.{}", f.package(), s.name()))
            })
            .collect();
        for routed in [
            "flotilla.kv.v1.Kv",
            "flotilla.echo.v1.Echo",
            "flotilla.accounts.v1.Accounts",
        ] {
            assert!(told.iter().any(|t| t == routed), "{routed} in {told:?}");
        }
        assert!(!told.iter().any(|t| t.contains("peer")), "{told:?}");
    }

    #[test]
    fn health_names_the_node_each_service_and_each_grpc_service() {
        let services = Catalogue::builtin().check().expect("the catalogue holds");
        let names = health_names(services.table());
        for (name, service) in [
            ("", None),
            ("kv", Some("kv")),
            ("flotilla.kv.v1.Kv", Some("kv")),
            ("flotilla.accounts.v1.Accounts", Some("accounts")),
        ] {
            assert!(
                names.iter().any(|(n, s)| n == name && *s == service),
                "{name:?} in {names:?}"
            );
        }
    }
}
