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

/// When a request may be sent again, to another node: the one policy the
/// built-in forwarder follows and the Envoy routes (xDS and `gen-envoy`)
/// and the routes of proxyless gRPC clients are generated from.
///
/// - A request no handler saw (the connection could not be made, or the
///   node refused it before any handler ran and said so with
///   [`UNPROCESSED`]) may go again, whatever it is.
/// - A request whose handler may have run goes again only if it is
///   idempotent (an idempotent HTTP method, or a gRPC method its service
///   declares idempotent), after a failure, a 502/503/504 (HTTP) or an
///   `UNAVAILABLE` status (gRPC).
/// - Each attempt goes to a node not tried yet, at most [`Self::RETRIES`]
///   more.
///
/// gRPC clients without Envoy honour status codes only: their routes retry
/// idempotent methods on `UNAVAILABLE`, which a node answers, among others,
/// to every call it refuses before any handler runs.
pub struct RetryPolicy;

/// The kinds of route the policy tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// An HTTP route whose method is idempotent.
    IdempotentHttp,
    /// Any other HTTP route.
    Http,
    /// A gRPC method declared idempotent.
    IdempotentGrpc,
    /// Any other gRPC method.
    Grpc,
}

impl RouteKind {
    pub fn of(grpc: bool, idempotent: bool) -> RouteKind {
        match (grpc, idempotent) {
            (false, true) => RouteKind::IdempotentHttp,
            (false, false) => RouteKind::Http,
            (true, true) => RouteKind::IdempotentGrpc,
            (true, false) => RouteKind::Grpc,
        }
    }

    pub fn idempotent(self) -> bool {
        matches!(self, RouteKind::IdempotentHttp | RouteKind::IdempotentGrpc)
    }
}

/// Envoy's conditions for a request no handler saw.
const ENVOY_UNSEEN: &str = "connect-failure,refused-stream,reset-before-request,retriable-headers";

impl RetryPolicy {
    /// Attempts after the first, each on a node not tried yet.
    pub const RETRIES: u32 = 2;

    /// Whether an HTTP method is idempotent (RFC 9110, without TRACE).
    pub fn idempotent_method(method: &http::Method) -> bool {
        matches!(
            *method,
            http::Method::GET
                | http::Method::HEAD
                | http::Method::OPTIONS
                | http::Method::PUT
                | http::Method::DELETE
        )
    }

    /// Whether a request of `kind` that got this answer from one node goes
    /// to another.
    pub fn after_response(
        kind: RouteKind,
        status: http::StatusCode,
        headers: &http::HeaderMap,
    ) -> bool {
        headers.contains_key(UNPROCESSED)
            || match kind {
                RouteKind::IdempotentHttp => matches!(
                    status,
                    http::StatusCode::BAD_GATEWAY
                        | http::StatusCode::SERVICE_UNAVAILABLE
                        | http::StatusCode::GATEWAY_TIMEOUT
                ),
                RouteKind::IdempotentGrpc => headers.get("grpc-status").is_some_and(|s| s == "14"),
                RouteKind::Http | RouteKind::Grpc => false,
            }
    }

    /// Whether a request of `kind` that got no answer goes to another node:
    /// `unsent` when the connection could not be made.
    pub fn after_failure(kind: RouteKind, unsent: bool) -> bool {
        unsent || kind.idempotent()
    }

    /// Envoy's `retry_on` for a route of `kind`.
    pub fn envoy_retry_on(kind: RouteKind) -> &'static str {
        match kind {
            RouteKind::IdempotentHttp => {
                "5xx,reset,connect-failure,refused-stream,retriable-status-codes,retriable-headers"
            }
            RouteKind::IdempotentGrpc => {
                "connect-failure,refused-stream,reset-before-request,retriable-headers,unavailable"
            }
            RouteKind::Http | RouteKind::Grpc => ENVOY_UNSEEN,
        }
    }

    /// The HTTP statuses Envoy's `retriable-status-codes` names.
    pub const ENVOY_RETRIABLE_STATUS: u32 = 503;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, StatusCode};

    #[test]
    fn the_retry_policy_retries_what_no_handler_saw_and_idempotent_calls_only() {
        let none = HeaderMap::new();
        let mut unprocessed = HeaderMap::new();
        unprocessed.insert(UNPROCESSED, HeaderValue::from_static("1"));
        let mut grpc_unavailable = HeaderMap::new();
        grpc_unavailable.insert("grpc-status", HeaderValue::from_static("14"));
        use RouteKind::*;
        for kind in [IdempotentHttp, Http, IdempotentGrpc, Grpc] {
            assert!(RetryPolicy::after_response(
                kind,
                StatusCode::OK,
                &unprocessed
            ));
            assert!(RetryPolicy::after_failure(kind, true));
            assert_eq!(RetryPolicy::after_failure(kind, false), kind.idempotent());
            assert!(!RetryPolicy::after_response(kind, StatusCode::OK, &none));
        }
        assert!(RetryPolicy::after_response(
            IdempotentHttp,
            StatusCode::SERVICE_UNAVAILABLE,
            &none
        ));
        assert!(!RetryPolicy::after_response(
            Http,
            StatusCode::SERVICE_UNAVAILABLE,
            &none
        ));
        assert!(RetryPolicy::after_response(
            IdempotentGrpc,
            StatusCode::OK,
            &grpc_unavailable
        ));
        assert!(!RetryPolicy::after_response(
            Grpc,
            StatusCode::OK,
            &grpc_unavailable
        ));
        // What Envoy and gRPC clients are told says the same.
        assert!(RetryPolicy::envoy_retry_on(IdempotentGrpc).ends_with("unavailable"));
        assert!(!RetryPolicy::envoy_retry_on(Grpc).contains("unavailable"));
        assert!(RetryPolicy::envoy_retry_on(IdempotentHttp).contains("5xx"));
        assert!(!RetryPolicy::envoy_retry_on(Http).contains("5xx"));
        assert!(RetryPolicy::idempotent_method(&http::Method::PUT));
        assert!(!RetryPolicy::idempotent_method(&http::Method::POST));
    }
}
