//! Bedrock's errors in the Anthropic API's terms: the `x-amzn-ErrorType` of an error reply, or
//! the `:exception-type` of an exception frame mid-stream, become an Anthropic `error.type` and
//! the status an Anthropic client expects for it.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

/// An Anthropic error class and the status a client should see with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapped {
    pub(crate) kind: &'static str,
    pub(crate) status: u16,
}

const fn m(kind: &'static str, status: u16) -> Mapped {
    Mapped { kind, status }
}

const INVALID: Mapped = m("invalid_request_error", 400);
const AUTHENTICATION: Mapped = m("authentication_error", 401);
const PERMISSION: Mapped = m("permission_error", 403);
const NOT_FOUND: Mapped = m("not_found_error", 404);
const RATE_LIMIT: Mapped = m("rate_limit_error", 429);
const API: Mapped = m("api_error", 500);
/// The Anthropic API reports overload as 529; clients and SDKs retry on it.
const OVERLOADED: Mapped = m("overloaded_error", 529);

/// Bedrock's error shapes (Smithy names). The stream's `:exception-type` spells them in lower
/// camel case (`throttlingException`), hence the case-insensitive lookup.
const BY_TYPE: [(&str, Mapped); 12] = [
    ("ValidationException", INVALID),
    ("AccessDeniedException", PERMISSION),
    ("UnrecognizedClientException", AUTHENTICATION),
    ("ResourceNotFoundException", NOT_FOUND),
    ("ThrottlingException", RATE_LIMIT),
    ("ServiceQuotaExceededException", RATE_LIMIT),
    // A timeout keeps its 408: clients retry a 408, and it is not the service failing.
    ("ModelTimeoutException", m("api_error", 408)),
    // 424 means nothing to an Anthropic client; a 500 is retried like the model failure it is.
    ("ModelErrorException", API),
    ("ModelStreamErrorException", API),
    ("InternalServerException", API),
    ("ServiceUnavailableException", OVERLOADED),
    ("ModelNotReadyException", OVERLOADED),
];

/// The mapping of a Bedrock error type name, if it is a known one.
pub(crate) fn by_type(name: &str) -> Option<Mapped> {
    BY_TYPE
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, mapped)| *mapped)
}

/// The mapping inferred from the status alone (no known error type).
pub(crate) fn by_status(status: u16) -> Mapped {
    match status {
        400 => INVALID,
        401 => AUTHENTICATION,
        403 => PERMISSION,
        404 => NOT_FOUND,
        408 => m("api_error", 408),
        413 => m("request_too_large", 413),
        429 => RATE_LIMIT,
        424 | 500 => API,
        503 | 529 => OVERLOADED,
        504 => m("timeout_error", 504),
        402..=499 => m("invalid_request_error", status),
        501..=599 => m("api_error", status),
        // Not an error status at all: the upstream broke its contract, a gateway error.
        _ => m("api_error", 502),
    }
}

/// The bare shape name of an error type: `ThrottlingException:http://internal…` and
/// `com.amazon.coral.service#ThrottlingException` both give `ThrottlingException`.
pub(crate) fn shape_name(raw: &str) -> &str {
    let raw = raw.split(':').next().unwrap_or(raw);
    raw.rsplit('#').next().unwrap_or(raw).trim()
}

/// The fields of Bedrock's JSON error body (`message`, sometimes `Message`, and `__type`).
#[derive(Deserialize, Default)]
struct ErrorFields {
    #[serde(default, alias = "Message")]
    message: Option<String>,
    #[serde(default, rename = "__type")]
    kind: Option<String>,
}

/// `{"type":"error","error":{"type":kind,"message":message}}`.
pub(crate) fn error_json(kind: &str, message: &str) -> Vec<u8> {
    let v = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    // Serialising a `Value` built from strings cannot fail.
    serde_json::to_vec(&v).unwrap_or_default()
}

/// A Bedrock error reply (status, headers incl. `x-amzn-ErrorType`, JSON `{"message": ...}`) as
/// the Anthropic error body `{"type":"error","error":{"type":..,"message":..}}`. Returns the
/// status the client should see and the body.
///
/// The error type comes from the `x-amzn-ErrorType` header, else the body's `__type`, else the
/// status. Overload (`ServiceUnavailableException`, 503) becomes a 529 `overloaded_error`, as the
/// Anthropic API reports it. `retry-after` and other headers are the caller's business.
pub fn anthropic_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, Bytes) {
    let fields: ErrorFields = serde_json::from_slice(body).unwrap_or_default();
    let type_name = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .or(fields.kind.as_deref())
        .map(shape_name)
        .filter(|n| !n.is_empty());
    let mapped = type_name
        .and_then(by_type)
        .unwrap_or_else(|| by_status(status.as_u16()));
    let message = match (&fields.message, type_name) {
        (Some(msg), _) if !msg.is_empty() => msg.clone(),
        (_, Some(name)) => format!("Bedrock returned {name} (HTTP {})", status.as_u16()),
        _ => format!("Bedrock returned HTTP {}", status.as_u16()),
    };
    let out_status = StatusCode::from_u16(mapped.status).unwrap_or(StatusCode::BAD_GATEWAY);
    (out_status, Bytes::from(error_json(mapped.kind, &message)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn call(status: u16, error_type: Option<&str>, body: &str) -> (u16, serde_json::Value) {
        let mut h = HeaderMap::new();
        if let Some(t) = error_type {
            h.insert("x-amzn-ErrorType", t.parse().unwrap());
        }
        let (s, b) = anthropic_error(StatusCode::from_u16(status).unwrap(), &h, body.as_bytes());
        (s.as_u16(), serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn maps_every_documented_error_type() {
        let table = [
            (400, "ValidationException", "invalid_request_error", 400),
            (403, "AccessDeniedException", "permission_error", 403),
            (
                403,
                "UnrecognizedClientException",
                "authentication_error",
                401,
            ),
            (404, "ResourceNotFoundException", "not_found_error", 404),
            (429, "ThrottlingException", "rate_limit_error", 429),
            (
                400,
                "ServiceQuotaExceededException",
                "rate_limit_error",
                429,
            ),
            (408, "ModelTimeoutException", "api_error", 408),
            (424, "ModelErrorException", "api_error", 500),
            (500, "InternalServerException", "api_error", 500),
            (503, "ServiceUnavailableException", "overloaded_error", 529),
            (429, "ModelNotReadyException", "overloaded_error", 529),
        ];
        for (status, name, kind, out) in table {
            let (s, v) = call(status, Some(name), r#"{"message":"why"}"#);
            assert_eq!(
                (s, v["error"]["type"].as_str().unwrap()),
                (out, kind),
                "{name}"
            );
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["message"], "why");
        }
    }

    #[test]
    fn type_comes_from_header_suffix_body_or_status() {
        let (s, v) = call(
            400,
            Some(
                "ThrottlingException:http://internal.amazon.com/coral/com.amazon.coral.availability/",
            ),
            r#"{"message":"slow down"}"#,
        );
        assert_eq!(
            (s, v["error"]["type"].as_str().unwrap()),
            (429, "rate_limit_error")
        );
        let (s, v) = call(
            500,
            None,
            r#"{"__type":"com.amazon.bedrock#ServiceUnavailableException","Message":"busy"}"#,
        );
        assert_eq!(
            (s, v["error"]["type"].as_str().unwrap()),
            (529, "overloaded_error")
        );
        assert_eq!(v["error"]["message"], "busy");
        // Unknown type: the status decides.
        let (s, v) = call(
            403,
            Some("InvalidSignatureException"),
            r#"{"message":"sig"}"#,
        );
        assert_eq!(
            (s, v["error"]["type"].as_str().unwrap()),
            (403, "permission_error")
        );
        for (status, kind, out) in [
            (400, "invalid_request_error", 400),
            (401, "authentication_error", 401),
            (404, "not_found_error", 404),
            (408, "api_error", 408),
            (424, "api_error", 500),
            (429, "rate_limit_error", 429),
            (503, "overloaded_error", 529),
            (502, "api_error", 502),
            (418, "invalid_request_error", 418),
        ] {
            let (s, v) = call(status, None, "<html>not json</html>");
            assert_eq!(
                (s, v["error"]["type"].as_str().unwrap()),
                (out, kind),
                "{status}"
            );
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(&status.to_string())
            );
        }
    }

    #[test]
    fn messages_are_escaped() {
        let (_, v) = call(
            400,
            Some("ValidationException"),
            r#"{"message":"a \"b\"\n"}"#,
        );
        assert_eq!(v["error"]["message"], "a \"b\"\n");
    }

    #[test]
    fn stream_names_match_case_insensitively() {
        assert_eq!(by_type("throttlingException"), Some(RATE_LIMIT));
        assert_eq!(by_type("modelStreamErrorException"), Some(API));
        assert_eq!(by_type("serviceUnavailableException"), Some(OVERLOADED));
        assert_eq!(by_type("nope"), None);
    }
}
