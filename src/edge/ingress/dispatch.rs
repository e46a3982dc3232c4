//! The bottom of the stack: the matched route's service router, started on
//! this node. `locality` sends on every request for a service this node
//! does not run, so a route without a router here is a bug, said as such.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{body::Body, response::Response};
use futures_util::future::BoxFuture;
use http::{Request, StatusCode};
use tower::ServiceExt;

use super::{Matched, error_response};
use crate::catalogue::api_error::ApiError;

#[derive(Clone)]
pub(super) struct Dispatch {
    /// Grows when a running node starts a service (`flotilla reconfigure`).
    services: Arc<std::sync::RwLock<HashMap<&'static str, axum::Router>>>,
}

impl Dispatch {
    pub(super) fn new(services: HashMap<&'static str, axum::Router>) -> Dispatch {
        Dispatch {
            services: Arc::new(std::sync::RwLock::new(services)),
        }
    }

    pub(super) fn add(&self, service: &'static str, router: axum::Router) {
        self.services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service, router);
    }
}

impl tower::Service<Request<Body>> for Dispatch {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let matched = req.extensions().get::<Matched>().cloned();
        let router = matched.as_ref().and_then(|m| {
            self.services
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(m.route.service)
                .cloned()
        });
        Box::pin(async move {
            let Some(router) = router else {
                let (service, grpc) = matched
                    .map(|m| (m.route.service, m.grpc))
                    .unwrap_or(("-", false));
                tracing::error!(service, path = %req.uri().path(), "a request reached dispatch for a service not started on this node");
                let error = ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "not_started_here",
                    format!("service `{service}` is routed to this node but not started on it"),
                );
                return Ok(error_response(error, grpc));
            };
            router.oneshot(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::get;

    use super::*;
    use crate::{
        catalogue::{Catalogue, routing::Lookup},
        edge::ingress::test_support::{self, text},
    };

    fn matched(path: &str) -> Request<Body> {
        let table = Catalogue::builtin().check().unwrap().table().clone();
        let Lookup::Found(route) = table.lookup(&http::Method::GET, path, false) else {
            panic!("{path} is not routed");
        };
        let mut req = test_support::get(path);
        req.extensions_mut().insert(Matched {
            route: route.clone(),
            grpc: false,
        });
        req
    }

    #[tokio::test]
    async fn the_matched_service_router_answers() {
        let echo = axum::Router::new().route("/api/echo", get(|| async { "echo here" }));
        let dispatch = Dispatch::new(HashMap::from([("echo", echo)]));
        let r = dispatch
            .clone()
            .oneshot(matched("/api/echo"))
            .await
            .unwrap();
        assert_eq!(text(r).await, "echo here");
        let r = dispatch.oneshot(matched("/api/kv/keys/a")).await.unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(text(r).await.contains("not started on it"));
    }
}
