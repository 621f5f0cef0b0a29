//! The upstream's error shape, for errors Sluice produces itself.
//!
//! Clients (and the SDKs' error classes) parse these bodies exactly like upstream ones, so the
//! shape and key order follow the upstream's documented example.

use bytes::Bytes;
use serde::Serialize;

#[derive(Serialize)]
struct Detail<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: Detail<'a>,
    request_id: Option<&'a str>,
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: Detail<'a>,
}

/// Serialising borrowed strings into a `Vec` cannot fail; this text stands in should serde_json
/// ever report otherwise, so callers always get a well-formed error.
const FALLBACK: &[u8] =
    br#"{"type":"error","error":{"type":"api_error","message":"internal error"}}"#;

fn to_json<T: Serialize>(value: &T, prefix: &[u8], suffix: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(prefix);
    if serde_json::to_writer(&mut out, value).is_err() {
        out.truncate(prefix.len());
        out.extend_from_slice(FALLBACK);
    }
    out.extend_from_slice(suffix);
    Bytes::from(out)
}

/// `{"type":"error","error":{"type":KIND,"message":MSG},"request_id":ID}` with correct escaping.
///
/// `request_id` is `null` when `None`, as in the upstream's own `413` body.
pub fn error_body(kind: &str, message: &str, request_id: Option<&str>) -> Bytes {
    to_json(
        &Body {
            kind: "error",
            error: Detail { kind, message },
            request_id,
        },
        b"",
        b"",
    )
}

/// `error.type` of an error body in the upstream's shape (`None` if the body is not one).
pub fn error_type(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Outer<'a> {
        #[serde(borrow)]
        error: crate::sse::ErrorDetail<'a>,
    }
    serde_json::from_slice::<Outer<'_>>(body)
        .ok()
        .and_then(|o| o.error.kind.as_str().map(str::to_owned))
}

/// The same error as one SSE event (`event: error\ndata: {...}\n\n`), for injecting into a stream.
///
/// The data line is compact JSON, whose escaping leaves no CR or LF in it, so the event cannot be
/// split or cut short by a message that contains line breaks. There is no `request_id`: the
/// upstream's in-stream errors carry none.
pub fn sse_error_event(kind: &str, message: &str) -> Bytes {
    to_json(
        &Event {
            kind: "error",
            error: Detail { kind, message },
        },
        b"event: error\ndata: ",
        b"\n\n",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::SseTap;

    #[test]
    fn body_has_the_upstream_shape_and_key_order() {
        let b = error_body("rate_limit_error", "slow down", Some("req_1"));
        assert_eq!(
            &b[..],
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"},"request_id":"req_1"}"#
        );
        let b = error_body("request_too_large", "too big", None);
        assert_eq!(
            &b[..],
            br#"{"type":"error","error":{"type":"request_too_large","message":"too big"},"request_id":null}"#
        );
    }

    #[test]
    fn error_type_is_read_from_the_wire_shape() {
        let b = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(error_type(b).as_deref(), Some("overloaded_error"));
        assert_eq!(error_type(b"<html>"), None);
        assert_eq!(error_type(br#"{"error":{"type":7}}"#), None);
    }

    #[test]
    fn body_escapes_hostile_text() {
        let msg = "quote \" backslash \\ newline \n cr \r tab \t nul \u{0} ctl \u{1f} emoji \u{1F600} ls \u{2028}";
        let b = error_body("invalid_request_error", msg, Some("id\"x"));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["message"], msg);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["request_id"], "id\"x");
        assert!(!b.contains(&b'\n') && !b.contains(&b'\r'));
    }

    #[test]
    fn sse_event_is_one_parseable_event() {
        let e = sse_error_event("overloaded_error", "line one\nline two\r\n: not a comment");
        assert!(e.starts_with(b"event: error\ndata: {"));
        assert!(e.ends_with(b"}\n\n"));
        assert_eq!(e.iter().filter(|&&c| c == b'\n').count(), 3);
        assert!(!e.contains(&b'\r'));
        let data = &e[b"event: error\ndata: ".len()..e.len() - 2];
        let v: serde_json::Value = serde_json::from_slice(data).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert!(v.get("request_id").is_none());

        let mut tap = SseTap::new();
        tap.feed(&e);
        let err = tap.summary().error.clone().unwrap();
        assert_eq!(err.error_type, "overloaded_error");
        assert_eq!(err.message, "line one\nline two\r\n: not a comment");
        assert_eq!(tap.summary().events, 1);
    }
}
