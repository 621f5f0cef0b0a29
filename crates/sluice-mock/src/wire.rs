//! Small writers for the upstream's wire shapes. The hot path writes JSON by hand into pre-sized
//! buffers instead of going through `serde_json::Value`, because the mock must never be the
//! bottleneck of a benchmark.

use std::fmt::Write as _;

use sluice_core::{Clock, ErrorKind, SystemClock};
use time::{OffsetDateTime, PrimitiveDateTime};

/// Appends `s` as a JSON string literal (quotes included).
pub(crate) fn push_json_str(buf: &mut String, s: &str) {
    buf.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        buf.push_str(&s[start..i]);
        if escaped.is_empty() {
            let _ = write!(buf, "\\u{b:04x}");
        } else {
            buf.push_str(escaped);
        }
        start = i + 1;
    }
    buf.push_str(&s[start..]);
    buf.push('"');
}

/// Appends a decimal number.
pub(crate) fn push_u64(buf: &mut String, n: u64) {
    let _ = write!(buf, "{n}");
}

/// Seconds since the Unix epoch, from the real clock.
pub(crate) fn unix_now() -> i64 {
    SystemClock.unix_ms().div_euclid(1000)
}

/// Formats Unix seconds as RFC 3339 UTC (`2026-11-21T16:05:01Z`).
pub(crate) fn rfc3339(unix_secs: i64) -> String {
    // Past the years `time` holds (±9999), which no clock reads, the nearest it holds.
    let t = OffsetDateTime::from_unix_timestamp(unix_secs).unwrap_or_else(|_| {
        if unix_secs < 0 {
            PrimitiveDateTime::MIN
        } else {
            PrimitiveDateTime::MAX
        }
        .assume_utc()
    });
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The upstream error body: `{"type":"error","error":{"type":…,"message":…},"request_id":…}`.
pub(crate) fn error_body(kind: &str, message: &str, request_id: &str) -> String {
    let mut buf = String::with_capacity(96 + message.len());
    buf.push_str(r#"{"type":"error","error":{"type":"#);
    push_json_str(&mut buf, kind);
    buf.push_str(r#","message":"#);
    push_json_str(&mut buf, message);
    buf.push_str(r#"},"request_id":"#);
    push_json_str(&mut buf, request_id);
    buf.push('}');
    buf
}

/// An error reply in the upstream's shape, before the request id is known to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            status: kind.default_status(),
            kind: kind.as_str(),
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
}

/// The `error.type` and a message in the upstream's wording for an HTTP status.
pub(crate) fn error_for_status(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => (
            "invalid_request_error",
            "Invalid request (injected by x-mock-status)",
        ),
        401 => ("authentication_error", "invalid x-api-key"),
        402 => (
            "billing_error",
            "Your credit balance is too low to access the Anthropic API.",
        ),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => ("not_found_error", "Not found (injected by x-mock-status)"),
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => (
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 30,000 input tokens per minute.",
        ),
        504 => ("timeout_error", "Request timed out"),
        503 | 529 => ("overloaded_error", "Overloaded"),
        500..=599 => ("api_error", "Internal server error"),
        _ => (
            "invalid_request_error",
            "Invalid request (injected by x-mock-status)",
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_277_101), "2026-11-21T16:05:01Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        // A year's end, a leap day's eve and morrow, and before 1970.
        assert_eq!(rfc3339(946_684_799), "1999-12-31T23:59:59Z");
        assert_eq!(rfc3339(1_709_164_799), "2024-02-28T23:59:59Z");
        assert_eq!(rfc3339(1_709_164_800), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_200), "2024-03-01T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(-86_400 * 31), "1969-12-01T00:00:00Z");
    }

    #[test]
    fn escapes_json_strings() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
        let v: String = serde_json::from_str(&s).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
    }
}
