//! The in-process backend: each scope's buckets behind their own short mutex, each tenant's
//! spend in a sharded map. An admission locks its scopes' buckets in address order (so two
//! admissions can never deadlock), then the tenant's spend, checks and debits everything, and
//! unlocks: a few hundred nanoseconds, never across an `.await`.
//!
//! A scope finds its buckets by key once and remembers them (its [`LocalSlot`]): the limiter
//! builds its scopes once per config snapshot, so the hot path hashes no bucket key at all.
//!
//! It is also the fallback every replica uses while Redis is unreachable (with each limit
//! scaled to the replica's share).

use crate::backend::{
    AdmitRequest, Denial, Outcome, Period, Scope, ScopeKind, ScopeView, Settlement, Views,
};
use crate::{Buckets, Dimension, admit_keeping, settle};
use foldhash::HashMap;
use smallvec::SmallVec;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

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

/// One scope's buckets.
type Cell = Mutex<Buckets>;

/// Where one in-process backend keeps a scope's buckets, remembered in the [`Scope`] the first
/// time that backend sees it.
#[derive(Default)]
pub struct LocalSlot(OnceLock<(usize, Arc<Cell>)>);

impl Clone for LocalSlot {
    /// A copy looks its buckets up again: it may be a scaled scope for another backend.
    fn clone(&self) -> Self {
        LocalSlot::default()
    }
}

impl PartialEq for LocalSlot {
    /// A cache, not part of what a scope is.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for LocalSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "LocalSlot(found)"
        } else {
            "LocalSlot"
        })
    }
}

/// A scope's buckets: borrowed from its slot, or (a scope another backend remembered first)
/// held here.
enum Held<'a> {
    Remembered(&'a Arc<Cell>),
    Found(Arc<Cell>),
}

impl std::ops::Deref for Held<'_> {
    type Target = Cell;
    fn deref(&self) -> &Cell {
        match self {
            Held::Remembered(c) => c,
            Held::Found(c) => c,
        }
    }
}

impl Held<'_> {
    /// Identity, and the order buckets are locked in.
    fn addr(&self) -> usize {
        std::ptr::from_ref::<Cell>(self).addr()
    }
}

/// The in-process limiter state.
pub struct LocalBackend {
    /// Tells this backend's slots from another's (the Redis fallback is a second backend).
    id: usize,
    /// Every scope's buckets by key (the slow path: a scope's first call, views, metrics).
    cells: Mutex<HashMap<Box<str>, Arc<Cell>>>,
    spend: Vec<Mutex<HashMap<Arc<str>, Spend>>>,
    hasher: foldhash::fast::RandomState,
}

impl Default for LocalBackend {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave a bucket half-updated in a way that matters
    // more than refusing every later call would: keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LocalBackend {
    /// Empty state: every bucket starts full when first used.
    pub fn new() -> Self {
        static IDS: AtomicUsize = AtomicUsize::new(1);
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            cells: Mutex::new(HashMap::default()),
            spend: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn spend_shard(&self, tenant: &str) -> &Mutex<HashMap<Arc<str>, Spend>> {
        &self.spend[(self.hasher.hash_one(tenant) as usize) % SHARDS]
    }

    /// The buckets of `scope`, created full at `now_us` if it has none yet.
    fn cell<'s>(&self, scope: &'s Scope, now_us: u64) -> Held<'s> {
        if let Some(c) = self.remembered(scope) {
            return Held::Remembered(c);
        }
        let c = lock(&self.cells)
            .entry(Box::from(&*scope.key))
            .or_insert_with(|| Arc::new(Mutex::new(scope.rates.full_buckets(now_us))))
            .clone();
        self.remember(scope, c)
    }

    /// The buckets of `scope`, if it has any.
    fn find<'s>(&self, scope: &'s Scope) -> Option<Held<'s>> {
        if let Some(c) = self.remembered(scope) {
            return Some(Held::Remembered(c));
        }
        let c = lock(&self.cells).get(&*scope.key).cloned()?;
        Some(self.remember(scope, c))
    }

    /// The buckets `scope` remembers, if it remembers this backend's.
    fn remembered<'s>(&self, scope: &'s Scope) -> Option<&'s Arc<Cell>> {
        scope
            .local
            .0
            .get()
            .filter(|(id, _)| *id == self.id)
            .map(|(_, c)| c)
    }

    /// Have `scope` remember `c` unless it already remembers another backend's buckets.
    fn remember<'s>(&self, scope: &'s Scope, c: Arc<Cell>) -> Held<'s> {
        if scope.local.0.get().is_none() {
            let _ = scope.local.0.set((self.id, c.clone()));
        }
        match self.remembered(scope) {
            Some(mine) => Held::Remembered(mine),
            None => Held::Found(c),
        }
    }

    /// Admit (or refuse) `req` at `now_us` (microseconds on the caller's monotonic clock).
    ///
    /// A scope listed twice (the limiter never does) counts once.
    pub fn admit(&self, req: &AdmitRequest, now_us: u64) -> Outcome {
        let scopes = &req.scopes[..];
        let held: SmallVec<[Held<'_>; 3]> = scopes.iter().map(|s| self.cell(s, now_us)).collect();
        // Each distinct cell locked once, in address order.
        let mut order: SmallVec<[usize; 3]> = (0..held.len()).collect();
        order.sort_unstable_by_key(|&i| held[i].addr());
        order.dedup_by_key(|i| held[*i].addr());
        let mut guards: SmallVec<[MutexGuard<'_, Buckets>; 3]> =
            order.iter().map(|&i| lock(&*held[i])).collect();
        let pos: SmallVec<[usize; 3]> = held
            .iter()
            .map(|h| {
                order
                    .iter()
                    .position(|&i| held[i].addr() == h.addr())
                    .unwrap_or(0)
            })
            .collect();

        // The buckets in request order (the order refusals name scopes in), rates brought
        // up to date (a reload may have changed them).
        let mut by_guard: SmallVec<[Option<&mut Buckets>; 3]> =
            guards.iter_mut().map(|g| Some(&mut **g)).collect();
        let mut refs: SmallVec<[&mut Buckets; 3]> = SmallVec::new();
        let mut keep: SmallVec<[u32; 3]> = SmallVec::new();
        let mut scope_of: SmallVec<[usize; 3]> = SmallVec::new();
        for (i, (s, &p)) in scopes.iter().zip(&pos).enumerate() {
            if let Some(b) = by_guard[p].take() {
                s.rates.apply_to(b, now_us);
                refs.push(b);
                keep.push(s.keep_free_ppm);
                scope_of.push(i);
            }
        }

        // The tenant's spend, looked up once for the check and the debit (locked after every
        // bucket, as everywhere).
        let mut spend_guard = req.budget.map(|_| lock(self.spend_shard(&req.tenant)));
        let mut spend = match (req.budget, spend_guard.as_mut()) {
            (Some(b), Some(g)) => spend_entry(g, &req.tenant).map(|sp| {
                sp.roll(b.day, b.month);
                (sp, b)
            }),
            _ => None,
        };
        let budget_denial = spend.as_ref().and_then(|(sp, b)| budget_denial(sp, b));

        let result = match budget_denial {
            Some(d) => {
                // Refill so the views are current, without debiting.
                for b in &mut refs {
                    refill_all(b, now_us);
                }
                Err(d)
            }
            None => admit_keeping(&mut refs, &keep, &req.demand, now_us)
                .map_err(|r| Denial::from(r).for_scope(|j| scope_of.get(j).copied().unwrap_or(j))),
        };
        if result.is_ok()
            && let Some((sp, b)) = spend.as_mut()
        {
            sp.day_micros = sp.day_micros.saturating_add(b.cost_micros);
            sp.month_micros = sp.month_micros.saturating_add(b.cost_micros);
        }
        drop(spend_guard);
        drop(refs);
        drop(by_guard);
        let views: Views = pos.iter().map(|&p| ScopeView::of(&guards[p])).collect();
        Outcome { result, views }
    }

    /// Correct an admitted call's reservation to the truth. Each bucket is corrected on its
    /// own (a settlement needs no all-or-nothing), so at most one lock is held at a time.
    pub fn settle(&self, s: &Settlement, now_us: u64) {
        let req = &s.request;
        let mut done: SmallVec<[usize; 3]> = SmallVec::new();
        for scope in req.scopes.iter() {
            let Some(c) = self.find(scope) else { continue };
            if done.contains(&c.addr()) {
                continue;
            }
            done.push(c.addr());
            settle(&mut [&mut *lock(&*c)], &req.demand, &s.actual, now_us);
        }
        if let Some(b) = req.budget
            && let Some(sp) = lock(self.spend_shard(&req.tenant)).get_mut(&*req.tenant)
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
        let mut g = lock(self.spend_shard(tenant));
        let Some(sp) = spend_entry(&mut g, &Arc::from(tenant)) else {
            return;
        };
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

    /// Drop a tenant's spend: it was deleted, and a tenant created later under its name
    /// must start from zero.
    pub fn forget_spend(&self, tenant: &str) {
        lock(self.spend_shard(tenant)).remove(tenant);
    }

    /// A tenant's spend as the limiter sees it.
    pub fn spend(&self, tenant: &str) -> Spend {
        lock(self.spend_shard(tenant))
            .get(tenant)
            .copied()
            .unwrap_or_default()
    }

    /// The upstream reported `remaining` of `limit` in dimension `d` of an org-pool scope:
    /// never believe we have more room than it says.
    pub fn observe(&self, scope: &Scope, d: Dimension, remaining: u64, now_us: u64) {
        if scope.kind != ScopeKind::Org {
            return;
        }
        let c = self.cell(scope, now_us);
        let mut b = lock(&*c);
        scope.rates.apply_to(&mut b, now_us);
        if let Some(bucket) = b.get_mut(d) {
            bucket.refill(now_us);
            bucket.lower_to(i64::try_from(remaining).unwrap_or(i64::MAX));
        }
    }

    /// Microseconds until `scope`'s request bucket has a request to spare (0: it has one now),
    /// taking nothing. `None` when the scope limits no requests, holds less than one (that is
    /// an admission's to explain) or has not been used yet (so it is full).
    pub fn request_wait_us(&self, scope: &Scope, now_us: u64) -> Option<u64> {
        let c = self.find(scope)?;
        let mut b = lock(&*c);
        scope.rates.apply_to(&mut b, now_us);
        let r = b.requests.as_mut().filter(|r| r.capacity() >= 1)?;
        r.refill(now_us);
        Some(r.wait_us(1))
    }

    /// The current view of one scope (for headers on calls that were never admitted, metrics).
    pub fn view(&self, scope: &Scope, now_us: u64) -> ScopeView {
        match self.find(scope) {
            Some(c) => {
                let mut b = lock(&*c);
                scope.rates.apply_to(&mut b, now_us);
                refill_all(&mut b, now_us);
                ScopeView::of(&b)
            }
            None => ScopeView::of(&scope.rates.full_buckets(now_us)),
        }
    }
}

/// A tenant's spend entry (the key is the request's shared tenant name: no allocation unless
/// the tenant is new).
fn spend_entry<'a>(
    shard: &'a mut HashMap<Arc<str>, Spend>,
    tenant: &Arc<str>,
) -> Option<&'a mut Spend> {
    if !shard.contains_key(&**tenant) {
        shard.insert(tenant.clone(), Spend::default());
    }
    shard.get_mut(&**tenant)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::backend::Rates;
    use crate::{Demand, Rate};

    fn scope(key: &str, rpm: u64) -> Scope {
        let rates = Rates {
            requests: Some(Rate::per_minute(rpm)),
            ..Rates::default()
        };
        Scope::new(ScopeKind::Tenant, key, "t", rates, 0)
    }

    fn req(scopes: Vec<Scope>) -> AdmitRequest {
        AdmitRequest {
            tenant: "t".into(),
            scopes: scopes.into(),
            demand: Demand {
                requests: 1,
                ..Demand::default()
            },
            budget: None,
        }
    }

    fn remaining(o: &Outcome, i: usize) -> u64 {
        o.views[i].requests.unwrap().remaining
    }

    #[test]
    fn a_remembered_scope_and_a_fresh_one_share_buckets() {
        let b = LocalBackend::new();
        let shared = req(vec![scope("t:a", 10)]);
        assert_eq!(remaining(&b.admit(&shared, 0), 0), 9);
        assert_eq!(remaining(&b.admit(&shared, 0), 0), 8);
        // A new snapshot's scope with the same key: the same buckets.
        assert_eq!(remaining(&b.admit(&req(vec![scope("t:a", 10)]), 0), 0), 7);
        assert_eq!(remaining(&b.admit(&shared, 0), 0), 6);
    }

    #[test]
    fn a_scope_remembered_by_one_backend_is_looked_up_by_another() {
        let (one, two) = (LocalBackend::new(), LocalBackend::new());
        let r = req(vec![scope("t:a", 10)]);
        assert_eq!(remaining(&one.admit(&r, 0), 0), 9);
        // The second backend has its own buckets, although the scope remembers the first's.
        for left in (6..10).rev() {
            assert_eq!(remaining(&two.admit(&r, 0), 0), left);
        }
        assert_eq!(remaining(&one.admit(&r, 0), 0), 8);
        let s = Settlement {
            request: r.clone(),
            actual: Demand::default(),
            actual_cost_micros: 0,
        };
        two.settle(&s, 0);
        assert_eq!(remaining(&two.admit(&r, 0), 0), 6, "refunded in its own");
        assert_eq!(remaining(&one.admit(&r, 0), 0), 7);
    }

    #[test]
    fn a_scope_listed_twice_counts_once() {
        let b = LocalBackend::new();
        let a = scope("t:a", 10);
        let r = req(vec![a.clone(), scope("t:b", 10), a]);
        let o = b.admit(&r, 0);
        assert_eq!(o.result, Ok(()));
        assert_eq!(o.views.len(), 3);
        assert_eq!(
            (remaining(&o, 0), remaining(&o, 1), remaining(&o, 2)),
            (9, 9, 9)
        );
        let s = Settlement {
            request: r.clone(),
            actual: Demand::default(),
            actual_cost_micros: 0,
        };
        b.settle(&s, 0);
        let o = b.admit(&req(vec![scope("t:a", 10)]), 0);
        assert_eq!(remaining(&o, 0), 9, "refunded once, charged once");
    }
}
