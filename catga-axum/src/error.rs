//! A Catga error as an HTTP response.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use catga_core::{Error, ErrorKind};

/// A Catga error as an HTTP response.
///
/// | kind (code) | status |
/// |-------------|--------|
/// | code ending in `.not_found` | 404 |
/// | `validation`, `codec`, `handler` with a code (a refusal) | 422 |
/// | `conflict`, `in_progress` | 409 |
/// | `timeout` | 504 |
/// | `overloaded` | 503 with `Retry-After: 1` |
/// | `transport`, `store`, `no_handler`, `cancelled` | 503 |
/// | anything else | 500 |
///
/// The body is `{"error": kind, "code": code or null, "message": text}`.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    /// The HTTP status of `e` (the table above).
    pub fn status_of(e: &Error) -> StatusCode {
        if e.code().is_some_and(|c| c.ends_with(".not_found")) {
            return StatusCode::NOT_FOUND;
        }
        match e.kind() {
            ErrorKind::Validation | ErrorKind::Codec => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Handler if e.code().is_some() => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Conflict | ErrorKind::InProgress => StatusCode::CONFLICT,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Overloaded
            | ErrorKind::Transport
            | ErrorKind::Store
            | ErrorKind::NoHandler
            | ErrorKind::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = serde_json::json!({
            "error": e.kind().as_str(),
            "code": e.code(),
            "message": e.message(),
        });
        let mut response = (ApiError::status_of(&e), Json(body)).into_response();
        if e.kind() == ErrorKind::Overloaded {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
