//! Authentication and authorization, before anything of the service runs:
//! a request the route's `Access` does not allow reaches no handler. The
//! caller's `Principal` reaches the handler as a request extension.

use std::sync::Arc;

use axum::{extract::Request, response::Response};
use futures_util::future::BoxFuture;
use http::StatusCode;

use super::{Layer, Matched, Next, error_response, mark_unprocessed};
use crate::{
    auth::{
        Auth,
        authz::{self, Decision, Identity},
    },
    catalogue::{Access, api_error::ApiError},
    store::StoreError,
};

async fn check(auth: &Arc<Auth>, mut req: Request, next: Next<'_>) -> Response {
    let Some(Matched { route, grpc }) = req.extensions().get::<Matched>().cloned() else {
        return next.run(req).await;
    };
    let identity = match route.access {
        Access::Public => Identity::Anonymous,
        Access::Permission(_) => match auth.authenticate(req.headers()).await {
            Ok(identity) => identity,
            Err(e) => {
                // The cluster being unavailable is announced where it is
                // learned (no leader, this member cut off); per request it
                // is only detail.
                if matches!(e, StoreError::Unavailable(_)) {
                    tracing::debug!(error = %e, "cannot check credentials");
                } else {
                    tracing::error!(error = %e, "cannot check credentials");
                }
                let error = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "auth_unavailable",
                    format!("credentials cannot be checked right now: {e}"),
                );
                let mut response = error_response(error, grpc);
                mark_unprocessed(&mut response);
                return response;
            }
        },
    };
    match authz::decide(route.access, &identity) {
        Decision::Allow => {}
        Decision::Unauthenticated(reason) => {
            return error_response(ApiError::unauthenticated(reason), grpc);
        }
        Decision::Forbidden(reason) => return error_response(ApiError::forbidden(reason), grpc),
    }
    if let Identity::Known(principal) = identity {
        req.extensions_mut().insert(principal);
    }
    next.run(req).await
}

/// The layer: `check` over its state.
pub(super) struct Checks(pub Arc<Auth>);

impl Layer for Checks {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        Box::pin(check(&self.0, req, next))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;
    use crate::{
        auth::{authz::Principal, test_support::Fixture},
        catalogue::{Catalogue, routing::Lookup},
        edge::ingress::test_support::{layered, text},
    };

    /// A request for `path` as `lookup` hands it on.
    fn matched(method: http::Method, path: &str, headers: http::HeaderMap) -> Request {
        let table = Catalogue::builtin().check().unwrap().table().clone();
        let Lookup::Found(route) = table.lookup(&method, path, false) else {
            panic!("{method} {path} is not routed");
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        *req.headers_mut() = headers;
        req.extensions_mut().insert(Matched {
            route: route.clone(),
            grpc: false,
        });
        req
    }

    /// An inner service that answers with the principal's name.
    fn who() -> impl tower::Service<
        Request,
        Response = Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(|req: Request| async move {
            let name = req
                .extensions()
                .get::<Principal>()
                .map(|p| p.username.clone())
                .unwrap_or_else(|| "anonymous".into());
            Ok::<_, std::convert::Infallible>(Response::new(Body::from(name)))
        })
    }

    #[tokio::test]
    async fn each_route_gets_the_decision_its_access_calls_for() {
        let f = Fixture::new().await;
        let stack = layered(Checks(f.auth.clone()), who());
        let none = http::HeaderMap::new;
        // Public: passes, anonymous.
        let r = stack
            .clone()
            .oneshot(matched(http::Method::GET, "/api/echo", none()))
            .await
            .unwrap();
        assert_eq!(text(r).await, "anonymous");
        // A permission: no credential is 401, a user's token passes with
        // the principal, an admin-only route is 403 for that user.
        let r = stack
            .clone()
            .oneshot(matched(http::Method::GET, "/api/kv/keys/a", none()))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let ada = f.user("ada", &[authz::ROLE_USER]).await;
        let r = stack
            .clone()
            .oneshot(matched(http::Method::GET, "/api/kv/keys/a", f.bearer(&ada)))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(text(r).await, "ada");
        let r = stack
            .oneshot(matched(
                http::Method::GET,
                "/api/accounts/users",
                f.bearer(&ada),
            ))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}
