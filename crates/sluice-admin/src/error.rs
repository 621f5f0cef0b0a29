//! The admin API's errors: one `thiserror` enum, mapped once, here, to the wire shape every
//! admin error has: `{"error":{"type":"…","message":"…"}}` with the matching status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sluice_store::StoreError;

/// Why an admin request (or a CLI change) failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No token, or not one of `[[admin.tokens]]` (401 `authentication_error`).
    #[error("{0}")]
    Unauthenticated(String),
    /// A read-only token asked for a change (403 `permission_error`).
    #[error("{0}")]
    Forbidden(String),
    /// No such tenant, key or route (404 `not_found_error`).
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the current state (409 `conflict_error`).
    #[error("{0}")]
    Conflict(String),
    /// Well-formed, but the result would be an invalid configuration or the fields are wrong
    /// (422 `validation_error`); nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// Malformed request: not JSON, bad query parameter (400 `invalid_request_error`).
    #[error("{0}")]
    BadRequest(String),
    /// The state database failed (500 `api_error`).
    #[error("state database: {0}")]
    Store(StoreError),
    /// Anything else that is our fault (500 `api_error`).
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => AdminError::NotFound(format!("{what} not found")),
            e => AdminError::Store(e),
        }
    }
}

impl AdminError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Store(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error.type` string.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "authentication_error",
            Self::Forbidden(_) => "permission_error",
            Self::NotFound(_) => "not_found_error",
            Self::Conflict(_) => "conflict_error",
            Self::Invalid(_) => "validation_error",
            Self::BadRequest(_) => "invalid_request_error",
            Self::Store(_) | Self::Internal(_) => "api_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"type": self.kind(), "message": self.to_string()}})
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Store(_) | Self::Internal(_)) {
            tracing::error!(target: "sluice::admin", error = %self, "admin request failed");
        }
        let mut r = (self.status(), axum::Json(self.body())).into_response();
        if matches!(self, Self::Unauthenticated(_)) {
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"sluice-admin\""),
            );
        }
        r
    }
}

/// Parse a JSON body: malformed JSON is 400, JSON of the wrong shape (unknown or mistyped
/// fields) is 422.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"{}")
            .map_err(|_| AdminError::BadRequest("a JSON object body is required".into()));
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => AdminError::Invalid(e.to_string()),
        _ => AdminError::BadRequest(format!("body is not valid JSON: {e}")),
    })
}
