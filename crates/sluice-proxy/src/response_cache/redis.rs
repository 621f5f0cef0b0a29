//! The Redis backend: entries shared by every replica, under `{redis_prefix}:rc:{hex key}`,
//! each a compact binary envelope set with `PX` = the tenant's TTL. Redis being away is a miss
//! (and a store is skipped), logged once per outage; it never fails a call. The connection is
//! the limiter's Redis (`limits.redis_url`), opened at startup (or on first use) and again
//! after an outage, at most every 250 ms.

use super::{Entry, Flight, Key};
use ::redis::AsyncCommands;
use ::redis::aio::MultiplexedConnection;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use sluice_config::LimitsConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why the backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisSetupError {
    /// The URL does not parse (the message never holds the URL, which may carry a password).
    #[error("limits.redis_url is not a Redis URL: {0}")]
    Url(String),
}

const RETRY_EVERY: Duration = Duration::from_millis(250);

struct Shared {
    client: ::redis::Client,
    prefix: String,
    timeout: Duration,
    conn: ArcSwapOption<MultiplexedConnection>,
    /// A connection attempt is under way.
    connecting: AtomicBool,
    /// Redis was found away and not yet back (so the outage is logged once).
    down: AtomicBool,
    /// When the last attempt started (µs since `origin`), to space attempts out.
    last_attempt_us: AtomicU64,
    origin: Instant,
}

/// The Redis store (cheap to clone).
#[derive(Clone)]
pub(super) struct Redis(Arc<Shared>);

impl Redis {
    pub(super) fn new(l: &LimitsConfig) -> Result<Self, RedisSetupError> {
        let client = ::redis::Client::open(l.redis_url.expose())
            .map_err(|e| RedisSetupError::Url(format!("{:?}", e.kind())))?;
        let r = Self(Arc::new(Shared {
            client,
            prefix: format!("{}:rc:", l.redis_prefix),
            timeout: Duration::from_millis(l.redis_timeout_ms),
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            down: AtomicBool::new(false),
            last_attempt_us: AtomicU64::new(0),
            origin: Instant::now(),
        }));
        // Connect now when a runtime is there to do it, so the first calls can use Redis.
        if tokio::runtime::Handle::try_current().is_ok() {
            r.reconnect();
        }
        Ok(r)
    }

    fn redis_key(&self, key: &Key) -> String {
        let mut s = String::with_capacity(self.0.prefix.len() + 64);
        s.push_str(&self.0.prefix);
        for b in key {
            use std::fmt::Write;
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    /// The connection, or `None` while there is none (an attempt is started in the background
    /// unless one ran in the last 250 ms).
    fn conn(&self) -> Option<MultiplexedConnection> {
        if let Some(c) = self.0.conn.load_full() {
            return Some((*c).clone());
        }
        self.reconnect();
        None
    }

    fn reconnect(&self) {
        let sh = &self.0;
        let now = u64::try_from(sh.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        let last = sh.last_attempt_us.load(Ordering::Relaxed);
        if (last != 0 && now.saturating_sub(last) < RETRY_EVERY.as_micros() as u64)
            || sh.connecting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        sh.last_attempt_us.store(now.max(1), Ordering::Relaxed);
        let me = self.clone();
        tokio::spawn(async move {
            let sh = &me.0;
            let cfg = ::redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(sh.timeout))
                .set_response_timeout(Some(sh.timeout));
            match sh
                .client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
            {
                Ok(c) => {
                    sh.conn.store(Some(Arc::new(c)));
                    if sh.down.swap(false, Ordering::AcqRel) {
                        tracing::info!("response cache: Redis is back");
                    }
                }
                Err(e) => me.away(&e),
            }
            sh.connecting.store(false, Ordering::Release);
        });
    }

    /// A call failed: drop the connection and log the outage once.
    fn away(&self, e: &dyn std::fmt::Display) {
        self.0.conn.store(None);
        if !self.0.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %e, "response cache: Redis unreachable; answering as misses until it is back");
        }
    }

    pub(super) async fn get(&self, key: &Key, now_ms: i64) -> Option<Arc<Entry>> {
        let mut c = self.conn()?;
        let k = self.redis_key(key);
        let got: Result<Option<Vec<u8>>, _> =
            match tokio::time::timeout(self.0.timeout, c.get(&k)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            };
        match got {
            Ok(Some(v)) => decode(&v).filter(|e| e.expires_ms > now_ms).map(Arc::new),
            Ok(None) => None,
            Err(e) => {
                self.away(&e);
                None
            }
        }
    }

    /// Store in the background; `flight` is let go once Redis has the entry (or gave up).
    pub(super) fn put(&self, key: Key, e: Entry, flight: Option<Flight>) {
        let Some(mut c) = self.conn() else {
            return;
        };
        let me = self.clone();
        let ttl_ms = u64::try_from(e.expires_ms.saturating_sub(e.created_ms).max(1)).unwrap_or(1);
        tokio::spawn(async move {
            let k = me.redis_key(&key);
            let v = encode(&e);
            let set = c.pset_ex::<_, _, ()>(&k, v, ttl_ms);
            match tokio::time::timeout(me.0.timeout.max(Duration::from_secs(1)), set).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => me.away(&err),
                Err(_) => me.away(&"timed out"),
            }
            drop(flight);
        });
    }
}

const MAGIC: &[u8; 4] = b"SRC1";

/// `SRC1`, flags (bit 0: stream), created, expires, cost (i64 LE each), tenant and model
/// (u16 LE length, then bytes; model length 0xFFFF: none), then the body.
fn encode(e: &Entry) -> Vec<u8> {
    let model = e.model.as_deref().map(str::as_bytes);
    let mut v = Vec::with_capacity(
        4 + 1 + 24 + 4 + e.tenant.len() + model.map_or(0, <[u8]>::len) + e.body.len(),
    );
    v.extend_from_slice(MAGIC);
    v.push(u8::from(e.stream));
    for n in [e.created_ms, e.expires_ms, e.cost_micros] {
        v.extend_from_slice(&n.to_le_bytes());
    }
    let t = e.tenant.as_bytes();
    let tl = t.len().min(0xFFFE);
    v.extend_from_slice(&u16::try_from(tl).unwrap_or(0xFFFE).to_le_bytes());
    v.extend_from_slice(&t[..tl]);
    match model {
        Some(m) if m.len() < 0xFFFF => {
            v.extend_from_slice(&u16::try_from(m.len()).unwrap_or(0).to_le_bytes());
            v.extend_from_slice(m);
        }
        _ => v.extend_from_slice(&0xFFFFu16.to_le_bytes()),
    }
    v.extend_from_slice(&e.body);
    v
}

fn decode(v: &[u8]) -> Option<Entry> {
    let rest = v.strip_prefix(MAGIC)?;
    let (&flags, mut rest) = rest.split_first()?;
    let mut int = || {
        let (n, r) = rest.split_first_chunk::<8>()?;
        rest = r;
        Some(i64::from_le_bytes(*n))
    };
    let (created_ms, expires_ms, cost_micros) = (int()?, int()?, int()?);
    let (tl, r) = rest.split_first_chunk::<2>()?;
    let tl = usize::from(u16::from_le_bytes(*tl));
    let tenant = std::str::from_utf8(r.get(..tl)?).ok()?;
    let r = &r[tl..];
    let (ml, r) = r.split_first_chunk::<2>()?;
    let ml = u16::from_le_bytes(*ml);
    let (model, body) = if ml == 0xFFFF {
        (None, r)
    } else {
        let ml = usize::from(ml);
        (
            Some(std::str::from_utf8(r.get(..ml)?).ok()?.to_owned()),
            &r[ml..],
        )
    };
    Some(Entry {
        tenant: Arc::from(tenant),
        created_ms,
        expires_ms,
        stream: flags & 1 == 1,
        cost_micros,
        model,
        body: Bytes::copy_from_slice(body),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn envelopes_round_trip_and_refuse_garbage() {
        let e = Entry {
            tenant: Arc::from("web"),
            created_ms: 1,
            expires_ms: 300_001,
            stream: true,
            cost_micros: 1234,
            model: Some("claude-sonnet-4-5".into()),
            body: Bytes::from_static(b"event: message_stop\ndata: {}\n\n"),
        };
        let d = decode(&encode(&e)).unwrap();
        assert_eq!(
            (
                &*d.tenant,
                d.created_ms,
                d.expires_ms,
                d.stream,
                d.cost_micros
            ),
            ("web", 1, 300_001, true, 1234)
        );
        assert_eq!(
            (d.model.as_deref(), &d.body[..]),
            (e.model.as_deref(), &e.body[..])
        );
        let none = Entry {
            model: None,
            stream: false,
            ..e
        };
        let d = decode(&encode(&none)).unwrap();
        assert_eq!((d.model, d.stream), (None, false));
        let enc = encode(&none);
        for cut in 0..(4 + 1 + 24 + 2 + 3 + 2) {
            assert!(decode(&enc[..cut]).is_none(), "cut at {cut}");
        }
        assert!(decode(b"XXXX").is_none());
    }
}
