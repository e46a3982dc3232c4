//! The routing table first: only a declared route of a service reaches the
//! layers below (with its `Matched` route); everything else is answered here
//! with an error that says why, as JSON or as a gRPC status.

use std::sync::Arc;

use axum::{
    extract::Request,
    response::{IntoResponse, Response},
};
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, StatusCode, header};

use super::{Labels, Layer, Matched, Next, is_grpc};
use crate::{
    catalogue::{
        api_error::ApiError,
        routing::{Lookup, RoutingTable},
    },
    telemetry::metrics::Label,
};

async fn route(table: &Arc<RoutingTable>, mut req: Request, next: Next<'_>) -> Response {
    let grpc = is_grpc(&req);
    let path = req.uri().path().to_owned();
    let (mut response, service) = match table.lookup(req.method(), &path, grpc) {
        Lookup::Found(route) => {
            let labels = Labels {
                service: Some(Label::from(route.service)),
                route: Some(route.label.clone()),
            };
            req.extensions_mut().insert(Matched {
                route: route.clone(),
                grpc,
            });
            let mut response = next.run(req).await;
            response.extensions_mut().insert(labels);
            return response;
        }
        Lookup::NoSuchService => {
            let asked = RoutingTable::service_segment(&path);
            let response = if grpc {
                tonic::Status::unimplemented(format!("no gRPC service `{asked}` on this server"))
                    .into_http::<axum::body::Body>()
            } else {
                ApiError::not_found(format!(
                    "no route for {path}: HTTP APIs are under /api/<service>/, and there is no service `{asked}`"
                ))
                .into_response()
            };
            (response, None)
        }
        Lookup::NoSuchPath { service } => (
            ApiError::not_found(format!("service `{service}` has no route {path}")).into_response(),
            Some(service),
        ),
        Lookup::NoSuchGrpcMethod { service } => (
            tonic::Status::unimplemented(format!("service `{service}` has no gRPC method {path}"))
                .into_http::<axum::body::Body>(),
            Some(service),
        ),
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
            (response, Some(service))
        }
    };
    response.extensions_mut().insert(Labels {
        service: service.map(Label::from),
        route: None,
    });
    response
}

/// The layer: `route` over its state.
pub(super) struct Table(pub Arc<RoutingTable>);

impl Layer for Table {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        Box::pin(route(&self.0, req, next))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;
    use crate::{
        catalogue::Catalogue,
        edge::ingress::test_support::{get, inner, layered, text},
    };

    fn stack() -> impl tower::Service<
        Request,
        Response = Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        let table = Catalogue::builtin().check().unwrap().table().clone();
        layered(Table(table), inner())
    }

    #[tokio::test]
    async fn a_declared_route_reaches_the_next_layer_with_its_match() {
        let r = stack().oneshot(get("/api/kv/keys/a/b")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let labels = r.extensions().get::<Labels>().cloned().unwrap();
        assert_eq!(labels.route.unwrap().as_str(), "/api/kv/keys/{*key}");
        assert_eq!(text(r).await, "/api/kv/keys/{*key}");
    }

    #[tokio::test]
    async fn everything_else_is_answered_with_why() {
        let r = stack().oneshot(get("/api/nothing/x")).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(text(r).await.contains("there is no service `nothing`"));
        let r = stack().oneshot(get("/api/kv/nope")).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = stack().oneshot(get("/api/kv/cas")).await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "POST");
        let grpc = |path: &str| {
            Request::post(path)
                .header(header::CONTENT_TYPE, "application/grpc")
                .body(Body::empty())
                .unwrap()
        };
        for path in ["/flotilla.kv.v1.Kv/Nope", "/nope.Nope/Call"] {
            let r = stack().oneshot(grpc(path)).await.unwrap();
            assert_eq!(r.headers()["grpc-status"], "12", "{path}: UNIMPLEMENTED");
        }
    }
}
