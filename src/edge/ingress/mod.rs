//! The built-in ingress: the public listener's one entry point, a stack of
//! layers that reads as the request's journey (`Ingress::new` composes it):
//!
//! 1. `json_lines`: every JSON answer from below ends with a newline;
//! 2. `health`: `GET /healthz` is answered for load balancers (503 once the
//!    node drains), outside every service's routes and metrics;
//! 3. `metrics`: every other answer is counted by service, route template,
//!    method and status, with its latency (labels `lookup` sets);
//! 4. `errors`: every HTTP error from below is `{"error","message"}` JSON,
//!    the framework's own rejections included;
//! 5. `node_grpc` and `openapi`: gRPC health and reflection, and the
//!    OpenAPI document at `GET /api/openapi.json`, answered by this node
//!    for itself, public and never forwarded;
//! 6. `lookup`: the routing table finds the route, or the request is
//!    answered: a JSON 404 for a path no service declares, 405 with `Allow`
//!    for a path with other methods, and the gRPC equivalents;
//! 7. `locality`: a service this node does not run is forwarded to a node
//!    that does, before any authentication (that node decides); a request
//!    another node forwarded gets the client address that node saw;
//! 8. `access`: authentication and the authorization decision for the
//!    route (`authz::decide`); the caller's `Principal` reaches the handler
//!    as a request extension;
//! 9. `limits`: body size and time;
//! 10. `dispatch`: the service's router.
//!
//! Each layer is a function over its own state, run through the `Layer`
//! trait, and tested alone in its module (`test_support::layered` puts one
//! layer over any inner service). The stack is a list of layers, each
//! handed the rest as a borrowed `Next`: nothing of the stack is cloned
//! per request.

mod access;
mod dispatch;
mod errors;
mod health;
mod json_lines;
mod limits;
mod locality;
mod lookup;
mod metrics;
mod node_grpc;
mod openapi;

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{body::Body, response::Response};
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, StatusCode};
use tower::ServiceExt;

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
pub use node_grpc::SERVICES as NODE_GRPC_SERVICES;

/// Limits applied to every request on the public listener, and how
/// requests are forwarded.
#[derive(Clone)]
pub struct IngressSettings {
    pub max_request_body_bytes: usize,
    pub request_timeout: Duration,
    /// This node's TLS between nodes: while it has some, requests are
    /// forwarded to other nodes over TLS, checked against the cluster's CA;
    /// otherwise in plaintext.
    pub forward_tls: crate::tls::NodeTls,
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

/// The rest of the stack below a layer: `run` hands the request on. It
/// borrows the stack (nothing of it is cloned per request).
pub(super) struct Next<'a>(Box<dyn FnOnce(Request<Body>) -> BoxFuture<'a, Response> + Send + 'a>);

impl<'a> Next<'a> {
    fn new(run: impl FnOnce(Request<Body>) -> BoxFuture<'a, Response> + Send + 'a) -> Next<'a> {
        Next(Box::new(run))
    }

    pub(super) async fn run(self, req: Request<Body>) -> Response {
        (self.0)(req).await
    }
}

/// One layer of the stack: it answers a request itself, or hands it (or a
/// changed one) to `next` and may change what comes back.
pub(super) trait Layer: Send + Sync {
    fn handle<'a>(&'a self, req: Request<Body>, next: Next<'a>) -> BoxFuture<'a, Response>;
}

/// The layers, top first, and the service routers below them.
struct Stack {
    layers: Vec<Box<dyn Layer>>,
    dispatch: dispatch::Dispatch,
}

impl Stack {
    fn run(&self, from: usize, req: Request<Body>) -> BoxFuture<'_, Response> {
        match self.layers.get(from) {
            Some(layer) => layer.handle(req, Next::new(move |req| self.run(from + 1, req))),
            None => {
                let dispatch = self.dispatch.clone();
                Box::pin(async move {
                    match dispatch.oneshot(req).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                })
            }
        }
    }
}

/// The ingress as one tower service. Cheap to clone.
#[derive(Clone)]
pub struct Ingress {
    stack: Arc<Stack>,
}

impl Ingress {
    /// `services` holds the composed router of every service started on
    /// this node, by name. Must be called within a tokio runtime (gRPC
    /// health follows `readiness` in a task); fails only if flotilla's own
    /// descriptors do not make a reflection service.
    pub fn new(
        table: Arc<RoutingTable>,
        auth: Arc<Auth>,
        registry: Registry,
        readiness: Arc<Readiness>,
        services: HashMap<&'static str, axum::Router>,
        metrics: HttpMetrics,
        limits: IngressSettings,
    ) -> Result<Ingress, String> {
        let client_key = forward::ClientKey::derive(&auth.settings.secret);
        let forwarder = forward::Forwarder::new(
            registry.clone(),
            limits.request_timeout,
            client_key.clone(),
            metrics.clone(),
        )
        .over_tls(limits.forward_tls.clone());
        let readiness_for_grpc = readiness.clone();
        let layers: Vec<Box<dyn Layer>> = vec![
            Box::new(json_lines::JsonLines),
            Box::new(health::Health(readiness)),
            Box::new(metrics::Metrics(metrics)),
            Box::new(errors::Errors),
            Box::new(node_grpc::NodeGrpc::new(&table, readiness_for_grpc)?),
            Box::new(openapi::OpenApi::new(&table)),
            Box::new(lookup::Table(table)),
            Box::new(locality::Locality {
                registry,
                forwarder,
                client_key,
                body_limit: limits.max_request_body_bytes,
            }),
            Box::new(access::Checks(auth)),
            Box::new(limits::Limits(limits)),
        ];
        Ok(Ingress {
            stack: Arc::new(Stack {
                layers,
                dispatch: dispatch::Dispatch::new(services),
            }),
        })
    }
}

impl Ingress {
    /// Serves `service` here from now on, with its composed `router` (a
    /// service started on a running node).
    pub fn add_service(&self, service: &'static str, router: axum::Router) {
        self.stack.dispatch.add(service, router);
    }
}

impl tower::Service<Request<Body>> for Ingress {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let stack = self.stack.clone();
        Box::pin(async move { Ok(stack.run(0, req).await) })
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

    /// One layer over `inner`, as a tower service.
    pub fn layered<L, S>(
        layer: L,
        inner: S,
    ) -> impl tower::Service<
        Request<Body>,
        Response = Response,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static
    where
        L: super::Layer + 'static,
        S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send,
    {
        let layer = std::sync::Arc::new(layer);
        tower::service_fn(move |req: Request<Body>| {
            let (layer, inner) = (layer.clone(), inner.clone());
            async move {
                let next = super::Next::new(move |req| {
                    Box::pin(async move {
                        match tower::ServiceExt::oneshot(inner, req).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        }
                    })
                });
                Ok::<_, Infallible>(layer.handle(req, next).await)
            }
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
