//! What crosses the gateway in each direction. Client headers go upstream as sent (the
//! `anthropic-version`, `anthropic-beta` and anything unknown included) except the client's own
//! credentials, Sluice's own `x-sluice-*` headers, hop-by-hop headers, and `accept-encoding`
//! (the usage tap must read the reply, so it is requested uncompressed). Upstream headers come
//! back as sent except hop-by-hop ones and the organisation's rate-limit and identity headers,
//! which describe the whole organisation, not the calling tenant.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use sluice_limits::Dimension;
use sluice_limits::limiter::TenantView;
use std::io::Write as _;

/// Request headers never forwarded upstream.
const DROP_REQUEST: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-api-key",
    "authorization",
    "accept-encoding",
];

/// Response headers never returned to the client.
const DROP_RESPONSE: &[&str] = &[
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "anthropic-organization-id",
];

/// Strip `headers` (the client's, taken by value) down to what goes upstream.
pub fn for_upstream(headers: &mut HeaderMap) {
    for name in DROP_REQUEST {
        headers.remove(*name);
    }
    remove_prefixed(headers, "x-sluice-");
}

/// Strip an upstream response's headers down to what the client sees.
pub fn for_client(headers: &mut HeaderMap) {
    for name in DROP_RESPONSE {
        headers.remove(*name);
    }
    remove_prefixed(headers, "anthropic-ratelimit-");
}

/// Header names built once: inserting or reading by `&str` parses and validates the name on
/// every call, which showed in the benchmark's profile.
static RATE_HEADERS: [(Dimension, [HeaderName; 3]); 3] = [
    (
        Dimension::Requests,
        [
            HeaderName::from_static("anthropic-ratelimit-requests-limit"),
            HeaderName::from_static("anthropic-ratelimit-requests-remaining"),
            HeaderName::from_static("anthropic-ratelimit-requests-reset"),
        ],
    ),
    (
        Dimension::InputTokens,
        [
            HeaderName::from_static("anthropic-ratelimit-input-tokens-limit"),
            HeaderName::from_static("anthropic-ratelimit-input-tokens-remaining"),
            HeaderName::from_static("anthropic-ratelimit-input-tokens-reset"),
        ],
    ),
    (
        Dimension::OutputTokens,
        [
            HeaderName::from_static("anthropic-ratelimit-output-tokens-limit"),
            HeaderName::from_static("anthropic-ratelimit-output-tokens-remaining"),
            HeaderName::from_static("anthropic-ratelimit-output-tokens-reset"),
        ],
    ),
];

/// The tenant's own `anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,
/// remaining,reset}` headers, in the upstream's format (reset is RFC 3339, when the bucket is
/// full again). Only limited dimensions get headers.
pub fn rate_limit_headers(h: &mut HeaderMap, view: &TenantView) {
    let now = std::time::SystemTime::now();
    for (d, [limit, remaining, reset]) in &RATE_HEADERS {
        let Some(b) = view.get(*d) else { continue };
        h.insert(limit.clone(), HeaderValue::from(b.limit));
        h.insert(remaining.clone(), HeaderValue::from(b.remaining));
        let at = now + std::time::Duration::from_micros(b.full_in_us);
        let mut buf = [0u8; 32];
        let mut w = std::io::Cursor::new(&mut buf[..]);
        if write!(w, "{}", humantime::format_rfc3339_seconds(at)).is_ok() {
            let n = usize::try_from(w.position()).unwrap_or(0);
            if let Ok(v) = HeaderValue::from_bytes(&buf[..n]) {
                h.insert(reset.clone(), v);
            }
        }
    }
}

/// What the upstream says is left of the organisation's buckets, read before those headers
/// are stripped: `(dimension, remaining)`.
pub fn upstream_remaining(h: &HeaderMap) -> impl Iterator<Item = (Dimension, u64)> + '_ {
    RATE_HEADERS.iter().filter_map(|(d, [_, remaining, _])| {
        let v = h
            .get(remaining)?
            .to_str()
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()?;
        Some((*d, v))
    })
}

fn remove_prefixed(headers: &mut HeaderMap, prefix: &str) {
    // Usually nothing matches; only allocate when something does.
    if headers.keys().any(|k| k.as_str().starts_with(prefix)) {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with(prefix))
            .cloned()
            .collect();
        for k in doomed {
            headers.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn client_credentials_never_go_upstream() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-api-key", "sk-sluice-x"),
            ("authorization", "Bearer sk-sluice-x"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "prompt-caching-2024-07-31"),
            ("x-stainless-lang", "python"),
            ("x-sluice-feature", "chat"),
            ("accept-encoding", "gzip"),
            ("connection", "keep-alive"),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        for_upstream(&mut h);
        assert!(h.get("x-api-key").is_none());
        assert!(h.get("authorization").is_none());
        assert!(h.get("x-sluice-feature").is_none());
        assert!(h.get("accept-encoding").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h["anthropic-version"], "2023-06-01");
        assert_eq!(h["anthropic-beta"], "prompt-caching-2024-07-31");
        assert_eq!(h["x-stainless-lang"], "python");
    }

    #[test]
    fn organisation_headers_never_reach_tenants() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("request-id", "req_1"),
            ("anthropic-organization-id", "org"),
            ("anthropic-ratelimit-requests-limit", "4000"),
            ("anthropic-ratelimit-input-tokens-remaining", "1"),
            ("retry-after", "3"),
            ("content-type", "application/json"),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        for_client(&mut h);
        assert_eq!(h.len(), 3);
        assert_eq!(h["request-id"], "req_1");
        assert_eq!(h["retry-after"], "3");
    }
}
