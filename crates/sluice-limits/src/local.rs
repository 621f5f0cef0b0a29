//! The in-process backend: bucket state in a sharded map of short mutexes. An admission locks
//! the shards of its scopes in index order (so two admissions can never deadlock), checks and
//! debits everything, and unlocks: a few hundred nanoseconds, never across an `.await`.
//!
//! It is also the fallback every replica uses while Redis is unreachable (with each limit
//! scaled to the replica's share).

use crate::backend::{AdmitRequest, Denial, Outcome, Period, ScopeKind, ScopeView, Settlement};
use crate::{Buckets, Dimension, admit_keeping, settle};
use foldhash::HashMap;
use smallvec::SmallVec;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
    spend: HashMap<Arc<str>, Spend>,
}

/// The in-process limiter state.
pub struct LocalBackend {
    shards: Vec<Mutex<Shard>>,
    hasher: foldhash::fast::RandomState,
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
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Lock the shards of every scope and of the tenant's spend, in index order (so two
    /// admissions can never deadlock). Returns the guards and, per scope (then the spend), the
    /// position of its guard. No allocation: this is the hot path.
    fn lock_all<'a>(
        &'a self,
        req: &AdmitRequest,
    ) -> (
        SmallVec<[MutexGuard<'a, Shard>; MAX_KEYS]>,
        [usize; MAX_KEYS],
    ) {
        let n = (req.scopes.len() + 1).min(MAX_KEYS);
        let mut idx = [0usize; MAX_KEYS];
        for (slot, s) in idx.iter_mut().zip(&req.scopes) {
            *slot = self.shard_of(&s.key);
        }
        idx[n - 1] = self.shard_of(&req.tenant);
        let mut order = idx;
        order[..n].sort_unstable();
        let mut distinct = 0;
        for i in 0..n {
            if i == 0 || order[i] != order[i - 1] {
                order[distinct] = order[i];
                distinct += 1;
            }
        }
        let mut guards = SmallVec::new();
        for &i in &order[..distinct] {
            guards.push(lock(&self.shards[i]));
        }
        let mut pos = [0usize; MAX_KEYS];
        for (p, i) in pos.iter_mut().zip(&idx[..n]) {
            *p = order[..distinct].iter().position(|o| o == i).unwrap_or(0);
        }
        (guards, pos)
    }

    /// Admit (or refuse) `req` at `now_us` (microseconds on the caller's monotonic clock).
    pub fn admit(&self, req: &AdmitRequest, now_us: u64) -> Outcome {
        let nscopes = req.scopes.len().min(MAX_KEYS - 1);
        let scopes = &req.scopes[..nscopes];
        let (mut guards, pos) = self.lock_all(req);

        // Take each scope's buckets (and key) out of its shard for the duration, so the kernel
        // can see them all at once; they go back below whatever happens, under the same key
        // allocation.
        let mut taken: SmallVec<[(Option<Box<str>>, Buckets); MAX_KEYS]> = scopes
            .iter()
            .zip(&pos)
            .map(|(s, &p)| {
                let (key, mut b) = match guards[p].buckets.remove_entry(&*s.key) {
                    Some((k, b)) => (Some(k), b),
                    None => (None, s.rates.full_buckets(now_us)),
                };
                s.rates.apply_to(&mut b, now_us);
                (key, b)
            })
            .collect();
        let mut keep = [0u32; MAX_KEYS];
        for (k, s) in keep.iter_mut().zip(scopes) {
            *k = s.keep_free_ppm;
        }

        // The tenant's spend, looked up once for the check and the debit.
        let spend_pos = pos[nscopes];
        let mut spend = req.budget.map(|b| {
            let sp = spend_entry(&mut guards[spend_pos], &req.tenant);
            sp.roll(b.day, b.month);
            (sp, b)
        });
        let budget_denial = spend.as_ref().and_then(|(sp, b)| budget_denial(sp, b));

        let result = match budget_denial {
            Some(d) => {
                // Refill so the views are current, without debiting.
                for (_, b) in &mut taken {
                    refill_all(b, now_us);
                }
                Err(d)
            }
            None => {
                let mut refs: SmallVec<[&mut Buckets; MAX_KEYS]> =
                    taken.iter_mut().map(|(_, b)| b).collect();
                admit_keeping(&mut refs, &keep[..nscopes], &req.demand, now_us)
                    .map_err(Denial::from)
            }
        };
        if result.is_ok()
            && let Some((sp, b)) = spend.as_mut()
        {
            sp.day_micros = sp.day_micros.saturating_add(b.cost_micros);
            sp.month_micros = sp.month_micros.saturating_add(b.cost_micros);
        }
        let views = taken.iter().map(|(_, b)| ScopeView::of(b)).collect();
        for ((s, &p), (key, b)) in scopes.iter().zip(&pos).zip(taken) {
            let key = key.unwrap_or_else(|| Box::from(&*s.key));
            guards[p].buckets.insert(key, b);
        }
        Outcome { result, views }
    }

    /// Correct an admitted call's reservation to the truth.
    pub fn settle(&self, s: &Settlement, now_us: u64) {
        let req = &s.request;
        let nscopes = req.scopes.len().min(MAX_KEYS - 1);
        let (mut guards, pos) = self.lock_all(req);
        for (scope, &p) in req.scopes[..nscopes].iter().zip(&pos) {
            if let Some(b) = guards[p].buckets.get_mut(&*scope.key) {
                settle(&mut [b], &req.demand, &s.actual, now_us);
            }
        }
        if let Some(b) = req.budget
            && let Some(sp) = guards[pos[nscopes]].spend.get_mut(&*req.tenant)
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
        let mut g = lock(&self.shards[self.shard_of(tenant)]);
        let sp = spend_entry(&mut g, &Arc::from(tenant));
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
        let g = lock(&self.shards[self.shard_of(tenant)]);
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
        if !g.buckets.contains_key(&*scope.key) {
            g.buckets
                .insert(Box::from(&*scope.key), scope.rates.full_buckets(now_us));
        }
        let Some(b) = g.buckets.get_mut(&*scope.key) else {
            return;
        };
        scope.rates.apply_to(b, now_us);
        if let Some(bucket) = b.get_mut(d) {
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

/// Most scopes of one admission (tenant, tenant-class, org) plus the tenant's spend.
const MAX_KEYS: usize = 4;

/// A tenant's spend entry (the key is the request's shared tenant name: no allocation).
fn spend_entry<'a>(shard: &'a mut Shard, tenant: &Arc<str>) -> &'a mut Spend {
    shard.spend.entry(tenant.clone()).or_default()
}

fn refill_all(b: &mut Buckets, now_us: u64) {
    for d in Dimension::ALL {
        if let Some(x) = b.get_mut(d) {
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
