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

/// Response headers never returned to the client: hop-by-hop ones, and the organisation's
/// (its id, and the rate-limit headers the API sends on every reply; the per-dimension ones are
/// in [`RATE_HEADERS`]). Built once, because removing by `&str` parses the name each time, on
/// every reply.
static DROP_RESPONSE: [HeaderName; 12] = [
    HeaderName::from_static("content-length"),
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("upgrade"),
    HeaderName::from_static("anthropic-organization-id"),
    HeaderName::from_static("anthropic-ratelimit-tokens-limit"),
    HeaderName::from_static("anthropic-ratelimit-tokens-remaining"),
    HeaderName::from_static("anthropic-ratelimit-tokens-reset"),
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
    strip(headers, None);
}

/// [`for_client`], then the tenant's own rate-limit headers. The organisation's headers of a
/// dimension the tenant is limited in are not removed but overwritten in place: on every
/// reply, nine removals and nine insertions that grow the map become nine replacements.
pub fn for_client_with_limits(headers: &mut HeaderMap, view: &TenantView) {
    strip(headers, Some(view));
    rate_limit_headers(headers, view);
}

fn strip(headers: &mut HeaderMap, keep_for: Option<&TenantView>) {
    for name in &DROP_RESPONSE {
        headers.remove(name);
    }
    let ours = |d: Dimension| keep_for.is_some_and(|v| v.get(d).is_some());
    for (d, names) in &RATE_HEADERS {
        if !ours(*d) {
            for name in names {
                headers.remove(name);
            }
        }
    }
    // Any other organisation rate-limit header (a new dimension): rare, so only a scan, which
    // spares the names about to be overwritten (the known names of dimensions that are not
    // ours are gone by now, so "known" is enough, and a `match` on the name is far cheaper
    // than comparing it with each of the nine).
    let stray = |k: &HeaderName| {
        k.as_str()
            .strip_prefix("anthropic-ratelimit-")
            .is_some_and(|rest| rate_index(rest).is_none())
    };
    if headers.keys().any(stray) {
        let doomed: Vec<HeaderName> = headers.keys().filter(|k| stray(k)).cloned().collect();
        for k in doomed {
            headers.remove(k);
        }
    }
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
///
/// The Anthropic API sends all nine names on every reply, and [`for_client_with_limits`] left
/// the ones of the tenant's dimensions in place, so one pass over the reply's headers
/// overwrites them where they are: no hashing and probing for each of the nine names (which
/// showed in the profile of every limited call). Any the upstream did not send (another
/// provider, a refusal built here) are inserted after.
pub fn rate_limit_headers(h: &mut HeaderMap, view: &TenantView) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut values: [Option<HeaderValue>; 9] = Default::default();
    CACHE.with_borrow_mut(|cache| {
        for (i, (d, _)) in RATE_HEADERS.iter().enumerate() {
            let Some(b) = view.get(*d) else { continue };
            values[3 * i] = Some(cache.limit(i, b.limit));
            // `HeaderValue::from(u64)` formats through a growable buffer; a stack buffer and
            // one copy cost less than half as much.
            let mut digits = itoa::Buffer::new();
            values[3 * i + 1] = Some(
                HeaderValue::from_str(digits.format(b.remaining))
                    .unwrap_or_else(|_| HeaderValue::from(b.remaining)),
            );
            let at = now + std::time::Duration::from_micros(b.full_in_us);
            values[3 * i + 2] = cache.reset(at.as_secs());
        }
    });
    let mut seen = 0u16;
    let mut repeated = 0u16;
    for (name, value) in h.iter_mut() {
        let Some(k) = name
            .as_str()
            .strip_prefix("anthropic-ratelimit-")
            .and_then(rate_index)
        else {
            continue;
        };
        if seen & (1 << k) != 0 {
            repeated |= 1 << k;
        } else if let Some(v) = values[k].take() {
            *value = v;
            seen |= 1 << k;
        }
    }
    for (k, v) in values.into_iter().enumerate() {
        if let Some(v) = v {
            h.insert(rate_name(k).clone(), v);
        } else if repeated & (1 << k) != 0 {
            // The upstream sent this name more than once: the later values are still the
            // organisation's. Keep only ours (the first).
            if let Some(ours) = h.get(rate_name(k)).cloned() {
                h.insert(rate_name(k).clone(), ours);
            }
        }
    }
}

/// The index (`3 * dimension + {limit: 0, remaining: 1, reset: 2}`, the order of
/// [`RATE_HEADERS`]) of the header `anthropic-ratelimit-<suffix>`.
fn rate_index(suffix: &str) -> Option<usize> {
    Some(match suffix {
        "requests-limit" => 0,
        "requests-remaining" => 1,
        "requests-reset" => 2,
        "input-tokens-limit" => 3,
        "input-tokens-remaining" => 4,
        "input-tokens-reset" => 5,
        "output-tokens-limit" => 6,
        "output-tokens-remaining" => 7,
        "output-tokens-reset" => 8,
        _ => return None,
    })
}

/// The name at [`rate_index`] `k` (below 9).
fn rate_name(k: usize) -> &'static HeaderName {
    &RATE_HEADERS[k / 3].1[k % 3]
}

// Every reply carries these headers, so their values are kept per thread: a tenant's limit
// changes only with its config, and a reset time is a whole second that most replies within
// that second share. A reset hit is a reference-count increment instead of an allocation and
// an RFC 3339 formatting; a limit hit is a static value, which costs nothing to clone or drop
// (see [`static_limit`]).
/// A formatted value and what it was formatted from.
type Slot = Option<(u64, HeaderValue)>;

/// The values kept per thread (one thread-local access per reply).
struct HeaderCache {
    /// Per dimension, the last limit formatted.
    limits: [Slot; 3],
    /// Four recent reset seconds, replaced round robin (`next`).
    resets: [Slot; 4],
    next: usize,
}

thread_local! {
    static CACHE: std::cell::RefCell<HeaderCache> = const {
        std::cell::RefCell::new(HeaderCache {
            limits: [None, None, None],
            resets: [None, None, None, None],
            next: 0,
        })
    };
}

impl HeaderCache {
    fn limit(&mut self, dimension: usize, limit: u64) -> HeaderValue {
        match self.limits.get_mut(dimension) {
            Some(Some((n, v))) if *n == limit => v.clone(),
            Some(slot) => {
                let v = static_limit(limit);
                *slot = Some((limit, v.clone()));
                v
            }
            None => static_limit(limit),
        }
    }

    fn reset(&mut self, unix_secs: u64) -> Option<HeaderValue> {
        if let Some((_, v)) = self.resets.iter().flatten().find(|(s, _)| *s == unix_secs) {
            return Some(v.clone());
        }
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_secs);
        let mut buf = [0u8; 32];
        let mut w = std::io::Cursor::new(&mut buf[..]);
        write!(w, "{}", humantime::format_rfc3339_seconds(at)).ok()?;
        let n = usize::try_from(w.position()).unwrap_or(0);
        let v = HeaderValue::from_bytes(&buf[..n]).ok()?;
        if let Some(slot) = self.resets.get_mut(self.next % 4) {
            *slot = Some((unix_secs, v.clone()));
        }
        self.next = self.next.wrapping_add(1);
        Some(v)
    }
}

/// Most distinct limit values ever given a static header value.
const STATIC_LIMITS_CAP: usize = 4096;

/// `limit` as a header value backed by a string formatted once for the life of the process.
/// A shared value's reference count is two atomic operations per header per reply (an
/// increment here, a decrement when hyper drops the written headers), which showed in the
/// profile of a limited tenant's calls; a static one has none. Limits come from config, so
/// the set of numbers is small; past [`STATIC_LIMITS_CAP`] distinct ones (a config reloaded
/// with new numbers thousands of times) values are formatted per call instead of kept.
fn static_limit(limit: u64) -> HeaderValue {
    static INTERNED: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<u64, &'static str>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut m = INTERNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = match m.get(&limit) {
        Some(s) => *s,
        None if m.len() < STATIC_LIMITS_CAP => {
            let s: &'static str = Box::leak(limit.to_string().into_boxed_str());
            m.insert(limit, s);
            s
        }
        None => return HeaderValue::from(limit),
    };
    HeaderValue::from_static(s)
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
    // Usually nothing matches (the known names are removed by name); only allocate when
    // something does.
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

    #[test]
    fn cached_rate_limit_values_follow_the_view() {
        use sluice_limits::backend::BucketView;
        let view = |limit: u64, remaining: u64, full_in_us: u64| TenantView {
            requests: Some(BucketView {
                limit,
                remaining,
                full_in_us,
            }),
            input_tokens: None,
            output_tokens: None,
        };
        let mut h = HeaderMap::new();
        rate_limit_headers(&mut h, &view(100, 7, 0));
        assert_eq!(h["anthropic-ratelimit-requests-limit"], "100");
        assert_eq!(h["anthropic-ratelimit-requests-remaining"], "7");
        assert!(h.get("anthropic-ratelimit-input-tokens-limit").is_none());
        // Another tenant's limit on the same thread: not the cached one.
        rate_limit_headers(&mut h, &view(250, 3, 0));
        assert_eq!(h["anthropic-ratelimit-requests-limit"], "250");
        // The reset is an RFC 3339 second; one an hour ahead differs from now's.
        let now = h["anthropic-ratelimit-requests-reset"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(now.len(), "2026-11-21T21:00:00Z".len(), "{now}");
        rate_limit_headers(&mut h, &view(250, 3, 3_600_000_000));
        let later = h["anthropic-ratelimit-requests-reset"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(later > now, "{later} vs {now}");
        for _ in 0..10 {
            rate_limit_headers(&mut h, &view(250, 3, 0));
        }
        let again = h["anthropic-ratelimit-requests-reset"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(again >= now && again < later, "{again}");
    }

    #[test]
    fn org_values_are_overwritten_or_removed_never_shown() {
        use sluice_limits::backend::BucketView;
        let mut h = HeaderMap::new();
        for dim in ["requests", "input-tokens", "output-tokens", "tokens"] {
            for (what, v) in [("limit", "4000"), ("remaining", "3999"), ("reset", "x")] {
                let name = format!("anthropic-ratelimit-{dim}-{what}");
                h.insert(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
        }
        h.insert(
            "anthropic-ratelimit-priority-input-tokens-limit",
            "9".parse().unwrap(),
        );
        h.insert("request-id", "req_1".parse().unwrap());
        // The tenant is limited in requests only.
        let view = TenantView {
            requests: Some(BucketView {
                limit: 60,
                remaining: 59,
                full_in_us: 1_000_000,
            }),
            input_tokens: None,
            output_tokens: None,
        };
        for_client_with_limits(&mut h, &view);
        assert_eq!(h["anthropic-ratelimit-requests-limit"], "60");
        assert_eq!(h["anthropic-ratelimit-requests-remaining"], "59");
        assert_ne!(h["anthropic-ratelimit-requests-reset"], "x");
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(left.contains(&"request-id"));
        // Without limits, none at all.
        let mut h2 = HeaderMap::new();
        h2.insert(
            "anthropic-ratelimit-requests-limit",
            "4000".parse().unwrap(),
        );
        for_client(&mut h2);
        assert!(h2.is_empty());
    }

    #[test]
    fn rate_index_names_exactly_the_rate_headers_in_order() {
        for k in 0..9 {
            let suffix = rate_name(k)
                .as_str()
                .strip_prefix("anthropic-ratelimit-")
                .unwrap();
            assert_eq!(rate_index(suffix), Some(k), "{suffix}");
        }
        for other in [
            "tokens-limit",
            "priority-input-tokens-limit",
            "requests",
            "",
        ] {
            assert_eq!(rate_index(other), None, "{other}");
        }
    }

    #[test]
    fn a_repeated_org_header_never_survives_overwriting() {
        use sluice_limits::backend::BucketView;
        let mut h = HeaderMap::new();
        h.append(
            "anthropic-ratelimit-requests-remaining",
            "3999".parse().unwrap(),
        );
        h.append(
            "anthropic-ratelimit-requests-remaining",
            "3998".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-requests-limit",
            "4000".parse().unwrap(),
        );
        let bucket = BucketView {
            limit: 60,
            remaining: 59,
            full_in_us: 0,
        };
        let view = TenantView {
            requests: Some(bucket),
            input_tokens: None,
            output_tokens: None,
        };
        for_client_with_limits(&mut h, &view);
        let rem: Vec<_> = h
            .get_all("anthropic-ratelimit-requests-remaining")
            .iter()
            .collect();
        assert_eq!(rem, ["59"]);
        assert_eq!(h["anthropic-ratelimit-requests-limit"], "60");
        // The reset was not sent by the upstream: inserted.
        assert!(h.get("anthropic-ratelimit-requests-reset").is_some());
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn static_limit_values_read_back_as_the_number() {
        for n in [0, 7, 60, 200_000, u64::MAX] {
            assert_eq!(static_limit(n), n.to_string().as_str());
            // The second time is the interned value, equal to the first.
            assert_eq!(static_limit(n), static_limit(n));
        }
    }
}
