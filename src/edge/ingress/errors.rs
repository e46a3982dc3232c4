//! One error shape: every HTTP error the layers below give is
//! `{"error", "message"}` JSON. Handlers and the layers above answer with
//! `ApiError` already; what the framework answers on its own (a body that
//! is not JSON, a wrong content type, a wrongly typed field, a body over
//! the limit, a path segment that is not UTF-8) comes as plain text, and is
//! turned into the same shape here, its text kept as the message. gRPC
//! requests are left alone: their errors are statuses.

use axum::{
    extract::Request,
    response::{IntoResponse, Response},
};
use futures_util::future::BoxFuture;
use http::{StatusCode, header};

use super::{Layer, Next, is_grpc};
use crate::{catalogue::api_error::ApiError, edge::json_line::is_json};

/// The most of a plain-text error body kept as the message.
const MESSAGE_LIMIT: usize = 4 * 1024;

async fn as_json(req: Request, next: Next<'_>) -> Response {
    if is_grpc(&req) {
        return next.run(req).await;
    }
    error_as_json(next.run(req).await).await
}

/// `response` as `{"error","message"}` JSON if it is an error in another
/// shape.
async fn error_as_json(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MESSAGE_LIMIT).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_lowercase()
    } else {
        text
    };
    let mut json = ApiError::new(status, code(status), message).into_response();
    // What the answer said besides its body (Allow, Retry-After, …) stays.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    json
}

/// The layer: `as_json`.
pub(super) struct Errors;

impl Layer for Errors {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        Box::pin(as_json(req, next))
    }
}

/// The stable `error` code for a status the framework answered with.
fn code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => "timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::{Json, Router, extract::Path, routing::post};
    use http::HeaderMap;
    use tower::ServiceExt;

    use axum::body::Body;

    use super::*;
    use crate::edge::ingress::test_support::{layered, text};

    #[derive(serde::Deserialize)]
    struct Numbered {
        n: u32,
    }

    /// A router whose extractors reject on their own, behind the layer.
    fn app()
    -> impl tower::Service<Request, Response = Response, Error = Infallible, Future = impl Send> + Clone
    {
        let router = Router::new()
            .route(
                "/json",
                post(|Json(b): Json<Numbered>| async move { b.n.to_string() }),
            )
            .route(
                "/path/{name}",
                post(|Path(name): Path<String>| async { name }),
            )
            .route(
                "/grpc",
                post(|| async { (StatusCode::BAD_REQUEST, "a grpc handler's own text") }),
            );
        layered(Errors, router)
    }

    async fn send(req: Request) -> (StatusCode, HeaderMap, String) {
        let r = app().oneshot(req).await.unwrap();
        let (status, headers) = (r.status(), r.headers().clone());
        (status, headers, text(r).await)
    }

    fn request(path: &str, content_type: Option<&str>, body: &'static str) -> Request {
        let mut b = Request::post(path);
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn the_frameworks_rejections_become_the_json_shape() {
        let json = Some("application/json");
        let table = vec![
            (
                request("/json", json, "{not json"),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                request("/json", None, r#"{"n":1}"#),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            ),
            (
                request("/json", Some("text/plain"), r#"{"n":1}"#),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            ),
            (
                request("/json", json, r#"{"n":"one"}"#),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                request("/json", json, "{}"),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                request("/path/%FF", None, ""),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
        ];
        for (req, status, code) in table {
            let what = format!(
                "{} {:?}",
                req.uri(),
                req.headers().get(header::CONTENT_TYPE)
            );
            let (got, headers, body) = send(req).await;
            assert_eq!(got, status, "{what}: {body}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{what}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["error"], code, "{what}: {body}");
            assert!(
                !json["message"].as_str().unwrap().is_empty(),
                "{what}: {body}"
            );
        }
    }

    #[tokio::test]
    async fn json_errors_successes_and_grpc_pass_unchanged() {
        let (status, _, body) =
            send(request("/json", Some("application/json"), r#"{"n":7}"#)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "7"));
        let (status, _, body) = send(request("/grpc", Some("application/grpc"), "")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::BAD_REQUEST, "a grpc handler's own text")
        );
        let already = layered(
            Errors,
            tower::service_fn(|_req: Request| async {
                Ok::<_, Infallible>(ApiError::bad_request("said as JSON").into_response())
            }),
        );
        let r = already.oneshot(request("/x", None, "")).await.unwrap();
        assert_eq!(
            text(r).await,
            r#"{"error":"bad_request","message":"said as JSON"}"#
        );
    }
}
