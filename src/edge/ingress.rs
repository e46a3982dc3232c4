//! The built-in ingress: the public listener's one entry point.
//!
//! Each request is looked up in the [`RoutingTable`] first; only a declared
//! route of a service running on this node reaches that service's handlers.
//! Everything else gets an error that says why: a JSON 404 for a path no
//! service declares, a 503 naming a known service this node does not run,
//! and the gRPC equivalents for gRPC calls. Body size and time limits apply
//! to every request. `GET /healthz` answers for load balancers whether the
//! node takes traffic (503 once it drains).

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, Request, StatusCode, header};
use tower::ServiceExt;

use crate::{
    auth::{
        Auth,
        authz::{self, Decision, Identity},
    },
    catalogue::Access,
    catalogue::api_error::ApiError,
    catalogue::routing::{Lookup, RoutingTable},
    edge::admin::Readiness,
    edge::forward::{self, Forwarder},
    edge::server::ClientAddr,
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

struct Inner {
    table: Arc<RoutingTable>,
    auth: Arc<Auth>,
    registry: Registry,
    readiness: Arc<Readiness>,
    services: HashMap<&'static str, axum::Router>,
    forwarder: Forwarder,
    client_key: forward::ClientKey,
    metrics: HttpMetrics,
    limits: IngressLimits,
    unmatched: Label,
}

/// The ingress as a tower service. Cheap to clone.
#[derive(Clone)]
pub struct Ingress {
    inner: Arc<Inner>,
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
        Ingress {
            inner: Arc::new(Inner {
                table,
                auth,
                forwarder: Forwarder::new(
                    registry.clone(),
                    limits.request_timeout,
                    client_key.clone(),
                ),
                client_key,
                registry,
                readiness,
                services,
                metrics,
                limits,
                unmatched: Label::from("-"),
            }),
        }
    }
}

fn is_grpc(req: &Request<Body>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn grpc_error(status: tonic::Status) -> Response {
    status.into_http::<Body>()
}

/// Marks a refusal made before any handler ran: another node may take the
/// request whatever its method (see `forward::UNPROCESSED`).
fn mark_unprocessed(response: &mut Response) {
    response
        .headers_mut()
        .insert(forward::UNPROCESSED, HeaderValue::from_static("1"));
}

/// The error response for `error`, as JSON or as a gRPC status.
fn error_response(error: ApiError, grpc: bool) -> Response {
    if grpc {
        grpc_error(error.into())
    } else {
        error.into_response()
    }
}

impl Inner {
    async fn handle(&self, req: Request<Body>) -> Response {
        if req.uri().path() == HEALTH_PATH && req.method() == Method::GET {
            // For load balancers' health checks (the Envoy clusters'
            // active checks): 503 once the node drains.
            let serving = self.readiness.serving();
            let status = if serving {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return (
                status,
                axum::Json(serde_json::json!({ "serving": serving })),
            )
                .into_response();
        }
        let started = Instant::now();
        let grpc = is_grpc(&req);
        let method = req.method().clone();
        let (response, service, route) = self.route(req, grpc).await;
        self.metrics.observe(
            service.unwrap_or_else(|| self.unmatched.clone()),
            route.unwrap_or_else(|| self.unmatched.clone()),
            Label::method(&method),
            response.status().as_u16(),
            started.elapsed(),
        );
        response
    }

    async fn route(
        &self,
        req: Request<Body>,
        grpc: bool,
    ) -> (Response, Option<Label>, Option<Label>) {
        let path = req.uri().path();
        let route = match self.table.lookup(req.method(), path, grpc) {
            Lookup::Found(route) => route,
            Lookup::NoSuchService => {
                let asked = RoutingTable::service_segment(path);
                let response = if grpc {
                    grpc_error(tonic::Status::unimplemented(format!(
                        "no gRPC service `{asked}` on this server"
                    )))
                } else {
                    ApiError::not_found(format!(
                        "no route for {path}: HTTP APIs are under /api/<service>/, and there is no service `{asked}`"
                    ))
                    .into_response()
                };
                return (response, None, None);
            }
            Lookup::NoSuchPath { service } => {
                let response =
                    ApiError::not_found(format!("service `{service}` has no route {path}"))
                        .into_response();
                return (response, Some(Label::from(service)), None);
            }
            Lookup::NoSuchGrpcMethod { service } => {
                let response = grpc_error(tonic::Status::unimplemented(format!(
                    "service `{service}` has no gRPC method {path}"
                )));
                return (response, Some(Label::from(service)), None);
            }
            Lookup::MethodNotAllowed { service, allowed } => {
                let list = allowed
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut response = ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{path} accepts {list}"),
                )
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&list) {
                    response.headers_mut().insert(header::ALLOW, v);
                }
                return (response, Some(Label::from(service)), None);
            }
        };
        let service = Label::from(route.service);
        let template = route.label.clone();
        let Some(router) = self
            .services
            .get(route.service)
            .filter(|_| self.registry.is_local(route.service))
        else {
            // Not here: a node that runs it answers (and authenticates).
            let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
            let forwarded = self
                .forwarder
                .forward(
                    route.service,
                    req,
                    client,
                    grpc,
                    self.limits.max_request_body_bytes,
                )
                .await;
            let response = forwarded.unwrap_or_else(|refused| {
                let unprocessed = refused.unprocessed();
                let error = refused.into_api_error(route.service, self.registry.local_id());
                let mut response = error_response(error, grpc);
                if unprocessed {
                    mark_unprocessed(&mut response);
                }
                response
            });
            return (response, Some(service), Some(template));
        };
        // A request another node forwarded: the client is the one that node
        // saw (for per-address limits), when its signature checks.
        let mut req = req;
        if let Some(ip) = forward::forwarded_client(req.headers(), &self.client_key) {
            req.extensions_mut()
                .insert(ClientAddr(std::net::SocketAddr::new(ip, 0)));
        }
        // Authentication and authorization, before anything of the service
        // runs: a request that is denied reaches no handler.
        let identity = match route.access {
            Access::Public => Identity::Anonymous,
            Access::Permission(_) => match self.auth.authenticate(req.headers()).await {
                Ok(identity) => identity,
                Err(e) => {
                    tracing::error!(error = %e, "cannot check credentials");
                    let error = ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "auth_unavailable",
                        format!("credentials cannot be checked right now: {e}"),
                    );
                    let mut response = error_response(error, grpc);
                    mark_unprocessed(&mut response);
                    return (response, Some(service), Some(template));
                }
            },
        };
        match authz::decide(route.access, &identity) {
            Decision::Allow => {}
            Decision::Unauthenticated(reason) => {
                return (
                    error_response(ApiError::unauthenticated(reason), grpc),
                    Some(service),
                    Some(template),
                );
            }
            Decision::Forbidden(reason) => {
                return (
                    error_response(ApiError::forbidden(reason), grpc),
                    Some(service),
                    Some(template),
                );
            }
        }
        if let Identity::Known(principal) = identity {
            req.extensions_mut().insert(principal);
        }
        let limit = self.limits.max_request_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            let message = format!("the request body is larger than the limit of {limit} bytes");
            let response = if grpc {
                grpc_error(tonic::Status::resource_exhausted(message))
            } else {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
                    .into_response()
            };
            return (response, Some(service), Some(template));
        }
        let req = req.map(|body| Body::new(http_body_util::Limited::new(body, limit)));
        let timeout = self.limits.request_timeout;
        let response = match tokio::time::timeout(timeout, router.clone().oneshot(req)).await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(_) => {
                let message = format!(
                    "the request took longer than the limit of {} ms",
                    timeout.as_millis()
                );
                if grpc {
                    grpc_error(tonic::Status::deadline_exceeded(message))
                } else {
                    ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message).into_response()
                }
            }
        };
        (response, Some(service), Some(template))
    }
}

impl tower::Service<Request<Body>> for Ingress {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.handle(req).await) })
    }
}

/// Composes a started service's HTTP and gRPC handlers into the router the
/// ingress dispatches to. A request reaching the fallback was routed by the
/// table but not served by the service: a bug in the service's
/// declarations, reported as such.
pub fn compose(service: &'static str, handlers: crate::catalogue::Handlers) -> axum::Router {
    axum::Router::new()
        .nest(
            &format!("{}{service}", crate::catalogue::routing::API_PREFIX),
            handlers.http,
        )
        .merge(handlers.grpc)
        .fallback(move |req: Request<Body>| async move {
            tracing::error!(service, path = %req.uri().path(), "declared route has no handler");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "undeclared_handler",
                format!(
                    "service `{service}` declares {} but does not serve it",
                    req.uri().path()
                ),
            )
        })
}
