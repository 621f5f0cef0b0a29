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

use crate::backend::{
    AdmitRequest, BackendError, BucketView, Denial, Outcome, Period, Rates, Scope, ScopeKind,
    ScopeView, Settlement, Views,
};
use crate::local::LocalBackend;
use crate::{Dimension, Rate};
use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, Script, ServerErrorKind};
use arc_swap::ArcSwapOption;
use sluice_config::FailMode;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// Largest rate, burst or demand (tokens) sent to Redis: keeps every level, in micro-tokens,
/// below 1e15 and so exact in Lua's doubles. Larger values are clamped (a demand to one more
/// than this, so it still never fits).
pub const MAX_TOKENS: u64 = 1_000_000_000;
/// Largest cost or budget (micro-dollars, about 4.5 billion dollars) sent to Redis.
pub const MAX_MICROS: u64 = 1 << 52;

/// How long past its wait a replica's claim on the room it was refused lasts (see
/// `admit.lua`): long enough for a client's or a waiting call's next try, short enough that a
/// claimant that went away leaves that room idle only briefly.
const CLAIM_GRACE: Duration = Duration::from_millis(250);
/// How often a replica whose Redis is down tries again.
const RETRY_EVERY: Duration = Duration::from_millis(250);
/// Jobs (settlements, observations, seeds) queued to the background task at most.
const QUEUE: usize = 65_536;
/// Jobs kept for Redis while it is down at most; past that they are dropped and counted.
const BUFFER: usize = 100_000;
/// Jobs per pipelined round trip at most.
const BATCH: usize = 512;
/// A day counter lives long enough to cover its whole day from any first write.
const DAY_TTL_MS: u64 = 2 * 86_400_000;
/// A month counter likewise.
const MONTH_TTL_MS: u64 = 32 * 86_400_000;

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

/// The live connection and its generation (so a failure seen on an old connection does not
/// take down a new one).
struct Live {
    generation: u64,
    conn: MultiplexedConnection,
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

/// Why one Redis call failed.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0}")]
    Redis(#[from] RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply: {0}")]
    Reply(String),
}

impl CallError {
    /// True when the error says Redis is unreachable or unusable (rather than that one script
    /// call went wrong, which a reconnect would not cure).
    fn is_outage(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Reply(_) => false,
            Self::Redis(e) => !matches!(
                e.kind(),
                ErrorKind::Server(ServerErrorKind::ResponseError)
                    | ErrorKind::Parse
                    | ErrorKind::UnexpectedReturnType
            ),
        }
    }
}

/// Work for the background task.
enum Job {
    Settle {
        s: Box<Settlement>,
        now: Option<u64>,
    },
    /// Spend made outside Redis (admitted by the fallback or open), added when Redis is back.
    Spend {
        tenant: Arc<str>,
        day: u32,
        month: u32,
        micros: u64,
    },
    Observe {
        scope: Box<Scope>,
        dim: Dimension,
        remaining: u64,
        now: Option<u64>,
    },
    Seed {
        key: String,
        micros: u64,
        ttl_ms: u64,
    },
    /// Counters to delete (a deleted tenant's spend), after every job queued before.
    Forget {
        keys: Vec<String>,
    },
    Flush(oneshot::Sender<bool>),
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

    /// Admit (or refuse) `req`. `local_now_us` is the caller's monotonic clock, used by the
    /// fallback (and by Redis only with [`RedisOptions::caller_clock`]).
    pub async fn admit(
        &self,
        req: &AdmitRequest,
        local_now_us: u64,
    ) -> Result<Admitted, BackendError> {
        let sh = &self.shared;
        sh.local_now.fetch_max(local_now_us, Ordering::Relaxed);
        sh.wait_started().await;
        if let Some(live) = sh.live.load_full() {
            let call = self.admit_redis(&live, req, local_now_us);
            let res = match tokio::time::timeout(sh.opts.timeout, call).await {
                Ok(r) => r,
                Err(_) => Err(CallError::Timeout(sh.opts.timeout)),
            };
            match res {
                Ok(outcome) => {
                    return Ok(Admitted {
                        outcome,
                        via: Via::Redis,
                    });
                }
                Err(e) => sh.failed(&live, &e, "admission"),
            }
        }
        self.fallback(req, local_now_us)
    }

    fn fallback(&self, req: &AdmitRequest, local_now_us: u64) -> Result<Admitted, BackendError> {
        let sh = &self.shared;
        sh.fallbacks.fetch_add(1, Ordering::Relaxed);
        match sh.opts.fail_mode {
            FailMode::Local => {
                let scaled = scale_request(req, sh.opts.fallback_share);
                Ok(Admitted {
                    outcome: sh.local.admit(&scaled, local_now_us),
                    via: Via::Local,
                })
            }
            FailMode::Closed => Err(BackendError::Unavailable(
                "Redis is unreachable (fail_mode = \"closed\")".into(),
            )),
            FailMode::Open => Ok(Admitted {
                outcome: Outcome {
                    result: Ok(()),
                    views: Views::from_elem(ScopeView::default(), req.scopes.len()),
                },
                via: Via::Open,
            }),
        }
    }

    async fn admit_redis(
        &self,
        live: &Live,
        req: &AdmitRequest,
        local_now_us: u64,
    ) -> Result<Outcome, CallError> {
        let sh = &self.shared;
        let mut inv = sh.scripts.admit.prepare_invoke();
        for s in req.scopes.iter() {
            inv.key(self.scope_key(&req.tenant, s));
        }
        if let Some(b) = req.budget {
            inv.key(self.spend_key(&req.tenant, Period::Day, b.day));
            inv.key(self.spend_key(&req.tenant, Period::Month, b.month));
        }
        inv.arg(self.now_arg(local_now_us))
            .arg(req.scopes.len())
            .arg(tokens(req.demand.requests))
            .arg(tokens(req.demand.input_tokens))
            .arg(tokens(req.demand.output_tokens));
        match req.budget {
            Some(b) => inv
                .arg(1)
                .arg(micros(b.cost_micros))
                .arg(b.daily_micros.map_or(-1, micros_i64))
                .arg(b.monthly_micros.map_or(-1, micros_i64))
                .arg(DAY_TTL_MS)
                .arg(MONTH_TTL_MS),
            None => inv.arg(0).arg(0).arg(-1).arg(-1).arg(0).arg(0),
        };
        for s in req.scopes.iter() {
            inv.arg(s.keep_free_ppm.min(1_000_000));
            push_rates(&mut inv, &s.rates);
        }
        inv.arg(&*sh.replica)
            .arg(u64::try_from(CLAIM_GRACE.as_micros()).unwrap_or(u64::MAX));
        let mut conn = live.conn.clone();
        let raw: Vec<i64> = inv.invoke_async(&mut conn).await?;
        let (outcome, spent) = parse_admit(&raw, req.scopes.len())?;
        // Keep the fallback's idea of the tenant's spend current, so an outage does not reset
        // the budget.
        if let (Some(b), Some((day, month))) = (req.budget, spent) {
            raise_spend(&sh.local, &req.tenant, Period::Day, b.day, day);
            raise_spend(&sh.local, &req.tenant, Period::Month, b.month, month);
        }
        Ok(outcome)
    }

    /// Correct an admitted call to the truth, without waiting: a Redis settlement is queued to
    /// the background task (kept while Redis is down, replayed when it is back); a fallback
    /// one is applied to the fallback now.
    pub fn settle(&self, s: Settlement, via: Via) {
        let now = self.shared.local_now.load(Ordering::Relaxed);
        self.settle_at(s, via, now);
    }

    /// [`RedisBackend::settle`] at the caller's time `local_now_us`.
    pub fn settle_at(&self, s: Settlement, via: Via, local_now_us: u64) {
        let sh = &self.shared;
        sh.local_now.fetch_max(local_now_us, Ordering::Relaxed);
        match via {
            Via::Redis => {
                let now = sh.opts.caller_clock.then_some(local_now_us);
                self.enqueue(Job::Settle {
                    s: Box::new(s),
                    now,
                });
            }
            Via::Local | Via::Open => {
                if via == Via::Local {
                    sh.local.settle(&s, local_now_us);
                }
                // The spend happened: Redis must count it too (the fallback already does for
                // its own admissions; an open one is added to it here).
                if let Some(b) = s.request.budget {
                    if via == Via::Open {
                        let m = s.actual_cost_micros;
                        sh.local.add_spend(&s.request.tenant, Period::Day, b.day, m);
                        sh.local
                            .add_spend(&s.request.tenant, Period::Month, b.month, m);
                    }
                    if s.actual_cost_micros > 0 {
                        self.enqueue(Job::Spend {
                            tenant: s.request.tenant.clone(),
                            day: b.day,
                            month: b.month,
                            micros: s.actual_cost_micros,
                        });
                    }
                }
            }
        }
    }

    /// The upstream reported `remaining` in dimension `d` of an org-pool scope: lower that
    /// bucket (never raise it), in Redis and, at the fallback share, in the fallback.
    pub fn observe(&self, scope: &Scope, d: Dimension, remaining: u64) {
        let now = self.shared.local_now.load(Ordering::Relaxed);
        self.observe_at(scope, d, remaining, now);
    }

    /// [`RedisBackend::observe`] at the caller's time `local_now_us`.
    pub fn observe_at(&self, scope: &Scope, d: Dimension, remaining: u64, local_now_us: u64) {
        if scope.kind != ScopeKind::Org {
            return;
        }
        let sh = &self.shared;
        let share = sh.opts.fallback_share;
        let mut local_scope = scope.clone();
        local_scope.rates = scale_rates(&scope.rates, share);
        sh.local
            .observe(&local_scope, d, scale(remaining, share), local_now_us);
        if self.is_up() {
            self.enqueue(Job::Observe {
                scope: Box::new(scope.clone()),
                dim: d,
                remaining,
                now: sh.opts.caller_clock.then_some(local_now_us),
            });
        }
    }

    /// Seed a tenant's spend in `period` number `at` (from the ledger, at startup): set in
    /// Redis only if no replica has yet (`SET NX`; queued until Redis is reachable), and added
    /// to the fallback's.
    pub async fn add_spend(&self, tenant: &str, period: Period, at: u32, micros: u64) {
        let sh = &self.shared;
        sh.local.add_spend(tenant, period, at, micros);
        let key = self.spend_key(tenant, period, at);
        let ttl_ms = match period {
            Period::Day => DAY_TTL_MS,
            Period::Month => MONTH_TTL_MS,
        };
        sh.wait_started().await;
        if let Some(live) = sh.live.load_full() {
            let mut conn = live.conn.clone();
            let mut cmd = ::redis::cmd("SET");
            cmd.arg(&key)
                .arg(micros.min(MAX_MICROS))
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms);
            let call = cmd.query_async::<Option<String>>(&mut conn);
            match tokio::time::timeout(sh.opts.timeout, call).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => sh.failed(&live, &CallError::Redis(e), "spend seed"),
                Err(_) => sh.failed(&live, &CallError::Timeout(sh.opts.timeout), "spend seed"),
            }
        }
        self.enqueue(Job::Seed {
            key,
            micros,
            ttl_ms,
        });
    }

    /// Drop a tenant's spend for `day` and `month` (it was deleted: a tenant created later
    /// under its name starts from zero), in the fallback now and in Redis through the job
    /// queue, after the spend already queued (so none of it comes back).
    pub fn forget_spend(&self, tenant: &str, day: u32, month: u32) {
        self.shared.local.forget_spend(tenant);
        self.enqueue(Job::Forget {
            keys: vec![
                self.spend_key(tenant, Period::Day, day),
                self.spend_key(tenant, Period::Month, month),
            ],
        });
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

    /// Wait until every job queued so far has reached Redis (true), or Redis is down, or
    /// `within` has passed (false). For graceful shutdown and tests.
    pub async fn flush(&self, within: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.jobs.try_send(Job::Flush(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(within, rx).await, Ok(Ok(true)))
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

    /// The Redis key of a scope's buckets.
    pub fn scope_key(&self, tenant: &str, scope: &Scope) -> String {
        scope_key(&self.shared.opts.prefix, tenant, scope)
    }

    /// The Redis key of a tenant's spend counter.
    pub fn spend_key(&self, tenant: &str, period: Period, at: u32) -> String {
        spend_key(&self.shared.opts.prefix, tenant, period, at)
    }

    fn now_arg(&self, local_now_us: u64) -> String {
        now_arg(&self.shared.opts, Some(local_now_us))
    }

    fn enqueue(&self, job: Job) {
        let sh = &self.shared;
        sh.queued.fetch_add(1, Ordering::Relaxed);
        if self.jobs.try_send(job).is_err() {
            sh.dropped.fetch_add(1, Ordering::Relaxed);
            sh.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Shared {
    /// Until the first connection attempt has ended (bounded by the timeout), so a call made
    /// just after startup uses Redis rather than the fallback.
    async fn wait_started(&self) {
        let started = *self.started.borrow();
        if !started {
            let mut rx = self.started.subscribe();
            let _ = tokio::time::timeout(self.opts.timeout, rx.wait_for(|s| *s)).await;
        }
    }

    /// A call on `live` failed: count it, and on an outage mark Redis down (once per outage,
    /// logged) and wake the reconnect task.
    fn failed(&self, live: &Live, e: &CallError, what: &str) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        if !e.is_outage() {
            // Redis answered, wrongly: a reconnect would not help. Logged sparingly, as it
            // would repeat on every call.
            if n.is_multiple_of(1000) {
                tracing::error!(error = %e, what, "Redis limiter call failed; answering by fail_mode");
            }
            return;
        }
        let current = self.live.load();
        let same = current
            .as_ref()
            .is_some_and(|c| c.generation == live.generation);
        if same {
            let prev = self.live.swap(None);
            if prev.is_some() {
                self.outages.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    error = %e,
                    what,
                    fail_mode = ?self.opts.fail_mode,
                    "Redis limiter unreachable; falling back until it answers"
                );
                self.wake.notify_one();
            }
        }
    }

    async fn try_connect(&self, generation: u64) -> Result<Live, CallError> {
        let Some(client) = &self.client else {
            return Err(CallError::Reply("invalid Redis URL".into()));
        };
        let t = self.opts.timeout;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(t))
            .set_response_timeout(Some(t));
        let bounded = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            ::redis::cmd("PING").query_async::<()>(&mut conn).await?;
            // Load the scripts now so the first EVALSHA of each finds it (one round trip).
            for s in [
                &self.scripts.admit,
                &self.scripts.settle,
                &self.scripts.observe,
            ] {
                s.load_async(&mut conn).await?;
            }
            Ok::<_, CallError>(conn)
        };
        match tokio::time::timeout(t * 4, bounded).await {
            Ok(Ok(conn)) => Ok(Live { generation, conn }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CallError::Timeout(t * 4)),
        }
    }
}

/// Connect, and reconnect every [`RETRY_EVERY`] while Redis is down.
async fn reconnect_loop(sh: Arc<Shared>) {
    let mut generation = 0u64;
    let mut first = true;
    let mut logged = false;
    loop {
        if sh.shutdown.load(Ordering::SeqCst) {
            sh.live.store(None);
            return;
        }
        if sh.live.load().is_some() {
            sh.wake.notified().await;
            continue;
        }
        generation += 1;
        match sh.try_connect(generation).await {
            Ok(live) => {
                sh.live.store(Some(Arc::new(live)));
                if first {
                    tracing::info!(url = %sluice_core::redact_url(&sh.opts.url), "Redis limiter connected");
                } else {
                    tracing::info!(url = %sluice_core::redact_url(&sh.opts.url), "Redis limiter reachable again; using it");
                }
                logged = false;
            }
            Err(e) => {
                if first && !logged {
                    sh.outages.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        url = %sluice_core::redact_url(&sh.opts.url),
                        error = %e,
                        fail_mode = ?sh.opts.fail_mode,
                        "Redis limiter unreachable at startup; falling back until it answers"
                    );
                    logged = true;
                }
            }
        }
        if first {
            first = false;
            sh.started.send_replace(true);
        }
        if sh.live.load().is_none() {
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}

/// Apply queued jobs to Redis, many per round trip; keep them while Redis is down.
async fn job_loop(sh: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut open = true;
    loop {
        if pending.is_empty() {
            if !open {
                return;
            }
            match rx.recv().await {
                Some(j) => admit_job(&sh, &mut pending, j),
                None => return,
            }
        }
        while let Ok(j) = rx.try_recv() {
            admit_job(&sh, &mut pending, j);
        }
        let Some(live) = sh.live.load_full() else {
            // Down: nothing can be flushed; wait for a new job or the next look.
            answer_flushes(&mut pending, false);
            if pending.is_empty() {
                continue;
            }
            tokio::select! {
                j = rx.recv(), if open => match j {
                    Some(j) => admit_job(&sh, &mut pending, j),
                    None => open = false,
                },
                () = tokio::time::sleep(RETRY_EVERY) => {}
            }
            if sh.shutdown.load(Ordering::SeqCst) && !open {
                return;
            }
            continue;
        };
        // Flushes at the front are answered once everything before them has gone.
        while let Some(Job::Flush(_)) = pending.front() {
            if let Some(Job::Flush(tx)) = pending.pop_front() {
                let _ = tx.send(true);
            }
        }
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            match pending.front() {
                None | Some(Job::Flush(_)) => break,
                Some(_) => {
                    if let Some(j) = pending.pop_front() {
                        batch.push(j);
                    }
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        match run_batch(&sh, &live, &batch).await {
            Ok(()) => {
                sh.done.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(e) if e.is_outage() => {
                // Unknown how much of the batch was applied; replaying it all errs toward
                // the stricter side for charges and is capped at capacity for refunds.
                sh.failed(&live, &e, "settlement");
                for j in batch.into_iter().rev() {
                    pending.push_front(j);
                }
            }
            Err(e) => {
                sh.failed(&live, &e, "settlement");
                sh.done.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

fn admit_job(sh: &Shared, pending: &mut VecDeque<Job>, j: Job) {
    if !matches!(j, Job::Flush(_)) && pending.len() >= BUFFER {
        sh.dropped.fetch_add(1, Ordering::Relaxed);
        sh.done.fetch_add(1, Ordering::Relaxed);
        return;
    }
    pending.push_back(j);
}

/// Answer every flush waiting in `pending` with `ok` (and take them out).
fn answer_flushes(pending: &mut VecDeque<Job>, ok: bool) {
    if !pending.iter().any(|j| matches!(j, Job::Flush(_))) {
        return;
    }
    for j in std::mem::take(pending) {
        match j {
            Job::Flush(tx) => {
                let _ = tx.send(ok);
            }
            j => pending.push_back(j),
        }
    }
}

/// Send one batch of jobs as one pipeline. Each job is one command whose reply is kept (its
/// other commands are ignored); a NOSCRIPT (Redis lost its script cache without the
/// connection breaking) reloads the scripts and resends the jobs that met it.
async fn run_batch(sh: &Shared, live: &Live, batch: &[Job]) -> Result<(), CallError> {
    let t = sh.opts.timeout;
    let mut conn = live.conn.clone();
    let mut todo: Vec<&Job> = batch.iter().collect();
    for attempt in 0..2 {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        for j in &todo {
            add_job(sh, &mut pipe, j);
        }
        let call = pipe.query_async::<Vec<::redis::RedisResult<::redis::Value>>>(&mut conn);
        // A big batch may take longer than one admission: allow a little per job.
        let within = t + Duration::from_micros(50 * todo.len() as u64);
        let results = match tokio::time::timeout(within, call).await {
            Ok(r) => r?,
            Err(_) => return Err(CallError::Timeout(within)),
        };
        let mut again = Vec::new();
        let mut first_err = None;
        for (j, r) in todo.iter().zip(results) {
            if let Err(e) = r {
                if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) && attempt == 0 {
                    again.push(*j);
                } else if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(CallError::Redis(e));
        }
        if again.is_empty() {
            return Ok(());
        }
        for s in [&sh.scripts.settle, &sh.scripts.observe] {
            match tokio::time::timeout(t, s.load_async(&mut conn)).await {
                Ok(r) => {
                    r?;
                }
                Err(_) => return Err(CallError::Timeout(t)),
            }
        }
        todo = again;
    }
    Ok(())
}

fn add_job(sh: &Shared, pipe: &mut ::redis::Pipeline, j: &Job) {
    let prefix = &sh.opts.prefix;
    match j {
        Job::Settle { s, now } => {
            let req = &s.request;
            let n = req.scopes.len();
            let keys = n + if req.budget.is_some() { 2 } else { 0 };
            pipe.cmd("EVALSHA")
                .arg(sh.scripts.settle.get_hash())
                .arg(keys);
            for sc in req.scopes.iter() {
                pipe.arg(scope_key(prefix, &req.tenant, sc));
            }
            if let Some(b) = req.budget {
                pipe.arg(spend_key(prefix, &req.tenant, Period::Day, b.day))
                    .arg(spend_key(prefix, &req.tenant, Period::Month, b.month));
            }
            pipe.arg(now_arg(&sh.opts, *now)).arg(n);
            for d in [req.demand, s.actual] {
                pipe.arg(tokens(d.requests))
                    .arg(tokens(d.input_tokens))
                    .arg(tokens(d.output_tokens));
            }
            match req.budget {
                Some(b) => pipe
                    .arg(1)
                    .arg(micros(b.cost_micros))
                    .arg(micros(s.actual_cost_micros)),
                None => pipe.arg(0).arg(0).arg(0),
            };
            for sc in req.scopes.iter() {
                for d in Dimension::ALL {
                    push_rate(pipe, sc.rates.get(d));
                }
            }
        }
        Job::Spend {
            tenant,
            day,
            month,
            micros: m,
        } => {
            let dk = spend_key(prefix, tenant, Period::Day, *day);
            let mk = spend_key(prefix, tenant, Period::Month, *month);
            let m = micros(*m);
            pipe.cmd("INCRBY").arg(&dk).arg(m);
            pipe.cmd("PEXPIRE").arg(&dk).arg(DAY_TTL_MS).ignore();
            pipe.cmd("INCRBY").arg(&mk).arg(m).ignore();
            pipe.cmd("PEXPIRE").arg(&mk).arg(MONTH_TTL_MS).ignore();
        }
        Job::Observe {
            scope,
            dim,
            remaining,
            now,
        } => {
            pipe.cmd("EVALSHA")
                .arg(sh.scripts.observe.get_hash())
                .arg(1)
                .arg(scope_key(prefix, "", scope))
                .arg(now_arg(&sh.opts, *now))
                .arg(dim_index(*dim) + 1)
                .arg(tokens(*remaining));
            for d in Dimension::ALL {
                push_rate(pipe, scope.rates.get(d));
            }
        }
        Job::Seed {
            key,
            micros: m,
            ttl_ms,
        } => {
            pipe.cmd("SET")
                .arg(key)
                .arg(micros(*m))
                .arg("NX")
                .arg("PX")
                .arg(*ttl_ms);
        }
        Job::Forget { keys } => {
            pipe.cmd("DEL").arg(keys);
        }
        // Never batched (see job_loop); a harmless command keeps replies aligned if it were.
        Job::Flush(_) => {
            pipe.cmd("PING");
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

fn now_arg(opts: &RedisOptions, local_now_us: Option<u64>) -> String {
    match local_now_us {
        Some(t) if opts.caller_clock => t.to_string(),
        _ => String::new(),
    }
}

/// `{<prefix>:t:<tenant>}` for a tenant's own scope, `{<prefix>:t:<tenant>}:c:<class>` for
/// its scope of a class (every key of a tenant in one hash slot), `{<prefix>:o:<class>}` for
/// an org pool.
fn scope_key(prefix: &str, tenant: &str, scope: &Scope) -> String {
    match scope.kind {
        ScopeKind::Org => format!("{{{prefix}:{}}}", scope.key),
        ScopeKind::Tenant | ScopeKind::TenantClass => {
            let tag = Scope::tenant_key(tenant);
            match scope.key.strip_prefix(tag.as_str()) {
                Some(rest) if rest.is_empty() || rest.starts_with(':') => {
                    format!("{{{prefix}:{tag}}}{rest}")
                }
                // A scope key not under the tenant's (not made by Scope::*_key): still in the
                // tenant's slot.
                _ => format!("{{{prefix}:{tag}}}:{}", scope.key),
            }
        }
    }
}

fn spend_key(prefix: &str, tenant: &str, period: Period, at: u32) -> String {
    let p = match period {
        Period::Day => 'd',
        Period::Month => 'm',
    };
    format!("{{{prefix}:t:{tenant}}}:spend:{p}:{at}")
}

fn tokens(n: u64) -> u64 {
    n.min(MAX_TOKENS + 1)
}

fn micros(n: u64) -> u64 {
    n.min(MAX_MICROS)
}

fn micros_i64(n: u64) -> i64 {
    i64::try_from(micros(n)).unwrap_or(i64::MAX)
}

fn rate_args(r: Option<Rate>) -> (i64, i64) {
    match r {
        Some(r) => {
            let c = |n: u64| i64::try_from(n.min(MAX_TOKENS)).unwrap_or(0);
            (c(r.per_minute), c(r.burst))
        }
        None => (-1, -1),
    }
}

fn push_rate(pipe: &mut ::redis::Pipeline, r: Option<Rate>) {
    let (pm, burst) = rate_args(r);
    pipe.arg(pm).arg(burst);
}

fn push_rates(inv: &mut ::redis::ScriptInvocation<'_>, rates: &Rates) {
    for d in Dimension::ALL {
        let (pm, burst) = rate_args(rates.get(d));
        inv.arg(pm).arg(burst);
    }
}

fn dim_index(d: Dimension) -> usize {
    match d {
        Dimension::Requests => 0,
        Dimension::InputTokens => 1,
        Dimension::OutputTokens => 2,
    }
}

fn dim_of(i: i64) -> Result<Dimension, CallError> {
    usize::try_from(i)
        .ok()
        .and_then(|i| Dimension::ALL.get(i).copied())
        .ok_or_else(|| CallError::Reply(format!("dimension {i}")))
}

fn u(i: i64) -> u64 {
    u64::try_from(i).unwrap_or(0)
}

/// The admission script's reply: the outcome and, with a budget, the day's and month's spend.
fn parse_admit(raw: &[i64], n: usize) -> Result<(Outcome, Option<(u64, u64)>), CallError> {
    const HEAD: usize = 7;
    if raw.len() != HEAD + 9 * n {
        return Err(CallError::Reply(format!(
            "{} numbers for {n} scopes",
            raw.len()
        )));
    }
    let (status, a, b, c) = (raw[0], raw[1], raw[2], raw[3]);
    let scope = |a: i64| -> Result<usize, CallError> {
        usize::try_from(a)
            .ok()
            .filter(|&s| s < n)
            .ok_or_else(|| CallError::Reply(format!("scope {a}")))
    };
    let result = match status {
        0 => Ok(()),
        1 => Err(Denial::Wait {
            scope: scope(a)?,
            dimension: dim_of(b)?,
            retry_after_us: if c < 0 { u64::MAX } else { u(c) },
        }),
        2 => Err(Denial::NeverFits {
            scope: scope(a)?,
            dimension: dim_of(b)?,
        }),
        3 => Err(Denial::Budget {
            period: if a == 0 { Period::Day } else { Period::Month },
            limit_micros: u(b),
            spent_micros: u(c),
        }),
        s => return Err(CallError::Reply(format!("status {s}"))),
    };
    let spent = (raw[4] >= 0 && raw[5] >= 0).then(|| (u(raw[4]), u(raw[5])));
    let views = raw[HEAD..]
        .chunks_exact(9)
        .map(|v| {
            let one = |o: usize| {
                (v[o] >= 0).then(|| BucketView {
                    limit: u(v[o]),
                    remaining: u(v[o + 1]),
                    full_in_us: if v[o + 2] < 0 { u64::MAX } else { u(v[o + 2]) },
                })
            };
            ScopeView {
                requests: one(0),
                input_tokens: one(3),
                output_tokens: one(6),
            }
        })
        .collect();
    Ok((Outcome { result, views }, spent))
}

/// Raise the fallback's spend of `tenant` in `period` number `at` to `micros` (never lower it:
/// the fallback may have admitted calls Redis has not heard of yet).
fn raise_spend(local: &LocalBackend, tenant: &str, period: Period, at: u32, micros: u64) {
    let sp = local.spend(tenant);
    let have = match period {
        Period::Day if sp.day == at => sp.day_micros,
        Period::Month if sp.month == at => sp.month_micros,
        _ => 0,
    };
    if micros > have {
        local.add_spend(tenant, period, at, micros - have);
    }
}

/// `n` scaled to `share` of it, at least 1 when `n` is not 0 (a tiny limit times a small share
/// must not become "nothing ever").
fn scale(n: u64, share: f64) -> u64 {
    if n == 0 {
        return 0;
    }
    let share = if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        1.0
    };
    // f64 holds every realistic limit exactly; the product is floored.
    let scaled = (n as f64 * share).floor();
    if scaled < 1.0 {
        1
    } else if scaled >= u64::MAX as f64 {
        u64::MAX
    } else {
        scaled as u64
    }
}

fn scale_rates(r: &Rates, share: f64) -> Rates {
    let one = |r: Option<Rate>| {
        r.map(|r| Rate {
            per_minute: scale(r.per_minute, share),
            burst: scale(r.burst, share),
        })
    };
    Rates {
        requests: one(r.requests),
        input_tokens: one(r.input_tokens),
        output_tokens: one(r.output_tokens),
    }
}

fn scale_request(req: &AdmitRequest, share: f64) -> AdmitRequest {
    let mut r = req.clone();
    r.scopes = req
        .scopes
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.rates = scale_rates(&s.rates, share);
            s
        })
        .collect();
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn scope(kind: ScopeKind, key: &str) -> Scope {
        Scope::new(kind, key, "x", Rates::default(), 0)
    }

    #[test]
    fn keys_share_the_tenant_hash_tag() {
        let t = scope(ScopeKind::Tenant, &Scope::tenant_key("web"));
        let c = scope(
            ScopeKind::TenantClass,
            &Scope::tenant_class_key("web", "opus"),
        );
        let o = scope(ScopeKind::Org, &Scope::org_key("opus"));
        assert_eq!(scope_key("p", "web", &t), "{p:t:web}");
        assert_eq!(scope_key("p", "web", &c), "{p:t:web}:c:opus");
        assert_eq!(scope_key("p", "web", &o), "{p:o:opus}");
        // Another tenant's key whose name starts with this one's stays distinct.
        let other = scope(
            ScopeKind::TenantClass,
            &Scope::tenant_class_key("webby", "x"),
        );
        assert_eq!(scope_key("p", "web", &other), "{p:t:web}:t:webby:c:x");
        assert_eq!(spend_key("p", "web", Period::Day, 7), "{p:t:web}:spend:d:7");
        assert_eq!(
            spend_key("p", "web", Period::Month, 9),
            "{p:t:web}:spend:m:9"
        );
    }

    #[test]
    fn scaling_keeps_at_least_one() {
        assert_eq!(scale(100, 0.5), 50);
        assert_eq!(scale(1, 0.1), 1);
        assert_eq!(scale(0, 0.5), 0);
        assert_eq!(scale(10, f64::NAN), 10);
        assert_eq!(scale(10, 3.0), 10);
    }

    #[test]
    fn a_short_reply_is_an_error_not_a_panic() {
        assert!(parse_admit(&[0, 0, 0], 1).is_err());
        assert!(parse_admit(&[1, 5, 0, 10, -1, -1, 0], 0).is_err());
        assert!(parse_admit(&[9, 0, 0, 0, -1, -1, 0], 0).is_err());
    }
}
