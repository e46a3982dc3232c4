//! Where the request is served: a service this node does not run is
//! forwarded to a node that does, before any authentication (the node that
//! runs it decides); a request another node forwarded gets, as its client,
//! the address that node saw, when its signature checks.

use axum::{extract::Request, response::Response};
use futures_util::future::BoxFuture;

use super::{Layer, Matched, Next, error_response, mark_unprocessed};
use crate::{
    catalogue::ClientAddr,
    edge::forward::{self, Forwarder},
    mesh::registry::Registry,
};

#[derive(Clone)]
pub(super) struct Locality {
    pub registry: Registry,
    pub forwarder: Forwarder,
    pub client_key: forward::ClientKey,
    pub body_limit: usize,
}

async fn forward_or_pass(locality: &Locality, mut req: Request, next: Next<'_>) -> Response {
    let Some(Matched { route, grpc }) = req.extensions().get::<Matched>().cloned() else {
        return next.run(req).await;
    };
    if !locality.registry.is_local(route.service) {
        let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
        let forwarded = locality
            .forwarder
            .forward(route.service, req, client, route.kind, locality.body_limit)
            .await;
        return forwarded.unwrap_or_else(|refused| {
            let unprocessed = refused.unprocessed();
            let error = refused.into_api_error(route.service, locality.registry.local_id());
            let mut response = error_response(error, grpc);
            if unprocessed {
                mark_unprocessed(&mut response);
            }
            response
        });
    }
    if let Some(ip) = forward::forwarded_client(req.headers(), &locality.client_key) {
        req.extensions_mut()
            .insert(ClientAddr(std::net::SocketAddr::new(ip, 0)));
    }
    next.run(req).await
}

impl Layer for Locality {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        Box::pin(forward_or_pass(self, req, next))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;
    use tower::ServiceExt;

    use super::*;
    use crate::{
        catalogue::{Catalogue, routing::Lookup},
        edge::ingress::test_support::{get, inner, layered},
        mesh::registry::NodeRecord,
    };

    fn locality() -> Locality {
        let registry = Registry::single(NodeRecord {
            id: "n1".into(),
            public: "127.0.0.1:1".parse().unwrap(),
            services: vec!["kv".into()],
            healthy: true,
        });
        let key = forward::ClientKey::derive("a-shared-auth-secret-0123456789abcdef");
        Locality {
            forwarder: Forwarder::new(
                registry.clone(),
                Duration::from_secs(1),
                key.clone(),
                crate::telemetry::metrics::Metrics::new().http,
            ),
            registry,
            client_key: key,
            body_limit: 1024,
        }
    }

    fn matched(path: &str) -> Request {
        let table = Catalogue::builtin().check().unwrap().table().clone();
        let Lookup::Found(route) = table.lookup(&http::Method::GET, path, false) else {
            panic!("{path} is not routed");
        };
        let mut req = get(path);
        req.extensions_mut().insert(Matched {
            route: route.clone(),
            grpc: false,
        });
        req
    }

    #[tokio::test]
    async fn a_local_service_is_served_here_and_another_is_forwarded() {
        let stack = layered(locality(), inner());
        let r = stack
            .clone()
            .oneshot(matched("/api/kv/keys/a"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        // No node runs echo: refused before any handler ran, so any router
        // may send it elsewhere.
        let r = stack.oneshot(matched("/api/echo")).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().contains_key(forward::UNPROCESSED));
    }

    #[tokio::test]
    async fn a_forwarded_client_is_believed_only_when_signed() {
        let seen = tower::service_fn(|req: Request| async move {
            let client = req
                .extensions()
                .get::<ClientAddr>()
                .map(|c| c.0.ip().to_string());
            Ok::<_, std::convert::Infallible>(Response::new(axum::body::Body::from(
                client.unwrap_or_default(),
            )))
        });
        let l = locality();
        let stack = layered(l.clone(), seen);
        let mut req = matched("/api/kv/keys/a");
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        req.headers_mut().insert(
            forward::FORWARDED_CLIENT,
            l.client_key.sign(ip).parse().unwrap(),
        );
        let r = stack.clone().oneshot(req).await.unwrap();
        assert_eq!(super::super::test_support::text(r).await, "192.0.2.7");
        let mut forged = matched("/api/kv/keys/a");
        forged
            .headers_mut()
            .insert(forward::FORWARDED_CLIENT, "192.0.2.8;zz".parse().unwrap());
        let r = stack.oneshot(forged).await.unwrap();
        assert_eq!(super::super::test_support::text(r).await, "");
    }
}
