//! The Redis backend: bucket state shared by every replica, with the answers of
//! [`LocalBackend`] (the conformance suite, `tests/conformance.rs`, holds both to the same
//! scenarios).
//!
//! # On the request path: one round trip
//!
//! An admission is one `EVALSHA` of `admit.lua` (the kernel of `bucket.rs` and
//! `admit_keeping`, line for line, in Lua) covering every scope's buckets and the tenant's
//! budget counters, all or nothing, on Redis server time (`TIME`), so replicas with skewed
//! clocks agree. Settlements, upstream observations and spend seeds go through a queue to a
//! background task that pipelines many per round trip, off the response path.
//!
//! # Keys
//!
//! A scope is one hash (fields `rl rt il it ol ot`: level in micro-tokens and time of the last
//! refill, per dimension; and `cr ct cn cd`, a refused replica's claim on the room it needs,
//! see `admit.lua`) expiring a little after it would be full again, so an idle tenant
//! costs no memory and an expired bucket reads as the full one it would be. Everything of a
//! tenant shares the tenant's hash tag: `{<prefix>:t:<tenant>}` (its own scope),
//! `{<prefix>:t:<tenant>}:c:<class>` (its scope for a model class),
//! `{<prefix>:t:<tenant>}:spend:d:<day>` and `…:spend:m:<month>` (budget counters,
//! micro-dollars, expiring after the period). An org pool is `{<prefix>:o:<class>}`.
//!
//! # Redis Cluster
//!
//! A script may only touch keys of one hash slot in Cluster mode, and an admission touches the
//! tenant's slot *and* the org pool's slot. On a standalone Redis (or Sentinel, which is what
//! this is written for) one script covers both, atomically. A Cluster deployment would need two
//! scripts pipelined to the two nodes (tenant scopes and budget; org pool), each
//! all-or-nothing on its own, with a compensating refund script when one admits and the other
//! refuses: not atomic across the two (a concurrent call may see the first debit for a round
//! trip), which is why it is not built here.
//!
//! # Numbers
//!
//! Lua numbers are doubles: integers are exact below 2^53. Every rate and demand is clamped to
//! [`MAX_TOKENS`] (so micro-token levels stay below 1e15), costs and budgets to
//! [`MAX_MICROS`], and debt is floored at -4e15 micro-tokens; waits longer than 2^53 µs (285
//! years) lose precision. Within those bounds the answers are the Rust kernel's, exactly.
//!
//! # When Redis is unreachable
//!
//! Every call is bounded by [`RedisOptions::timeout`]. An error or a timeout marks Redis down
//! (logged once, at warn) and the call is answered by [`RedisOptions::fail_mode`]: `local`
//! admits against an embedded [`LocalBackend`] with every limit scaled to
//! [`RedisOptions::fallback_share`] (budgets as they are), `closed` refuses with
//! [`BackendError::Unavailable`], `open` admits with no views. A background task pings every
//! 250 ms while down and switches back when Redis answers (logged at info); settlements meant
//! for Redis wait in a bounded buffer meanwhile and are replayed. Nothing here panics or waits
//! longer than the timeout on the request path.

mod admit;
mod connection;
mod fallback;
mod jobs;
mod keys;

use connection::{CallError, Live, reconnect_loop};
use jobs::{Job, job_loop};

use crate::backend::{BackendError, Outcome, Period};
use crate::local::LocalBackend;
use ::redis::{Client, Script};
use arc_swap::ArcSwapOption;
use sluice_config::FailMode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

/// Largest rate, burst or demand (tokens) sent to Redis: keeps every level, in micro-tokens,
/// below 1e15 and so exact in Lua's doubles. Larger values are clamped (a demand to one more
/// than this, so it still never fits).
pub const MAX_TOKENS: u64 = 1_000_000_000;

/// Largest cost or budget (micro-dollars, about 4.5 billion dollars) sent to Redis.
pub const MAX_MICROS: u64 = 1 << 52;

/// Jobs (settlements, observations, seeds) queued to the background task at most.
const QUEUE: usize = 65_536;

const COMMON: &str = include_str!("common.lua");
const ADMIT: &str = include_str!("admit.lua");
const SETTLE: &str = include_str!("settle.lua");
const OBSERVE: &str = include_str!("observe.lua");

/// How to reach Redis and what to do without it. `Debug` shows the URL without its password.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Prefix of every key (several gateways, or tests, can share one Redis).
    pub prefix: String,
    /// Longest wait for one Redis call (and for a connection attempt).
    pub timeout: Duration,
    /// What to answer while Redis is unreachable.
    pub fail_mode: FailMode,
    /// Share of every limit enforced by the local fallback (with N replicas, 1/N).
    pub fallback_share: f64,
    /// Use the caller's clock (`local_now_us`) in Redis instead of Redis `TIME`. For tests
    /// that drive both backends with one simulated clock; never in production, where replicas'
    /// clocks differ.
    pub caller_clock: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "sluice".into(),
            timeout: Duration::from_millis(100),
            fail_mode: FailMode::Local,
            fallback_share: 0.5,
            caller_clock: false,
        }
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &sluice_core::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("fail_mode", &self.fail_mode)
            .field("fallback_share", &self.fallback_share)
            .field("caller_clock", &self.caller_clock)
            .finish()
    }
}

/// Which limiter answered an admission (its settlement must go to the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The shared state in Redis.
    Redis,
    /// The local limiter (the in-process backend, or the Redis backend's fallback).
    Local,
    /// Nothing: admitted unchecked while Redis was unreachable (`fail_mode = "open"`).
    Open,
}

/// An admission's answer and who gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The answer.
    pub outcome: Outcome,
    /// Who gave it.
    pub via: Via,
}

/// Counters for `/metrics` and `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStatus {
    /// Redis is reachable and in use.
    pub up: bool,
    /// Admissions answered without Redis (by the local fallback, open, or refused closed).
    pub fallbacks_total: u64,
    /// Redis calls that failed or timed out.
    pub errors_total: u64,
    /// Times Redis went from up to down.
    pub outages_total: u64,
    /// Settlements and other queued jobs dropped (queue or outage buffer full).
    pub settle_dropped: u64,
    /// Jobs queued and not yet applied to Redis.
    pub settle_pending: u64,
}

struct Scripts {
    admit: Script,
    settle: Script,
    observe: Script,
}

struct Shared {
    opts: RedisOptions,
    client: Option<Client>,
    live: ArcSwapOption<Live>,
    /// True once the first connection attempt ended, either way.
    started: watch::Sender<bool>,
    shutdown: AtomicBool,
    /// Wakes the reconnect task when Redis goes down, or at shutdown.
    wake: Notify,
    local: LocalBackend,
    /// The latest local time seen (µs, the caller's clock), for fallback calls without one.
    local_now: AtomicU64,
    /// This replica's name in admission claims: unique per backend, never a secret.
    replica: Box<str>,
    scripts: Scripts,
    fallbacks: AtomicU64,
    errors: AtomicU64,
    outages: AtomicU64,
    dropped: AtomicU64,
    queued: AtomicU64,
    done: AtomicU64,
}

/// The Redis limiter backend (with its local fallback). Cheap to share behind an `Arc`; its
/// background tasks end when it is dropped.
pub struct RedisBackend {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.shared.opts.prefix)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

impl RedisBackend {
    /// Start the backend: it connects in the background and answers from its fallback until
    /// Redis is reachable (an admission made before the first attempt has ended waits for it,
    /// up to the timeout). Never fails: a bad URL or a Redis that is down leaves it in
    /// fallback, retrying (with a bad URL, for ever). Call within a Tokio runtime; without one
    /// it stays in fallback.
    pub fn connect(opts: RedisOptions) -> RedisBackend {
        let client = match Client::open(opts.url.as_str()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(url = %sluice_core::redact_url(&opts.url), error = %e, "invalid Redis URL: limiting locally");
                None
            }
        };
        let script = |body: &str| Script::new(&format!("{COMMON}\n{body}"));
        let (started, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            scripts: Scripts {
                admit: script(ADMIT),
                settle: script(SETTLE),
                observe: script(OBSERVE),
            },
            opts,
            client,
            live: ArcSwapOption::empty(),
            started,
            shutdown: AtomicBool::new(false),
            wake: Notify::new(),
            local: LocalBackend::new(),
            local_now: AtomicU64::new(0),
            replica: replica_id(),
            fallbacks: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            done: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(reconnect_loop(shared.clone()));
                rt.spawn(job_loop(shared.clone(), rx));
            }
            Err(_) => {
                tracing::error!("Redis limiter started outside a Tokio runtime: limiting locally");
                shared.started.send_replace(true);
            }
        }
        RedisBackend { shared, jobs: tx }
    }

    /// A tenant's spend in Redis for `day` and `month` (micro-dollars; 0 where no counter).
    pub async fn spend(
        &self,
        tenant: &str,
        day: u32,
        month: u32,
    ) -> Result<(u64, u64), BackendError> {
        let sh = &self.shared;
        let live = sh
            .live
            .load_full()
            .ok_or_else(|| BackendError::Unavailable("Redis is unreachable".into()))?;
        let mut conn = live.conn.clone();
        let mut cmd = ::redis::cmd("MGET");
        cmd.arg(self.spend_key(tenant, Period::Day, day))
            .arg(self.spend_key(tenant, Period::Month, month));
        let call = cmd.query_async::<Vec<Option<u64>>>(&mut conn);
        let res = match tokio::time::timeout(sh.opts.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError::Redis(e)),
            Err(_) => Err(CallError::Timeout(sh.opts.timeout)),
        };
        match res {
            Ok(v) => Ok((
                v.first().copied().flatten().unwrap_or(0),
                v.get(1).copied().flatten().unwrap_or(0),
            )),
            Err(e) => {
                sh.failed(&live, &e, "spend read");
                Err(BackendError::Unavailable(e.to_string()))
            }
        }
    }

    /// The embedded fallback limiter (for views and tests).
    pub fn fallback_backend(&self) -> &LocalBackend {
        &self.shared.local
    }

    /// True while Redis is reachable and in use.
    pub fn is_up(&self) -> bool {
        self.shared.live.load().is_some()
    }

    /// Counters for metrics.
    pub fn status(&self) -> RedisStatus {
        let sh = &self.shared;
        let queued = sh.queued.load(Ordering::Relaxed);
        let done = sh.done.load(Ordering::Relaxed);
        RedisStatus {
            up: self.is_up(),
            fallbacks_total: sh.fallbacks.load(Ordering::Relaxed),
            errors_total: sh.errors.load(Ordering::Relaxed),
            outages_total: sh.outages.load(Ordering::Relaxed),
            settle_dropped: sh.dropped.load(Ordering::Relaxed),
            settle_pending: queued.saturating_sub(done),
        }
    }
}

/// A name for this backend that no other replica (process or backend) is likely to share.
fn replica_id() -> Box<str> {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{nanos:x}-{n}", std::process::id()).into()
}
