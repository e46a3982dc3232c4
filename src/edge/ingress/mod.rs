//! The built-in ingress: the public listener's one entry point, a stack of
//! layers that reads as the request's journey (`Ingress::new` composes it):
//!
//! 1. `health`: `GET /healthz` is answered for load balancers (503 once the
//!    node drains), outside every service's routes and metrics;
//! 2. `metrics`: every other answer is counted by service, route template,
//!    method and status, with its latency (labels `lookup` sets);
//! 3. `errors`: every HTTP error from below is `{"error","message"}` JSON,
//!    the framework's own rejections included;
//! 4. `lookup`: the routing table finds the route, or the request is
//!    answered: a JSON 404 for a path no service declares, 405 with `Allow`
//!    for a path with other methods, and the gRPC equivalents;
//! 5. `locality`: a service this node does not run is forwarded to a node
//!    that does, before any authentication (that node decides); a request
//!    another node forwarded gets the client address that node saw;
//! 6. `access`: authentication and the authorization decision for the
//!    route (`authz::decide`); the caller's `Principal` reaches the handler
//!    as a request extension;
//! 7. `limits`: body size and time;
//! 8. `dispatch`: the service's router.
//!
//! Each layer is an axum middleware function over its own state, tested
//! alone in its module.

mod access;
mod dispatch;
mod errors;
mod health;
mod limits;
mod locality;
mod lookup;
mod metrics;

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{body::Body, middleware::from_fn_with_state, response::Response};
use http::{HeaderValue, Request, StatusCode};
use tower::{ServiceBuilder, util::BoxCloneSyncService};

use crate::{
    auth::Auth,
    catalogue::{
        api_error::{ApiError, error_response, is_grpc},
        routing::Route,
        routing::RoutingTable,
    },
    edge::{admin::Readiness, forward},
    mesh::registry::Registry,
    telemetry::metrics::{HttpMetrics, Label},
};

pub use crate::protocol::HEALTH_PATH;

/// Limits applied to every request on the public listener.
#[derive(Clone, Debug)]
pub struct IngressLimits {
    pub max_request_body_bytes: usize,
    pub request_timeout: Duration,
}

/// The route a request was matched to (set by `lookup`, read below it).
#[derive(Clone)]
struct Matched {
    route: Arc<Route>,
    grpc: bool,
}

/// What `metrics` labels an answer with (set on the response by `lookup`).
#[derive(Clone)]
struct Labels {
    service: Option<Label>,
    route: Option<Label>,
}

/// Marks a refusal made before any handler ran: another node may take the
/// request whatever it is (`protocol::RetryPolicy`).
fn mark_unprocessed(response: &mut Response) {
    response
        .headers_mut()
        .insert(forward::UNPROCESSED, HeaderValue::from_static("1"));
}

/// The ingress as one tower service. Cheap to clone.
#[derive(Clone)]
pub struct Ingress {
    stack: BoxCloneSyncService<Request<Body>, Response, Infallible>,
}

impl Ingress {
    /// `services` holds the composed router of every service started on
    /// this node, by name.
    pub fn new(
        table: Arc<RoutingTable>,
        auth: Arc<Auth>,
        registry: Registry,
        readiness: Arc<Readiness>,
        services: HashMap<&'static str, axum::Router>,
        metrics: HttpMetrics,
        limits: IngressLimits,
    ) -> Ingress {
        let client_key = forward::ClientKey::derive(&auth.settings.secret);
        let forwarder =
            forward::Forwarder::new(registry.clone(), limits.request_timeout, client_key.clone());
        let stack = ServiceBuilder::new()
            .layer(from_fn_with_state(readiness, health::answer))
            .layer(from_fn_with_state(metrics, metrics::observe))
            .layer(axum::middleware::from_fn(errors::as_json))
            .layer(from_fn_with_state(table, lookup::route))
            .layer(from_fn_with_state(
                locality::Locality {
                    registry,
                    forwarder,
                    client_key,
                    body_limit: limits.max_request_body_bytes,
                },
                locality::forward_or_pass,
            ))
            .layer(from_fn_with_state(auth, access::check))
            .layer(from_fn_with_state(limits, limits::apply))
            .service(dispatch::Dispatch::new(services));
        Ingress {
            stack: BoxCloneSyncService::new(stack),
        }
    }
}

impl tower::Service<Request<Body>> for Ingress {
    type Response = Response;
    type Error = Infallible;
    type Future = <BoxCloneSyncService<Request<Body>, Response, Infallible> as tower::Service<
        Request<Body>,
    >>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.stack.call(req)
    }
}

/// Composes a started service's HTTP and gRPC handlers into the router the
/// ingress dispatches to. The routing table and the router are made from the
/// same declarations; a request reaching the fallback means they disagree,
/// a bug reported as such.
pub fn compose(service: &'static str, handlers: crate::catalogue::Handlers) -> axum::Router {
    axum::Router::new()
        .nest(
            &format!("{}{service}", crate::catalogue::routing::API_PREFIX),
            handlers.http,
        )
        .merge(handlers.grpc)
        .fallback(move |req: Request<Body>| async move {
            tracing::error!(service, path = %req.uri().path(), "the routing table routed a request the service's router does not serve");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "undeclared_handler",
                format!(
                    "service `{service}` has no handler for {}",
                    req.uri().path()
                ),
            )
        })
}

#[cfg(test)]
mod test_support {
    //! What the layers' tests share: a request, an inner service that
    //! answers 200 and says what reached it.

    use std::convert::Infallible;

    use axum::{body::Body, response::Response};
    use http::Request;

    /// An inner service that answers 200 with the route it was handed, if
    /// any.
    pub fn inner()
    -> impl tower::Service<
        Request<Body>,
        Response = Response,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        tower::service_fn(|req: Request<Body>| async move {
            let route = req
                .extensions()
                .get::<super::Matched>()
                .map(|m| m.route.template.clone())
                .unwrap_or_default();
            Ok::<_, Infallible>(Response::new(Body::from(route)))
        })
    }

    pub fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    pub async fn text(response: Response) -> String {
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
