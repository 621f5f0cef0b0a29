//! The in-process backend: bucket state in a sharded map of short mutexes. An admission locks
//! the shards of its scopes in index order (so two admissions can never deadlock), checks and
//! debits everything, and unlocks: a few hundred nanoseconds, never across an `.await`.
//!
//! It is also the fallback every replica uses while Redis is unreachable (with each limit
//! scaled to the replica's share).

use crate::backend::{AdmitRequest, Denial, Outcome, Period, ScopeKind, ScopeView, Settlement};
use crate::{Buckets, Dimension, admit_keeping, settle};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};

const SHARDS: usize = 16;

/// A tenant's spend in the current day and month (micro-dollars, reserved and settled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    /// The UTC day these numbers are for.
    pub day: u32,
    /// Spent that day.
    pub day_micros: u64,
    /// The UTC month these numbers are for.
    pub month: u32,
    /// Spent that month.
    pub month_micros: u64,
}

impl Spend {
    fn roll(&mut self, day: u32, month: u32) {
        if self.day != day {
            self.day = day;
            self.day_micros = 0;
        }
        if self.month != month {
            self.month = month;
            self.month_micros = 0;
        }
    }
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<Box<str>, Buckets>,
    spend: HashMap<Box<str>, Spend>,
}

/// The in-process limiter state.
pub struct LocalBackend {
    shards: Vec<Mutex<Shard>>,
    hasher: std::hash::RandomState,
}

impl Default for LocalBackend {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding a shard cannot leave a bucket half-updated in a way that matters
    // more than refusing every later call would: keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LocalBackend {
    /// Empty state: every bucket starts full when first used.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Lock every shard `keys` live in, in index order. Returns the guards and, per key, the
    /// position of its guard.
    fn lock_all<'a>(&'a self, keys: &[&str]) -> (Vec<MutexGuard<'a, Shard>>, Vec<usize>) {
        let idx: Vec<usize> = keys.iter().map(|k| self.shard_of(k)).collect();
        let mut order = idx.clone();
        order.sort_unstable();
        order.dedup();
        let guards = order.iter().map(|&i| lock(&self.shards[i])).collect();
        let pos = idx
            .iter()
            .map(|i| order.iter().position(|o| o == i).unwrap_or(0))
            .collect();
        (guards, pos)
    }

    /// Admit (or refuse) `req` at `now_us` (microseconds on the caller's monotonic clock).
    pub fn admit(&self, req: &AdmitRequest, now_us: u64) -> Outcome {
        let mut keys: Vec<&str> = req.scopes.iter().map(|s| &*s.key).collect();
        let spend_key = crate::backend::Scope::tenant_key(&req.tenant);
        keys.push(&spend_key);
        let (mut guards, pos) = self.lock_all(&keys);

        // Take each scope's buckets out of its shard for the duration (cheap moves), so the
        // kernel can see them all at once; they go back below whatever happens.
        let mut taken: Vec<Buckets> = req
            .scopes
            .iter()
            .zip(&pos)
            .map(|(s, &p)| {
                let mut b = guards[p]
                    .buckets
                    .remove(&*s.key)
                    .unwrap_or_else(|| s.rates.full_buckets(now_us));
                s.rates.apply_to(&mut b, now_us);
                b
            })
            .collect();
        let keep: Vec<u32> = req.scopes.iter().map(|s| s.keep_free_ppm).collect();

        let spend_pos = pos[req.scopes.len()];
        let budget_denial = req.budget.and_then(|b| {
            let sp = guards[spend_pos]
                .spend
                .entry(Box::from(&*req.tenant))
                .or_default();
            sp.roll(b.day, b.month);
            budget_denial(sp, &b)
        });

        let result = match budget_denial {
            Some(d) => {
                // Refill so the views are current, without debiting.
                for b in &mut taken {
                    refill_all(b, now_us);
                }
                Err(d)
            }
            None => {
                let mut refs: Vec<&mut Buckets> = taken.iter_mut().collect();
                admit_keeping(&mut refs, &keep, &req.demand, now_us).map_err(Denial::from)
            }
        };
        if result.is_ok()
            && let Some(b) = req.budget
        {
            let sp = guards[spend_pos]
                .spend
                .entry(Box::from(&*req.tenant))
                .or_default();
            sp.day_micros = sp.day_micros.saturating_add(b.cost_micros);
            sp.month_micros = sp.month_micros.saturating_add(b.cost_micros);
        }
        let views = taken.iter().map(ScopeView::of).collect();
        for ((s, &p), b) in req.scopes.iter().zip(&pos).zip(taken) {
            guards[p].buckets.insert(Box::from(&*s.key), b);
        }
        Outcome { result, views }
    }

    /// Correct an admitted call's reservation to the truth.
    pub fn settle(&self, s: &Settlement, now_us: u64) {
        let req = &s.request;
        let mut keys: Vec<&str> = req.scopes.iter().map(|s| &*s.key).collect();
        let spend_key = crate::backend::Scope::tenant_key(&req.tenant);
        keys.push(&spend_key);
        let (mut guards, pos) = self.lock_all(&keys);
        for (scope, &p) in req.scopes.iter().zip(&pos) {
            if let Some(b) = guards[p].buckets.get_mut(&*scope.key) {
                settle(&mut [b], &req.demand, &s.actual, now_us);
            }
        }
        if let Some(b) = req.budget
            && let Some(sp) = guards[pos[req.scopes.len()]].spend.get_mut(&*req.tenant)
        {
            // Only the period the reservation was made in is corrected: a call that straddles
            // midnight is charged to the day it was admitted in.
            let fix = |v: &mut u64| {
                *v = v
                    .saturating_sub(b.cost_micros)
                    .saturating_add(s.actual_cost_micros);
            };
            if sp.day == b.day {
                fix(&mut sp.day_micros);
            }
            if sp.month == b.month {
                fix(&mut sp.month_micros);
            }
        }
    }

    /// Seed a tenant's spend (from the ledger, at startup). Adds to what is there.
    pub fn add_spend(&self, tenant: &str, period: Period, at: u32, micros: u64) {
        let key = crate::backend::Scope::tenant_key(tenant);
        let mut g = lock(&self.shards[self.shard_of(&key)]);
        let sp = g.spend.entry(Box::from(tenant)).or_default();
        match period {
            Period::Day => {
                if sp.day != at {
                    sp.day = at;
                    sp.day_micros = 0;
                }
                sp.day_micros = sp.day_micros.saturating_add(micros);
            }
            Period::Month => {
                if sp.month != at {
                    sp.month = at;
                    sp.month_micros = 0;
                }
                sp.month_micros = sp.month_micros.saturating_add(micros);
            }
        }
    }

    /// A tenant's spend as the limiter sees it.
    pub fn spend(&self, tenant: &str) -> Spend {
        let key = crate::backend::Scope::tenant_key(tenant);
        let g = lock(&self.shards[self.shard_of(&key)]);
        g.spend.get(tenant).copied().unwrap_or_default()
    }

    /// The upstream reported `remaining` of `limit` in dimension `d` of an org-pool scope:
    /// never believe we have more room than it says.
    pub fn observe(
        &self,
        scope: &crate::backend::Scope,
        d: Dimension,
        remaining: u64,
        now_us: u64,
    ) {
        if scope.kind != ScopeKind::Org {
            return;
        }
        let mut g = lock(&self.shards[self.shard_of(&scope.key)]);
        let b = g
            .buckets
            .entry(Box::from(&*scope.key))
            .or_insert_with(|| scope.rates.full_buckets(now_us));
        scope.rates.apply_to(b, now_us);
        if let Some(bucket) = b.get_mut_dim(d) {
            bucket.refill(now_us);
            bucket.lower_to(i64::try_from(remaining).unwrap_or(i64::MAX));
        }
    }

    /// The current view of one scope (for headers on calls that were never admitted, metrics).
    pub fn view(&self, scope: &crate::backend::Scope, now_us: u64) -> ScopeView {
        let mut g = lock(&self.shards[self.shard_of(&scope.key)]);
        match g.buckets.get_mut(&*scope.key) {
            Some(b) => {
                scope.rates.apply_to(b, now_us);
                refill_all(b, now_us);
                ScopeView::of(b)
            }
            None => ScopeView::of(&scope.rates.full_buckets(now_us)),
        }
    }
}

fn refill_all(b: &mut Buckets, now_us: u64) {
    for d in Dimension::ALL {
        if let Some(x) = b.get_mut_dim(d) {
            x.refill(now_us);
        }
    }
}

fn budget_denial(sp: &crate::local::Spend, b: &crate::backend::BudgetCheck) -> Option<Denial> {
    let checks = [
        (Period::Day, b.daily_micros, sp.day_micros),
        (Period::Month, b.monthly_micros, sp.month_micros),
    ];
    for (period, limit, spent) in checks {
        if let Some(limit) = limit
            && spent.saturating_add(b.cost_micros) > limit
        {
            return Some(Denial::Budget {
                period,
                limit_micros: limit,
                spent_micros: spent,
            });
        }
    }
    None
}
