//! The error kinds of the upstream's wire shape (`{"type":"error","error":{"type":…}}`). Every
//! error Sluice produces itself is one of these, so SDKs map it to their own exception classes.

/// An upstream error type, with the HTTP status Sluice uses when it produces one itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 400: the request is malformed.
    InvalidRequest,
    /// 401: missing, unknown, revoked or expired key.
    Authentication,
    /// 403: the key is valid but may not do this (e.g. the tenant is disabled).
    Permission,
    /// 404: no such resource (or one owned by another tenant).
    NotFound,
    /// 413: the body is over the configured limit.
    RequestTooLarge,
    /// 429: a rate limit or budget refused the call.
    RateLimit,
    /// 500/502: something broke (upstream unreachable, gateway fault).
    Api,
    /// 504: the upstream did not answer in time.
    Timeout,
    /// 529/503: the upstream (or every member of a pool) is overloaded.
    Overloaded,
}

impl ErrorKind {
    /// The `error.type` string of the wire shape.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request_error",
            Self::Authentication => "authentication_error",
            Self::Permission => "permission_error",
            Self::NotFound => "not_found_error",
            Self::RequestTooLarge => "request_too_large",
            Self::RateLimit => "rate_limit_error",
            Self::Api => "api_error",
            Self::Timeout => "timeout_error",
            Self::Overloaded => "overloaded_error",
        }
    }

    /// The status the upstream uses for this kind. Callers may pick another fitting status
    /// (e.g. 502 for an unreachable upstream) when the wire kind alone is ambiguous.
    pub const fn default_status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Authentication => 401,
            Self::Permission => 403,
            Self::NotFound => 404,
            Self::RequestTooLarge => 413,
            Self::RateLimit => 429,
            Self::Api => 500,
            Self::Timeout => 504,
            Self::Overloaded => 529,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
