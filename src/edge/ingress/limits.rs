//! The limits every routed request keeps: its body's size (a declared
//! length over the limit is refused at once, a longer streamed body fails
//! when read) and its time.

use axum::{
    body::Body,
    extract::Request,
    response::{IntoResponse, Response},
};
use futures_util::future::BoxFuture;
use http::{StatusCode, header};

use super::{IngressSettings, Layer, Next, is_grpc};
use crate::catalogue::api_error::ApiError;

async fn apply(limits: &IngressSettings, req: Request, next: Next<'_>) -> Response {
    let grpc = is_grpc(&req);
    let limit = limits.max_request_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let message = format!("the request body is larger than the limit of {limit} bytes");
        return if grpc {
            tonic::Status::resource_exhausted(message).into_http::<Body>()
        } else {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
                .into_response()
        };
    }
    let req = req.map(|body| Body::new(http_body_util::Limited::new(body, limit)));
    let timeout = limits.request_timeout;
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            let message = format!(
                "the request took longer than the limit of {} ms",
                timeout.as_millis()
            );
            if grpc {
                tonic::Status::deadline_exceeded(message).into_http::<Body>()
            } else {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message).into_response()
            }
        }
    }
}

/// The layer: `apply` over its state.
pub(super) struct Limits(pub IngressSettings);

impl Layer for Limits {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        Box::pin(apply(&self.0, req, next))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::ServiceExt;

    use super::*;
    use crate::edge::ingress::test_support::{get, inner, layered, text};

    fn limits() -> IngressSettings {
        IngressSettings {
            max_request_body_bytes: 8,
            request_timeout: Duration::from_secs(10),
            forward_tls: std::sync::Arc::new(|| None),
        }
    }

    /// An inner service that reads the whole body.
    fn reader() -> impl tower::Service<
        Request,
        Response = Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(|req: Request| async move {
            let read = http_body_util::BodyExt::collect(req.into_body()).await;
            Ok::<_, std::convert::Infallible>(match read {
                Ok(b) => Response::new(Body::from(b.to_bytes())),
                Err(_) => StatusCode::PAYLOAD_TOO_LARGE.into_response(),
            })
        })
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_declared_or_not() {
        let stack = layered(Limits(limits()), reader());
        let post = |body: &'static str, declared: bool| {
            let mut r = Request::post("/api/kv/cas");
            if declared {
                r = r.header(header::CONTENT_LENGTH, body.len());
            }
            r.body(Body::from(body)).unwrap()
        };
        let r = stack.clone().oneshot(post("12345678", true)).await.unwrap();
        assert_eq!(text(r).await, "12345678");
        let r = stack
            .clone()
            .oneshot(post("123456789", true))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(text(r).await.contains("limit of 8 bytes"));
        let r = stack.oneshot(post("123456789", false)).await.unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn a_request_over_its_time_is_answered_for() {
        let slow = tower::service_fn(|_req: Request| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        });
        let short = IngressSettings {
            request_timeout: Duration::from_millis(50),
            ..limits()
        };
        let stack = layered(Limits(short), slow);
        let r = stack.oneshot(get("/api/echo")).await.unwrap();
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        let quick = layered(Limits(limits()), inner());
        let r = quick.oneshot(get("/api/echo")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}
