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
use std::sync::{Mutex, PoisonError};

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

#[derive(Debug)]
struct Entry {
    tenant: Box<str>,
    model: Box<str>,
    ring: Vec<u32>,
    next: usize,
    seen: u64,
    since_recompute: usize,
    learned: u64,
    last_used: u64,
}

/// Per tenant and model learned output reservations. Thread-safe: sharded short locks.
#[derive(Debug)]
pub struct OutputEstimator {
    cfg: OutputConfig,
    shards: Vec<Mutex<HashMap<u64, Entry>>>,
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

    fn shard(&self, key: u64) -> &Mutex<HashMap<u64, Entry>> {
        // The modulus keeps the index in range; truncation of the key is intended.
        #[allow(clippy::cast_possible_truncation)]
        &self.shards[(key % SHARDS as u64) as usize]
    }

    /// Output tokens to reserve: `min(max_tokens, learned)`, where learned is the configured
    /// percentile of this tenant and model's recent outputs, or `cold_default` without enough
    /// history.
    pub fn estimate(&self, tenant: &str, model: &str, max_tokens: u64) -> u64 {
        let key = self.key(tenant, model);
        let m = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let learned = match m.get(&key) {
            Some(e) if &*e.tenant == tenant && &*e.model == model => e.learned,
            _ => self.cfg.cold_default,
        };
        learned.min(max_tokens)
    }

    /// Learn one call's `output_tokens`.
    pub fn observe(&self, tenant: &str, model: &str, output_tokens: u64) {
        let key = self.key(tenant, model);
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let cap = self.cfg.max_entries.div_ceil(SHARDS);
        let mut m = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let fresh = match m.get(&key) {
            Some(e) => &*e.tenant != tenant || &*e.model != model,
            None => true,
        };
        if fresh {
            if !m.contains_key(&key) && m.len() >= cap {
                // Forget the least recently observed pair of this shard: a linear scan of a few
                // hundred entries, paid only when a new pair arrives at a full shard.
                if let Some(old) = m.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| *k) {
                    m.remove(&old);
                }
            }
            m.insert(
                key,
                Entry {
                    tenant: Box::from(tenant),
                    model: Box::from(model),
                    ring: Vec::with_capacity(self.cfg.window.min(64)),
                    next: 0,
                    seen: 0,
                    since_recompute: 0,
                    learned: self.cfg.cold_default,
                    last_used: now,
                },
            );
        }
        let Some(e) = m.get_mut(&key) else { return };
        let v = u32::try_from(output_tokens).unwrap_or(u32::MAX);
        if e.ring.len() < self.cfg.window {
            e.ring.push(v);
        } else {
            e.ring[e.next] = v;
        }
        e.next = (e.next + 1) % self.cfg.window;
        e.seen += 1;
        e.since_recompute += 1;
        e.last_used = now;
        let young = e.ring.len() < self.cfg.recompute_every * 2;
        if young || e.since_recompute >= self.cfg.recompute_every {
            e.since_recompute = 0;
            let p = percentile(&e.ring, self.cfg.percentile);
            e.learned = if (e.seen as usize) < self.cfg.min_samples {
                p.max(self.cfg.cold_default)
            } else {
                p
            };
        }
    }

    /// Tenant and model pairs remembered.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether nothing has been learned yet.
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
