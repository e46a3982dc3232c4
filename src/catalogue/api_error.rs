//! Error responses of the public API: JSON for HTTP, a gRPC status for gRPC.
//! Every error says what went wrong; the `error` code is stable for
//! programs, the `message` is for people.

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::StatusCode;

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` (HTTP) or `retry-after` metadata (gRPC).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after_secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.code, "message": self.message })),
        )
            .into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, secs.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"flotilla\""),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Constraint(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            StoreError::OutcomeUnknown(_) => {
                tracing::warn!(error = %e, "a write's outcome is unknown");
                Self::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "outcome_unknown",
                    format!(
                        "{e}. The write may have been applied, or may still be: read before retrying it"
                    ),
                )
            }
            StoreError::Storage(_) | StoreError::Unavailable(_) | StoreError::Closed => {
                // A cluster without a leader or a member cut off is
                // transient and announced where it is learned; a storage
                // failure or a closed store needs an operator.
                if matches!(e, StoreError::Unavailable(_)) {
                    tracing::warn!(error = %e, "store unavailable");
                } else {
                    tracing::error!(error = %e, "store unavailable");
                }
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    e.to_string(),
                )
            }
            StoreError::Budget { .. } => {
                tracing::warn!(error = %e, "a service's statement went over its budget");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "budget_exceeded",
                    e.to_string(),
                )
            }
            StoreError::Denied { .. } | StoreError::Invalid(_) => {
                tracing::error!(error = %e, "a service sent a statement the store refused");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let mut status = match e.status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                tonic::Status::invalid_argument(e.message)
            }
            StatusCode::UNAUTHORIZED => tonic::Status::unauthenticated(e.message),
            StatusCode::FORBIDDEN => tonic::Status::permission_denied(e.message),
            StatusCode::NOT_FOUND => tonic::Status::not_found(e.message),
            StatusCode::CONFLICT => tonic::Status::already_exists(e.message),
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            | StatusCode::URI_TOO_LONG => tonic::Status::resource_exhausted(e.message),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => {
                tonic::Status::unavailable(e.message)
            }
            StatusCode::GATEWAY_TIMEOUT => tonic::Status::deadline_exceeded(e.message),
            _ => tonic::Status::internal(e.message),
        };
        if let Some(secs) = e.retry_after {
            status.metadata_mut().insert("retry-after", secs.into());
        }
        status
    }
}

/// Whether a request is gRPC (its content type), so that an error is
/// answered as a gRPC status rather than as JSON.
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The error response for `error`, as JSON or as a gRPC status.
pub fn error_response(error: ApiError, grpc: bool) -> Response {
    if grpc {
        tonic::Status::from(error).into_http::<axum::body::Body>()
    } else {
        error.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_whose_outcome_is_unknown_is_a_504_never_a_503() {
        let e = ApiError::from(StoreError::OutcomeUnknown("no answer".into()));
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.code, "outcome_unknown");
        assert!(e.message.contains("read before retrying"), "{}", e.message);
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::DeadlineExceeded);
        let e = ApiError::from(StoreError::Unavailable("no leader".into()));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
    }
}
