//! The output reservation: a recent high percentile of each tenant and model's output tokens.
//!
//! Reserving `max_tokens` would make a request with `max_tokens: 64000` unservable for a tenant
//! whose output-tokens-per-minute limit is 8,000, although most replies are a few hundred
//! tokens; the upstream itself moved away from that. Reserving what this tenant's calls to this
//! model actually produced lately (its 95th percentile by default) admits such a call, and
//! settlement charges or refunds the difference once the reply's usage is known.

use foldhash::{HashMap, HashMapExt as _};
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

const SHARDS: usize = 16;

/// How the output estimate learns (the `[limits]` knobs `output_percentile`, `output_window`
/// and `output_cold_default`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutputConfig {
    /// Percentile of recent outputs reserved (`output_percentile`, default 95).
    pub percentile: u8,
    /// Recent calls remembered per tenant and model (`output_window`, default 256).
    pub window: usize,
    /// Reserved before a tenant and model has history, capped by `max_tokens`
    /// (`output_cold_default`, default 1024). Not `max_tokens` itself, for the reason above.
    pub cold_default: u64,
    /// Until this many calls are seen, reserve at least `cold_default` (a first reply of 5
    /// tokens says little about the next one).
    pub min_samples: usize,
    /// The percentile is recomputed after this many new observations (a sort of `window`
    /// numbers), not on every call.
    pub recompute_every: usize,
    /// Most tenant and model pairs remembered; the least recently used is forgotten past it.
    pub max_entries: usize,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            percentile: 95,
            window: 256,
            cold_default: 1024,
            min_samples: 8,
            recompute_every: 16,
            max_entries: 4096,
        }
    }
}

/// One tenant and model's recent outputs. A call's permit keeps the slot it reserved from, so
/// settlement learns without looking the pair up again.
#[derive(Debug)]
pub struct OutputSlot {
    tenant: Box<str>,
    model: Box<str>,
    /// The learned reservation (read without the lock).
    learned: AtomicU64,
    /// The estimator's clock at the last observation (least recently used is forgotten).
    last_used: AtomicU64,
    ring: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    values: Vec<u32>,
    next: usize,
    seen: u64,
    since_recompute: usize,
}

impl OutputSlot {
    /// Output tokens to reserve: `min(max_tokens, learned)`.
    pub fn reserve(&self, max_tokens: u64) -> u64 {
        self.learned.load(Ordering::Relaxed).min(max_tokens)
    }
}

/// Per tenant and model learned output reservations. Thread-safe: sharded short locks.
#[derive(Debug)]
pub struct OutputEstimator {
    cfg: OutputConfig,
    shards: Vec<Mutex<HashMap<u64, Arc<OutputSlot>>>>,
    clock: AtomicU64,
    /// Keys live only in this process, so the fast seeded hash serves (the prefix hash, which
    /// must agree across replicas and releases, costs several times more on names this short).
    hasher: foldhash::fast::RandomState,
}

impl OutputEstimator {
    /// With the `[limits]` knobs and defaults for the rest.
    pub fn new(percentile: u8, window: usize, cold_default: u64) -> OutputEstimator {
        Self::with_config(OutputConfig {
            percentile,
            window,
            cold_default,
            ..OutputConfig::default()
        })
    }

    /// With `cfg` (a zero window or percentile is raised to 1).
    pub fn with_config(mut cfg: OutputConfig) -> OutputEstimator {
        cfg.window = cfg.window.max(1);
        cfg.percentile = cfg.percentile.clamp(1, 100);
        cfg.recompute_every = cfg.recompute_every.max(1);
        cfg.max_entries = cfg.max_entries.max(SHARDS);
        OutputEstimator {
            cfg,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            clock: AtomicU64::new(0),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn key(&self, tenant: &str, model: &str) -> u64 {
        self.hasher.hash_one((tenant, model))
    }

    fn shard(&self, key: u64) -> &Mutex<HashMap<u64, Arc<OutputSlot>>> {
        // The modulus keeps the index in range; truncation of the key is intended.
        #[allow(clippy::cast_possible_truncation)]
        &self.shards[(key % SHARDS as u64) as usize]
    }

    /// The slot of `tenant` and `model`, made (with the cold default) if they have none. A
    /// full shard forgets its least recently observed pair to make room (a linear scan of a
    /// few hundred entries, paid only when a new pair arrives at a full shard).
    pub fn slot(&self, tenant: &str, model: &str) -> Arc<OutputSlot> {
        let key = self.key(tenant, model);
        let cap = self.cfg.max_entries.div_ceil(SHARDS);
        let mut m = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = m.get(&key)
            && &*s.tenant == tenant
            && &*s.model == model
        {
            return s.clone();
        }
        if !m.contains_key(&key) && m.len() >= cap {
            let oldest = m
                .iter()
                .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| *k);
            if let Some(old) = oldest {
                m.remove(&old);
            }
        }
        let s = Arc::new(OutputSlot {
            tenant: Box::from(tenant),
            model: Box::from(model),
            learned: AtomicU64::new(self.cfg.cold_default),
            last_used: AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed)),
            ring: Mutex::new(Ring {
                values: Vec::with_capacity(self.cfg.window.min(64)),
                next: 0,
                seen: 0,
                since_recompute: 0,
            }),
        });
        m.insert(key, s.clone());
        s
    }

    /// Output tokens to reserve: `min(max_tokens, learned)`, where learned is the configured
    /// percentile of this tenant and model's recent outputs, or `cold_default` without enough
    /// history. (The request path uses [`OutputEstimator::slot`] and keeps it.)
    pub fn estimate(&self, tenant: &str, model: &str, max_tokens: u64) -> u64 {
        let key = self.key(tenant, model);
        let m = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let learned = match m.get(&key) {
            Some(s) if &*s.tenant == tenant && &*s.model == model => {
                s.learned.load(Ordering::Relaxed)
            }
            _ => self.cfg.cold_default,
        };
        learned.min(max_tokens)
    }

    /// Learn one finished call's `output_tokens` for `tenant` and `model`.
    pub fn observe(&self, tenant: &str, model: &str, output_tokens: u64) {
        self.learn(&self.slot(tenant, model), output_tokens);
    }

    /// Learn one finished call's `output_tokens` into the slot it reserved from.
    pub fn learn(&self, slot: &OutputSlot, output_tokens: u64) {
        slot.last_used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let mut r = slot.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let v = u32::try_from(output_tokens).unwrap_or(u32::MAX);
        if r.values.len() < self.cfg.window {
            r.values.push(v);
        } else {
            let at = r.next;
            r.values[at] = v;
        }
        r.next = (r.next + 1) % self.cfg.window;
        r.seen += 1;
        r.since_recompute += 1;
        let young = r.values.len() < self.cfg.recompute_every * 2;
        if young || r.since_recompute >= self.cfg.recompute_every {
            r.since_recompute = 0;
            let p = percentile(&r.values, self.cfg.percentile);
            let learned = if (r.seen as usize) < self.cfg.min_samples {
                p.max(self.cfg.cold_default)
            } else {
                p
            };
            slot.learned.store(learned, Ordering::Relaxed);
        }
    }

    /// Tenant and model pairs remembered.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The nearest-rank percentile of `v` (not empty).
fn percentile(v: &[u32], pct: u8) -> u64 {
    // On the stack for windows up to this size (the default is 256): no allocation per
    // recompute.
    const STACK: usize = 512;
    let mut buf = [0u32; STACK];
    let mut heap = Vec::new();
    let s: &mut [u32] = if v.len() <= STACK {
        let s = &mut buf[..v.len()];
        s.copy_from_slice(v);
        s
    } else {
        heap.extend_from_slice(v);
        &mut heap
    };
    if s.is_empty() {
        return 0;
    }
    let rank = (s.len() * usize::from(pct)).div_ceil(100).clamp(1, s.len());
    let (_, x, _) = s.select_nth_unstable(rank - 1);
    u64::from(*x)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn cold_then_learned() {
        let o = OutputEstimator::new(95, 256, 1024);
        assert_eq!(o.estimate("web", "m", 64_000), 1024);
        assert_eq!(o.estimate("web", "m", 300), 300);
        // Few samples: never below the cold default.
        for _ in 0..3 {
            o.observe("web", "m", 50);
        }
        assert_eq!(o.estimate("web", "m", 64_000), 1024);
        // 100 calls of 100..=199 tokens: p95 is about 194 (recomputed every 16 calls, so
        // it may lag a little behind the newest).
        for i in 0..100 {
            o.observe("web", "m", 100 + i);
        }
        let e = o.estimate("web", "m", 64_000);
        assert!((180..=199).contains(&e), "{e}");
        assert_eq!(o.estimate("web", "m", 120), 120);
        // Another tenant, another model: untouched.
        assert_eq!(o.estimate("crm", "m", 64_000), 1024);
        assert_eq!(o.estimate("web", "other", 64_000), 1024);
    }

    #[test]
    fn a_kept_slot_learns_what_a_lookup_sees() {
        let o = OutputEstimator::new(95, 256, 1024);
        let s = o.slot("web", "m");
        assert_eq!(s.reserve(64_000), 1024);
        assert!(Arc::ptr_eq(&s, &o.slot("web", "m")), "one slot per pair");
        for _ in 0..40 {
            o.learn(&s, 300);
        }
        assert_eq!(o.estimate("web", "m", 64_000), 300);
        assert_eq!(s.reserve(64_000), 300);
        assert_eq!(s.reserve(100), 100);
        // A slot forgotten while a call held it: that call's lesson is lost, nothing breaks.
        let small = OutputEstimator::with_config(OutputConfig {
            max_entries: 16,
            ..OutputConfig::default()
        });
        let held = small.slot("t-0", "m");
        for t in 1..200 {
            small.observe(&format!("t-{t}"), "m", 10);
        }
        small.learn(&held, 5);
        assert!(small.len() <= 16);
    }

    #[test]
    fn window_forgets_old_outputs() {
        let o = OutputEstimator::new(95, 32, 1024);
        for _ in 0..100 {
            o.observe("t", "m", 5000);
        }
        assert_eq!(o.estimate("t", "m", 64_000), 5000);
        for _ in 0..64 {
            o.observe("t", "m", 200);
        }
        assert_eq!(o.estimate("t", "m", 64_000), 200);
    }

    #[test]
    fn percentile_is_configurable() {
        let exact = |percentile| {
            OutputEstimator::with_config(OutputConfig {
                percentile,
                cold_default: 10,
                recompute_every: 1,
                ..OutputConfig::default()
            })
        };
        let (o50, o100) = (exact(50), exact(100));
        for i in 1..=200 {
            o50.observe("t", "m", i);
            o100.observe("t", "m", i);
        }
        assert!((95..=105).contains(&o50.estimate("t", "m", 1_000_000)));
        assert_eq!(o100.estimate("t", "m", 1_000_000), 200);
    }

    #[test]
    fn memory_is_bounded_lru() {
        let o = OutputEstimator::with_config(OutputConfig {
            max_entries: 64,
            ..OutputConfig::default()
        });
        for t in 0..1000 {
            o.observe(&format!("tenant-{t}"), "m", 10);
        }
        assert!(o.len() <= 64, "{}", o.len());
        // The most recent pairs are kept.
        for _ in 0..20 {
            o.observe("tenant-999", "m", 10);
        }
        assert_eq!(o.estimate("tenant-999", "m", 64_000), 10);
    }

    #[test]
    fn nearest_rank() {
        assert_eq!(percentile(&[5], 95), 5);
        assert_eq!(percentile(&[1, 2, 3, 4], 50), 2);
        assert_eq!(percentile(&[4, 3, 2, 1], 100), 4);
        assert_eq!(percentile(&[4, 3, 2, 1], 1), 1);
    }
}
