//! The top of the stack: every JSON answer made on this node ends with a
//! newline (`edge::json_line`), whichever layer below made it: `/healthz`,
//! an error, a service's answer. A forwarded answer passes as the node
//! that made it ended it.

use axum::{extract::Request, response::Response};
use futures_util::future::BoxFuture;

use super::{Layer, Next};
use crate::edge::json_line;

/// The layer: `json_line::terminate` over every answer.
pub(super) struct JsonLines;

impl Layer for JsonLines {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        Box::pin(async move { json_line::terminate(next.run(req).await).await })
    }
}

#[cfg(test)]
mod tests {
    use axum::{Json, response::IntoResponse};
    use tower::ServiceExt;

    use super::*;
    use crate::edge::ingress::test_support::{get, layered, text};

    #[tokio::test]
    async fn json_from_below_ends_with_a_newline() {
        let stack = layered(
            JsonLines,
            tower::service_fn(|_req: Request| async {
                Ok::<_, std::convert::Infallible>(
                    Json(serde_json::json!({"serving": true})).into_response(),
                )
            }),
        );
        let r = stack.oneshot(get("/healthz")).await.unwrap();
        assert_eq!(text(r).await, "{\"serving\":true}\n");
    }
}
