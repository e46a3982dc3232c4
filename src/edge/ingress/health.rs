//! `GET /healthz`, outside every service's routes: whether the node takes
//! traffic, for load balancers' health checks (the Envoy clusters' active
//! checks). 503 once the node drains.

use std::sync::Arc;

use axum::{
    extract::Request,
    response::{IntoResponse, Response},
};
use futures_util::future::BoxFuture;
use http::{Method, StatusCode};

use super::{HEALTH_PATH, Layer, Next};
use crate::edge::admin::Readiness;

async fn answer(readiness: &Arc<Readiness>, req: Request, next: Next<'_>) -> Response {
    if req.uri().path() != HEALTH_PATH || req.method() != Method::GET {
        return next.run(req).await;
    }
    let serving = readiness.serving();
    let status = if serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "serving": serving })),
    )
        .into_response()
}

/// The layer: `answer` over its state.
pub(super) struct Health(pub Arc<Readiness>);

impl Layer for Health {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        Box::pin(answer(&self.0, req, next))
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;
    use crate::edge::ingress::test_support::{get, inner, layered, text};

    #[tokio::test]
    async fn health_is_answered_here_and_everything_else_passes() {
        let readiness = Arc::new(Readiness::new(&[]));
        let stack = layered(Health(readiness.clone()), inner());
        let r = stack.clone().oneshot(get(HEALTH_PATH)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(text(r).await, r#"{"serving":true}"#);
        readiness.start_draining();
        let r = stack.clone().oneshot(get(HEALTH_PATH)).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = stack.oneshot(get("/api/echo")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "passed to the inner service");
    }
}
