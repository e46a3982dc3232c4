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
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
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
        (
            self.status,
            Json(serde_json::json!({ "error": self.code, "message": self.message })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Constraint(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            StoreError::Storage(_) | StoreError::Closed => {
                tracing::error!(error = %e, "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
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

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        let api = ApiError::from(e);
        match api.status {
            StatusCode::CONFLICT => tonic::Status::aborted(api.message),
            StatusCode::SERVICE_UNAVAILABLE => tonic::Status::unavailable(api.message),
            _ => tonic::Status::internal(api.message),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        match e.status {
            StatusCode::BAD_REQUEST => tonic::Status::invalid_argument(e.message),
            StatusCode::NOT_FOUND => tonic::Status::not_found(e.message),
            StatusCode::CONFLICT => tonic::Status::aborted(e.message),
            StatusCode::SERVICE_UNAVAILABLE => tonic::Status::unavailable(e.message),
            _ => tonic::Status::internal(e.message),
        }
    }
}
