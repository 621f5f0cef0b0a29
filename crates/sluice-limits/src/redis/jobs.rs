//! Work done off the request path: settlements, upstream observations and spend seeds and
//! deletions, queued to a background task that pipelines many per round trip and keeps them
//! while Redis is down.

use super::connection::{CallError, Live, RETRY_EVERY};
use super::fallback::{scale, scale_rates};
use super::keys::{
    DAY_TTL_MS, MONTH_TTL_MS, dim_index, micros, now_arg, push_rate, scope_key, spend_key, tokens,
};
use super::{MAX_MICROS, RedisBackend, Shared, Via};
use crate::Dimension;
use crate::backend::{Period, Scope, ScopeKind, Settlement};
use ::redis::{ErrorKind, ServerErrorKind};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Jobs kept for Redis while it is down at most; past that they are dropped and counted.
const BUFFER: usize = 100_000;

/// Jobs per pipelined round trip at most.
const BATCH: usize = 512;

/// Work for the background task.
pub(super) enum Job {
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

impl RedisBackend {
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

    /// Wait until every job queued so far has reached Redis (true), or Redis is down, or
    /// `within` has passed (false). For graceful shutdown and tests.
    pub async fn flush(&self, within: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.jobs.try_send(Job::Flush(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(within, rx).await, Ok(Ok(true)))
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

/// Apply queued jobs to Redis, many per round trip; keep them while Redis is down.
pub(super) async fn job_loop(sh: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
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
