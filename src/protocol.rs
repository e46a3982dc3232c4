//! Facts of the node's HTTP protocol that more than one part relies on: the
//! edge that answers and forwards requests, and the Envoy configuration the
//! xDS server and `gen-envoy` emit. Each is defined once, here.

/// The health path on the public listener, outside every service's routes:
/// 200 while the node takes traffic, 503 once it drains.
pub const HEALTH_PATH: &str = "/healthz";

/// Names the node that forwarded a request; such a request is served
/// locally or refused, never forwarded again.
pub const FORWARDED_BY: &str = "x-flotilla-forwarded-by";

/// Set on a response that refused its request before any handler ran (no
/// node runs the service, the request was forwarded already, credentials
/// could not be checked): the forwarder and the Envoy routes send such a
/// request to another node whatever its method.
pub const UNPROCESSED: &str = "x-flotilla-unprocessed";

/// The client's address as the forwarding node saw it, with a MAC under a
/// key every node derives from `auth.secret`: a receiving node uses it for
/// per-address limits only when the MAC checks, so no caller can choose
/// the address its requests are counted under.
pub const FORWARDED_CLIENT: &str = "x-flotilla-forwarded-client";

/// Mounts a tonic-generated gRPC server at `/<package>.<Service>/*`.
pub fn grpc_router<S>(server: S) -> axum::Router
where
    S: tonic::server::NamedService
        + tower::Service<http::Request<axum::body::Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    axum::Router::new().route_service(&format!("/{}/{{*method}}", S::NAME), server)
}
