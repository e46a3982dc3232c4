//! `GET /healthz`, outside every service's routes: whether the node takes
//! traffic, for load balancers' health checks (the Envoy clusters' active
//! checks). 503 once the node drains.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{Method, StatusCode};

use super::HEALTH_PATH;
use crate::edge::admin::Readiness;

pub(super) async fn answer(
    State(readiness): State<Arc<Readiness>>,
    req: Request,
    next: Next,
) -> Response {
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

#[cfg(test)]
mod tests {
    use axum::middleware::from_fn_with_state;
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::edge::ingress::test_support::{get, inner, text};

    #[tokio::test]
    async fn health_is_answered_here_and_everything_else_passes() {
        let readiness = Arc::new(Readiness::new(&[]));
        let stack = ServiceBuilder::new()
            .layer(from_fn_with_state(readiness.clone(), answer))
            .service(inner());
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
