//! Errors the gateway produces itself, each mapped once, here, to the upstream's wire shape and a
//! fitting status. Upstream errors are never translated: they pass through as they came.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use sluice_anthropic::{WireError, error_body};
use sluice_core::ErrorKind;
use sluice_limits::limiter::{RefusalReason, Refused};
use sluice_upstream::UpstreamError;
use std::sync::Arc;

/// Everything Sluice itself can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No credential header.
    #[error(
        "missing API key: send your Sluice key in the x-api-key header or as Authorization: Bearer"
    )]
    MissingKey,
    /// Unknown or revoked key (the two are indistinguishable on purpose).
    #[error("invalid API key")]
    InvalidKey,
    /// The key's expiry has passed.
    #[error("API key expired")]
    ExpiredKey,
    /// The key's tenant is disabled in config.
    #[error("tenant '{0}' is disabled")]
    TenantDisabled(Arc<str>),
    /// The key's tenant is no longer in config.
    #[error("tenant '{0}' is not configured on this gateway")]
    TenantUnknown(Arc<str>),
    /// `x-sluice-feature` is malformed.
    #[error(
        "x-sluice-feature: must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', ':', '/' and '-'"
    )]
    BadFeature,
    /// `x-sluice-prompt-cache` holds something other than `off`.
    #[error(
        "x-sluice-prompt-cache: the only value is \"off\" (opt this call out of automatic prompt caching)"
    )]
    BadPromptCacheHeader,
    /// The query string is malformed (e.g. `limit=abc`).
    #[error("{0}")]
    BadQuery(String),
    /// The body failed the partial parse.
    #[error("{0}")]
    BadRequest(#[from] WireError),
    /// The body is over the configured limit.
    #[error("request body exceeds the gateway's limit of {0} bytes")]
    TooLarge(usize),
    /// The client's body could not be read (it disconnected or sent a broken body).
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    /// The client did not send its whole body within `server.body_read_timeout_ms`.
    #[error(
        "the request body did not arrive within {} ms (server.body_read_timeout_ms); send it faster or in a smaller request",
        .0.as_millis()
    )]
    BodyTimeout(std::time::Duration),
    /// No upstream response.
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    /// Every upstream member is cooling down after a 429 or has its circuit breaker open: the
    /// call fails at once instead of piling up. Carries how long until the soonest is back.
    #[error(
        "all upstream members are unavailable (cooling down after rate limiting, or circuit breaker open after repeated failures); the soonest is expected back in {} ms",
        .0.as_millis()
    )]
    UpstreamUnavailable(std::time::Duration),
    /// The upstream broke off while sending a non-streaming reply.
    #[error("upstream connection lost while sending the reply")]
    UpstreamBody,
    /// No such resource for this tenant.
    #[error("{0}")]
    NotFound(String),
    /// The limiter refused the call (tenant rate, org pool, budget, or an unreachable shared
    /// limiter with `fail_mode = "closed"`).
    #[error("{}", .0.message)]
    Limited(Box<Refused>),
    /// A fault inside the gateway (e.g. the state database failed).
    #[error("gateway internal error: {0}")]
    Internal(String),
    /// The upstream created a batch but its ownership could not be recorded; the batch was
    /// cancelled upstream (best effort), so for the client it was not created.
    #[error(
        "the batch was not created: the gateway could not record its ownership ({0}); it was cancelled upstream, retrying is safe"
    )]
    BatchNotRecorded(String),
}

impl GatewayError {
    /// The wire error kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::MissingKey | Self::InvalidKey | Self::ExpiredKey => ErrorKind::Authentication,
            Self::TenantDisabled(_) | Self::TenantUnknown(_) => ErrorKind::Permission,
            Self::BadFeature
            | Self::BadPromptCacheHeader
            | Self::BadQuery(_)
            | Self::BadRequest(_)
            | Self::BodyRead(_) => ErrorKind::InvalidRequest,
            Self::TooLarge(_) => ErrorKind::RequestTooLarge,
            Self::Upstream(UpstreamError::Timeout(_)) | Self::BodyTimeout(_) => ErrorKind::Timeout,
            Self::Upstream(_) | Self::UpstreamBody | Self::Internal(_) => ErrorKind::Api,
            Self::BatchNotRecorded(_) => ErrorKind::Api,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::UpstreamUnavailable(_) => ErrorKind::Overloaded,
            Self::Limited(r) if r.reason == RefusalReason::Unavailable => ErrorKind::Api,
            Self::Limited(_) => ErrorKind::RateLimit,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            // An unreachable upstream is a bad gateway, not a fault of ours (500).
            Self::Upstream(UpstreamError::Unreachable(_)) | Self::UpstreamBody => {
                StatusCode::BAD_GATEWAY
            }
            Self::Upstream(UpstreamError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            // The client's fault, in time: 408 is what SDKs retry, and `timeout_error` is the
            // upstream's word for a timeout (its own 408s carry it too).
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Limited(r) if r.reason == RefusalReason::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            // 503 rather than overloaded_error's usual 529: it is this gateway that refuses,
            // for a known time, not the upstream that is overloaded.
            Self::UpstreamUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            // Temporary (the state store is busy or away), and nothing was left behind.
            Self::BatchNotRecorded(_) => StatusCode::SERVICE_UNAVAILABLE,
            other => StatusCode::from_u16(other.kind().default_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// The ledger `outcome` of a call that ended with this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Upstream(UpstreamError::Timeout(_)) => "upstream_timeout",
            Self::Upstream(_) => "upstream_unreachable",
            Self::UpstreamBody => "upstream_disconnected",
            Self::BodyTimeout(_) => "client_timeout",
            Self::UpstreamUnavailable(_) => "upstream_unavailable",
            Self::Internal(_) | Self::BatchNotRecorded(_) => "gateway_error",
            Self::Limited(r) => match r.reason {
                RefusalReason::TenantRate => "limited_tenant",
                RefusalReason::OrgPool => "limited_org",
                RefusalReason::Budget => "limited_budget",
                RefusalReason::Unavailable => "limiter_unavailable",
            },
            _ => "rejected",
        }
    }

    /// The response a waiting client gets.
    pub fn to_response(&self, request_id: &str) -> Response {
        let body: Bytes = error_body(self.kind().as_str(), &self.to_string(), Some(request_id));
        let mut resp = (self.status(), body).into_response();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("request-id", v);
        }
        // A key the gateway does not know stays unknown however often it is retried.
        if matches!(
            self.kind(),
            ErrorKind::Authentication | ErrorKind::Permission
        ) {
            h.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if let Self::UpstreamUnavailable(d) = self {
            // Whole seconds, rounded up: retrying earlier only meets the same refusal.
            let secs = d.as_millis().div_ceil(1000).max(1);
            h.insert(
                "retry-after",
                HeaderValue::from(u64::try_from(secs).unwrap_or(u64::MAX)),
            );
        }
        if let Self::Limited(r) = self {
            h.insert("retry-after", HeaderValue::from(r.retry_after_secs));
            h.insert(
                "x-should-retry",
                HeaderValue::from_static(if r.should_retry { "true" } else { "false" }),
            );
            crate::headers::rate_limit_headers(h, &r.view);
        }
        resp
    }
}
