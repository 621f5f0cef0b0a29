//! The per-tenant response cache: a Messages call identical to one answered a moment ago is
//! answered from the gateway, without calling the upstream.
//!
//! - **Key**: SHA-256 over the tenant (never shared), the endpoint, the `anthropic-version` and
//!   `anthropic-beta` headers and the body's canonical form
//!   ([`sluice_anthropic::canonical_json`]: member order and whitespace do not matter; `stream`
//!   is in the body, so stream and JSON replies are kept apart). No credential goes into a key
//!   or an entry.
//! - **Per call**: `x-sluice-cache: off` or `cache-control: no-store` bypass the cache (no
//!   lookup, no store); `x-sluice-cache: refresh` or `cache-control: no-cache` skip the lookup
//!   and store the new reply.
//! - **Stored**: only a complete 200 of the primary routing step (never a fallback's): a JSON
//!   reply's bytes, or a stream that ended with `message_stop` (captured by the
//!   [`crate::tap::TapBody`] as it passes), each up to the tenant's `max_entry_bytes`, with the
//!   cost the call had (what a hit saves).
//! - **Coalescing**: identical non-streamed calls in flight at once share one upstream call:
//!   the first is the leader ([`Flight`]), the others wait for its entry (bounded, over all
//!   they wait on, by the upstream retry deadline) and answer as hits; when the leader's reply
//!   is not stored they join again, so one of them leads the next try. Streamed calls never
//!   coalesce (a follower would wait for the leader's whole stream before its first byte).
//! - **Backends**: in this process (bounded by `caching.response_cache_max_bytes`) or Redis
//!   (shared by replicas; Redis away is a miss, never a failure).

mod memory;
mod redis;

use crate::headers;
use crate::state::AppState;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};
use sluice_config::{CachingConfig, Config, ResponseCacheBackend, ResponseCacheConfig};
use sluice_limits::limiter::TenantView;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// `x-sluice-cache`: the client's per-call choice, and the reply's result.
pub static X_SLUICE_CACHE: HeaderName = HeaderName::from_static("x-sluice-cache");

/// A cache key: SHA-256 of the tenant, endpoint, version headers and canonical body.
pub type Key = [u8; 32];

/// A stored reply.
pub struct Entry {
    /// The tenant it belongs to (checked on every hit, on top of being in the key).
    pub tenant: Arc<str>,
    /// When it was stored (Unix ms; the hit's `age`).
    pub created_ms: i64,
    /// When it stops answering (Unix ms).
    pub expires_ms: i64,
    /// An SSE stream (else a JSON reply).
    pub stream: bool,
    /// What the call that stored it cost (micro-dollars): what each hit saves.
    pub cost_micros: i64,
    /// The model that served it.
    pub model: Option<String>,
    /// The reply body as the upstream sent it.
    pub body: Bytes,
}

/// Never the body: it is a reply to someone's prompt.
impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("tenant", &self.tenant)
            .field("created_ms", &self.created_ms)
            .field("expires_ms", &self.expires_ms)
            .field("stream", &self.stream)
            .field("cost_micros", &self.cost_micros)
            .field("model", &self.model)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// What the client asked of the cache for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Look up, and store on a miss.
    Use,
    /// Do not look up; store the new reply.
    Refresh,
    /// Neither look up nor store.
    Bypass,
}

/// The call's mode from `x-sluice-cache` (`off` | `refresh`) and `cache-control`
/// (`no-store` | `no-cache`); bypassing wins over refreshing.
pub fn mode(h: &HeaderMap) -> Mode {
    let mut m = Mode::Use;
    if let Some(v) = h.get(&X_SLUICE_CACHE) {
        let v = v.as_bytes().trim_ascii();
        if v.eq_ignore_ascii_case(b"off") {
            return Mode::Bypass;
        }
        if v.eq_ignore_ascii_case(b"refresh") {
            m = Mode::Refresh;
        }
    }
    for v in h.get_all(http::header::CACHE_CONTROL) {
        for d in v.as_bytes().split(|&b| b == b',') {
            let d = d.trim_ascii();
            if d.eq_ignore_ascii_case(b"no-store") {
                return Mode::Bypass;
            }
            if d.eq_ignore_ascii_case(b"no-cache") {
                m = Mode::Refresh;
            }
        }
    }
    m
}

/// The key of a call of `tenant` to `endpoint` with these headers and canonical body. Each
/// part is length-prefixed, so no two different tuples hash the same bytes.
pub fn key(tenant: &str, endpoint: &str, h: &HeaderMap, canonical_body: &[u8]) -> Key {
    let mut d = Sha256::new();
    let mut part = |b: &[u8]| {
        d.update((b.len() as u64).to_le_bytes());
        d.update(b);
    };
    part(b"sluice-response-cache-v1");
    part(tenant.as_bytes());
    part(endpoint.as_bytes());
    for name in ["anthropic-version", "anthropic-beta"] {
        // Every value, in order (a repeated header is a different request).
        let mut n = 0u64;
        for v in h.get_all(name) {
            part(v.as_bytes());
            n += 1;
        }
        part(&n.to_le_bytes());
    }
    part(canonical_body);
    d.finalize().into()
}

enum Store {
    Memory(memory::Memory),
    Redis(redis::Redis),
}

/// One shard of the keys in flight: each key's receiver, cloned by its followers.
type Flights = Mutex<HashMap<Key, watch::Receiver<()>>>;

struct Inner {
    store: Store,
    /// Keys with a leader in flight, sharded by the key's first byte. Locked only to insert,
    /// clone or remove one receiver: never across an `.await`.
    flights: Box<[Flights]>,
}

/// The response cache (cheap to clone).
#[derive(Clone)]
pub struct ResponseCache(Arc<Inner>);

const SHARDS: usize = 16;

impl ResponseCache {
    /// The cache `[caching]` describes. The Redis backend connects in the background (it is
    /// a miss until connected); a Redis URL that does not parse leaves the cache in memory,
    /// logged.
    pub fn new(cfg: &Config) -> Self {
        let c: &CachingConfig = &cfg.caching;
        let store = match c.response_cache_backend {
            ResponseCacheBackend::Memory => {
                Store::Memory(memory::Memory::new(c.response_cache_max_bytes))
            }
            ResponseCacheBackend::Redis => match redis::Redis::new(&cfg.limits) {
                Ok(r) => Store::Redis(r),
                Err(e) => {
                    tracing::error!(error = %e, "response cache: Redis unusable; keeping entries in memory");
                    Store::Memory(memory::Memory::new(c.response_cache_max_bytes))
                }
            },
        };
        Self::with_store(store)
    }

    /// An in-memory cache of at most `max_bytes` (tests and benchmarks).
    pub fn in_memory(max_bytes: u64) -> Self {
        Self::with_store(Store::Memory(memory::Memory::new(max_bytes)))
    }

    fn with_store(store: Store) -> Self {
        Self(Arc::new(Inner {
            store,
            flights: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }))
    }

    /// The live entry of `tenant` under `key`.
    pub async fn get(&self, key: &Key, tenant: &str, now_ms: i64) -> Option<Arc<Entry>> {
        let e = match &self.0.store {
            Store::Memory(m) => m.get(key, now_ms),
            Store::Redis(r) => r.get(key, now_ms).await,
        }?;
        (&*e.tenant == tenant && e.expires_ms > now_ms).then_some(e)
    }

    /// Store `e` under `key`; `flight` (the leader's) is let go once the entry is readable, so
    /// the callers waiting on it find it.
    pub fn put(&self, key: Key, e: Entry, flight: Option<Flight>) {
        match &self.0.store {
            Store::Memory(m) => {
                m.put(key, Arc::new(e));
                drop(flight);
            }
            Store::Redis(r) => r.put(key, e, flight),
        }
    }

    /// Lead the upstream call for `key`, or follow the one in flight.
    pub fn join(&self, key: &Key) -> Join {
        let mut map = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = map.get(key) {
            return Join::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        map.insert(*key, rx);
        Join::Leader(Flight {
            cache: self.clone(),
            key: *key,
            _tx: tx,
        })
    }

    fn shard(&self, key: &Key) -> &Flights {
        &self.0.flights[usize::from(key[0]) % SHARDS]
    }

    /// Entries and bytes held in this process (`None` with the Redis backend, whose size is
    /// Redis's).
    pub fn size(&self) -> Option<(u64, u64)> {
        match &self.0.store {
            Store::Memory(m) => Some(m.size()),
            Store::Redis(_) => None,
        }
    }

    /// The in-process bound in bytes (`None` with Redis).
    pub fn capacity(&self) -> Option<u64> {
        match &self.0.store {
            Store::Memory(m) => Some(m.capacity()),
            Store::Redis(_) => None,
        }
    }
}

/// [`ResponseCache::join`]'s answer.
pub enum Join {
    /// This call makes the upstream call; the others wait until the flight is dropped.
    Leader(Flight),
    /// Another call is making it: wait for its end, then look again.
    Follower(watch::Receiver<()>),
}

/// The leader's hold on a key in flight. Dropping it (the entry stored, or the reply not
/// storable) lets the followers go.
pub struct Flight {
    cache: ResponseCache,
    key: Key,
    /// Dropped after the key leaves the map: followers then see the channel closed.
    _tx: watch::Sender<()>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.cache
            .shard(&self.key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// What the cache step decided for a call of a tenant with a response cache.
pub(crate) enum Decision {
    /// Answer from this entry.
    Hit(Arc<Entry>),
    /// Go upstream, and store the reply if it can be.
    Miss(Storing),
    /// Go upstream; store nothing.
    Bypass,
}

impl Decision {
    /// What the call counts as in `sluice_response_cache_requests_total`.
    pub(crate) fn result(&self) -> sluice_telemetry::CacheResult {
        match self {
            Decision::Hit(_) => sluice_telemetry::CacheResult::Hit,
            Decision::Miss(_) => sluice_telemetry::CacheResult::Miss,
            Decision::Bypass => sluice_telemetry::CacheResult::Bypass,
        }
    }

    /// The `x-sluice-cache` value a reply to this call carries.
    pub(crate) fn header(&self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Decision::Hit(_) => "hit",
            Decision::Miss(_) => "miss",
            Decision::Bypass => "bypass",
        })
    }
}

/// Where a miss's reply goes if it is storable.
pub(crate) struct Storing {
    s: AppState,
    key: Key,
    tenant: Arc<str>,
    flight: Option<Flight>,
    ttl_ms: i64,
    /// Replies larger than this are not stored.
    pub max_bytes: usize,
}

impl Storing {
    /// Store a complete successful reply (`body` at most `max_bytes`: checked here too).
    pub(crate) fn store(self, stream: bool, body: Bytes, cost: Option<i64>, model: Option<String>) {
        if body.len() > self.max_bytes {
            return;
        }
        let now_ms = self.s.clock().unix_ms();
        let e = Entry {
            tenant: self.tenant,
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(self.ttl_ms),
            stream,
            cost_micros: cost.unwrap_or(0),
            model,
            body,
        };
        self.s.response_cache().put(self.key, e, self.flight);
    }
}

/// A stream's copy, made as its frames pass to the client, stored once the stream ends with
/// `message_stop`. Over `max_entry_bytes` it is abandoned (the flight let go at once).
pub struct Capture {
    storing: Storing,
    buf: Vec<u8>,
}

impl Capture {
    pub(crate) fn new(storing: Storing) -> Self {
        Self {
            storing,
            buf: Vec::new(),
        }
    }

    /// Copy a frame; `false` when the stream is now too large to store.
    pub(crate) fn push(&mut self, frame: &[u8]) -> bool {
        if self.buf.len() + frame.len() > self.storing.max_bytes {
            return false;
        }
        self.buf.extend_from_slice(frame);
        true
    }

    /// The stream ended cleanly: store it.
    pub(crate) fn complete(self, cost: Option<i64>, model: Option<String>) {
        let body = Bytes::from(self.buf);
        self.storing.store(true, body, cost, model);
    }
}

/// The cache step of a Messages call: look up (unless the client said otherwise), coalescing
/// a non-streamed call with an identical one in flight. `body` is the request as sent (`stream`
/// its `stream` field); `wait` bounds how long a follower waits, over all the leaders it follows.
pub(crate) async fn decide(
    s: &AppState,
    tenant: &Arc<str>,
    rc: &ResponseCacheConfig,
    h: &HeaderMap,
    body: &[u8],
    stream: bool,
    wait: Duration,
) -> Decision {
    let m = mode(h);
    if m == Mode::Bypass {
        return Decision::Bypass;
    }
    // The body was parsed already; one the canonicaliser refuses (too deep, or a key twice in
    // an object: which one the upstream reads is its choice) is not cached.
    let Some(canonical) = sluice_anthropic::canonical_json(body) else {
        return Decision::Bypass;
    };
    let cache = s.response_cache();
    let key = key(tenant, "messages", h, &canonical);
    drop(canonical);
    let storing = |flight| {
        Decision::Miss(Storing {
            s: s.clone(),
            key,
            tenant: tenant.clone(),
            flight,
            ttl_ms: i64::try_from(rc.ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            max_bytes: rc.max_entry_bytes,
        })
    };
    if m == Mode::Refresh {
        return storing(None);
    }
    let now = || s.clock().unix_ms();
    if let Some(e) = cache.get(&key, tenant, now()).await {
        return Decision::Hit(e);
    }
    // A stream's flight lasts until its last event: waiting on it would turn a follower's
    // first byte into the leader's last. Streams look up and store, but never coalesce.
    if stream {
        return storing(None);
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match cache.join(&key) {
            Join::Leader(f) => {
                // A leader may have stored and left between the lookup and the join.
                if let Some(e) = cache.get(&key, tenant, now()).await {
                    return Decision::Hit(e);
                }
                return storing(Some(f));
            }
            Join::Follower(mut rx) => {
                // Ends when the leader's flight is dropped (the channel closes) or at the bound.
                let timed_out = tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_err();
                if let Some(e) = cache.get(&key, tenant, now()).await {
                    return Decision::Hit(e);
                }
                // The leader stored nothing (it failed): join again, so one of the followers
                // leads the next try and the rest wait for it, instead of all of them going
                // to an upstream that just failed. Past the bound, go without waiting more.
                if timed_out || tokio::time::Instant::now() >= deadline {
                    return storing(None);
                }
            }
        }
    }
}

/// The reply to a hit: the stored body with its content type, `x-sluice-cache: hit`, its
/// `age`, the gateway's request id and the tenant's rate-limit headers. A stored stream is
/// replayed whole (it is a complete SSE stream), with no length or encoding of the original.
pub(crate) fn hit_response(
    e: &Entry,
    request_id: &str,
    view: &TenantView,
    now_ms: i64,
) -> Response {
    let mut r = Response::new(Body::from(e.body.clone()));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(if e.stream {
            "text/event-stream; charset=utf-8"
        } else {
            "application/json"
        }),
    );
    if e.stream {
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
    }
    h.insert(X_SLUICE_CACHE.clone(), HeaderValue::from_static("hit"));
    let age = u64::try_from(now_ms.saturating_sub(e.created_ms) / 1000).unwrap_or(0);
    h.insert(http::header::AGE, HeaderValue::from(age));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static("request-id"), v);
    }
    headers::for_client_with_limits(h, view);
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn modes_from_headers() {
        assert_eq!(mode(&hm(&[])), Mode::Use);
        assert_eq!(mode(&hm(&[("x-sluice-cache", "off")])), Mode::Bypass);
        assert_eq!(mode(&hm(&[("x-sluice-cache", " Refresh ")])), Mode::Refresh);
        assert_eq!(
            mode(&hm(&[("cache-control", "max-age=0, no-cache")])),
            Mode::Refresh
        );
        assert_eq!(mode(&hm(&[("cache-control", "no-store")])), Mode::Bypass);
        // Bypassing wins.
        assert_eq!(
            mode(&hm(&[
                ("x-sluice-cache", "refresh"),
                ("cache-control", "no-store")
            ])),
            Mode::Bypass
        );
        assert_eq!(mode(&hm(&[("x-sluice-cache", "whatever")])), Mode::Use);
    }

    #[test]
    fn the_key_takes_tenant_endpoint_and_version_headers() {
        let b = br#"{"a":1}"#;
        let base = key(
            "web",
            "messages",
            &hm(&[("anthropic-version", "2023-06-01")]),
            b,
        );
        assert_ne!(
            base,
            key(
                "email",
                "messages",
                &hm(&[("anthropic-version", "2023-06-01")]),
                b
            )
        );
        assert_ne!(
            base,
            key(
                "web",
                "count_tokens",
                &hm(&[("anthropic-version", "2023-06-01")]),
                b
            )
        );
        assert_ne!(base, key("web", "messages", &hm(&[]), b));
        assert_ne!(
            base,
            key(
                "web",
                "messages",
                &hm(&[("anthropic-version", "2023-06-01"), ("anthropic-beta", "x")]),
                b
            )
        );
        assert_ne!(
            base,
            key(
                "web",
                "messages",
                &hm(&[("anthropic-version", "2023-06-01")]),
                br#"{"a":2}"#
            )
        );
        // Other headers (credentials among them) are not part of it.
        assert_eq!(
            base,
            key(
                "web",
                "messages",
                &hm(&[
                    ("anthropic-version", "2023-06-01"),
                    ("x-api-key", "sk-sluice-secret")
                ]),
                b
            )
        );
        // Length prefixes: moving a byte between parts changes the key.
        assert_ne!(key("ab", "c", &hm(&[]), b), key("a", "bc", &hm(&[]), b));
    }

    fn entry(tenant: &str, body: usize, expires_ms: i64) -> Entry {
        Entry {
            tenant: Arc::from(tenant),
            created_ms: 0,
            expires_ms,
            stream: false,
            cost_micros: 1,
            model: Some("claude-sonnet-4-5".into()),
            body: Bytes::from(vec![b'x'; body]),
        }
    }

    #[tokio::test]
    async fn entries_expire_and_belong_to_their_tenant() {
        let c = ResponseCache::in_memory(1 << 20);
        let k = [7u8; 32];
        c.put(k, entry("web", 10, 1000), None);
        assert!(c.get(&k, "web", 999).await.is_some());
        assert!(
            c.get(&k, "email", 999).await.is_none(),
            "another tenant's entry"
        );
        assert!(c.get(&k, "web", 1000).await.is_none(), "expired");
        assert_eq!(c.size().unwrap().0, 0, "the expired entry was dropped");
    }

    /// 100k distinct small entries into a 1 MiB cache: the weighted size never passes the
    /// bound, and the cache still holds what fits.
    #[tokio::test]
    async fn memory_stays_within_the_bound() {
        let bound = 1 << 20;
        let c = ResponseCache::in_memory(bound);
        let mut max_seen = 0;
        for i in 0u32..100_000 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            k[4..8].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
            c.put(k, entry("web", 200 + (i as usize % 300), i64::MAX), None);
            let (_, bytes) = c.size().unwrap();
            max_seen = max_seen.max(bytes);
            assert!(bytes <= bound, "{bytes} > {bound} after {i}");
        }
        let (entries, bytes) = c.size().unwrap();
        assert!(entries > 1000, "only {entries} kept");
        assert!(bytes > bound / 2, "only {bytes} bytes kept");
        assert!(max_seen <= bound);
    }

    #[tokio::test]
    async fn one_leader_per_key_and_followers_wake_when_it_ends() {
        let c = ResponseCache::in_memory(1 << 20);
        let k = [1u8; 32];
        let Join::Leader(f) = c.join(&k) else {
            panic!("first is not the leader")
        };
        let Join::Follower(mut rx) = c.join(&k) else {
            panic!("second leads too")
        };
        assert!(
            matches!(c.join(&[2u8; 32]), Join::Leader(_)),
            "another key is its own"
        );
        let waiter = tokio::spawn(async move { rx.changed().await.is_err() });
        c.put(k, entry("web", 5, i64::MAX), Some(f));
        assert!(waiter.await.unwrap(), "the follower saw the flight end");
        // The key is free again.
        assert!(matches!(c.join(&k), Join::Leader(_)));
    }

    /// What a miss adds to a call: the canonical form and its hash, a lookup, joining and
    /// leaving the flight map. A measurement, not a check (numbers in docs/benchmarks.md).
    #[tokio::test]
    #[ignore = "cargo test --release -p sluice-proxy --lib -- --ignored miss_cost --nocapture"]
    async fn miss_cost() {
        let c = ResponseCache::in_memory(256 << 20);
        let h = hm(&[("anthropic-version", "2023-06-01")]);
        for size in [1_000usize, 16_000] {
            let text = "lorem ipsum dolor sit amet ".repeat(size / 27);
            let body = format!(
                r#"{{"model":"claude-sonnet-4-5","max_tokens":256,"system":"You are terse.","messages":[{{"role":"user","content":"{text}"}}]}}"#
            );
            let n = 20_000u32;
            let t = std::time::Instant::now();
            for i in 0..n {
                let canon = sluice_anthropic::canonical_json(body.as_bytes()).unwrap();
                let mut k = key("web", "messages", &h, &canon);
                k[31] ^= i as u8;
                assert!(c.get(&k, "web", 0).await.is_none());
                let Join::Leader(f) = c.join(&k) else {
                    panic!()
                };
                drop(f);
            }
            let per = t.elapsed() / n;
            eprintln!("miss overhead, {} byte body: {per:?} per call", body.len());
        }
    }
}
