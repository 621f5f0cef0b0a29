//! A per-model multiplier learned from the upstream's reported usage.

use quick_cache::sync::Cache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// How the correction learns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CorrectionConfig {
    /// Weight of each new observation in the moving average of `ln(actual / estimate)`.
    pub alpha: f64,
    /// Observations of a model before its factor is applied (until then the factor is 1).
    pub warmup: u32,
    /// Smallest factor ever applied.
    pub min_factor: f64,
    /// Largest factor ever applied.
    pub max_factor: f64,
    /// After warm-up, an observation moves the average by at most this much in log space
    /// (before weighting), so one odd request (a huge cache read the estimate could not see,
    /// a truncated body) does not swing the factor.
    pub max_step: f64,
    /// Most models tracked. Past it one is forgotten to make room, chosen by a scan-resistant
    /// policy (CLOCK-Pro-like): a flood of names seen once (junk `model` values) churns among
    /// themselves and does not push out the models calls keep using.
    pub max_models: usize,
}

impl Default for CorrectionConfig {
    fn default() -> Self {
        CorrectionConfig {
            alpha: 0.05,
            warmup: 16,
            min_factor: 0.5,
            max_factor: 3.0,
            max_step: 0.3,
            max_models: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// Moving average of the log ratio.
    mean: f64,
    seen: u32,
}

/// One model's learned correction. A call's permit keeps the slot its estimate was corrected
/// with, so settlement learns without looking the model up again.
#[derive(Debug)]
pub struct CorrectionSlot {
    state: Mutex<State>,
    /// The factor in force (`f64` bits; 1.0 until warmed up): `exp(mean)`, clamped, kept up
    /// to date by each observation, since every admission reads it. Read without the lock.
    factor: AtomicU64,
}

impl CorrectionSlot {
    /// The multiplier in force.
    pub fn factor(&self) -> f64 {
        f64::from_bits(self.factor.load(Ordering::Relaxed))
    }

    /// `raw` corrected by this model's factor, rounded.
    pub fn apply(&self, raw: u64) -> u64 {
        scale(raw, self.factor())
    }
}

/// The learned corrections of every model. Thread-safe; each call takes one short lock.
#[derive(Debug)]
pub struct Correction {
    cfg: CorrectionConfig,
    /// Keyed by a client-chosen string, so bounded with eviction; a slot a call holds
    /// outlives its eviction (the call's lesson then goes to a slot nobody looks up).
    models: Cache<Box<str>, Arc<CorrectionSlot>>,
}

impl Default for Correction {
    fn default() -> Self {
        Self::new()
    }
}

impl Correction {
    /// With the default configuration.
    pub fn new() -> Correction {
        Self::with_config(CorrectionConfig::default())
    }

    /// With `cfg`.
    pub fn with_config(cfg: CorrectionConfig) -> Correction {
        Correction {
            cfg,
            models: Cache::new(cfg.max_models.max(1)),
        }
    }

    /// The slot of `model`, made (factor 1.0) on its first call (or its first since it was
    /// forgotten, see [`CorrectionConfig::max_models`]).
    pub fn slot(&self, model: &str) -> Arc<CorrectionSlot> {
        if let Some(s) = self.models.get(model) {
            return s;
        }
        // The only allocation: a model's first call. Two first calls racing may each make
        // one; the later insert wins and the other call's lesson is lost, which is harmless.
        let s = Arc::new(CorrectionSlot {
            state: Mutex::new(State::default()),
            factor: AtomicU64::new(1.0f64.to_bits()),
        });
        self.models.insert(Box::from(model), s.clone());
        s
    }

    /// Models tracked now (at most about [`CorrectionConfig::max_models`]).
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether no model is tracked.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Learn from one call: `estimated` is the raw [`crate::estimate::InputEstimate::total`]
    /// and `actual` the upstream's `input_tokens + cache_creation_input_tokens +
    /// cache_read_input_tokens`. Calls where either is 0 carry no information and are skipped.
    pub fn observe(&self, model: &str, estimated: u64, actual: u64) {
        if estimated == 0 || actual == 0 {
            return;
        }
        self.learn(&self.slot(model), estimated, actual);
    }

    /// [`Correction::observe`], into the slot the call was corrected with.
    pub fn learn(&self, slot: &CorrectionSlot, estimated: u64, actual: u64) {
        if estimated == 0 || actual == 0 {
            return;
        }
        // The ratio of two positive u64 is finite; clamping keeps a single absurd pair from
        // poisoning the warm-up mean.
        let r = (actual as f64 / estimated as f64).ln().clamp(-3.0, 3.0);
        let c = &self.cfg;
        let mut s = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.seen = s.seen.saturating_add(1);
        if s.seen <= c.warmup {
            // A plain running mean while warming up, so the first value is not over-weighted.
            s.mean += (r - s.mean) / f64::from(s.seen);
        } else {
            s.mean += c.alpha * (r - s.mean).clamp(-c.max_step, c.max_step);
        }
        let factor = if s.seen >= c.warmup {
            s.mean.exp().clamp(c.min_factor, c.max_factor)
        } else {
            1.0
        };
        slot.factor.store(factor.to_bits(), Ordering::Relaxed);
    }

    /// The multiplier currently applied to `model`'s raw estimates (1.0 until warmed up).
    pub fn factor(&self, model: &str) -> f64 {
        self.models.peek(model).map_or(1.0, |s| s.factor())
    }

    /// `raw` corrected for `model`, rounded.
    pub fn apply(&self, model: &str, raw: u64) -> u64 {
        scale(raw, self.factor(model))
    }
}

/// `raw` times `factor`, rounded.
fn scale(raw: u64, factor: f64) -> u64 {
    // Saturating float-to-int conversion; estimates are far below 2^53.
    (raw as f64 * factor).round() as u64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// A deterministic noise source (xorshift), so the tests need no random crate.
    fn noise(state: &mut u64) -> f64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn converges_on_a_biased_model_and_leaves_others_alone() {
        let c = Correction::new();
        let mut rng = 42u64;
        assert_eq!(c.apply("m", 1000), 1000);
        for i in 0..400 {
            let est = 500 + (i % 7) * 300;
            // The model really uses 1.6× the estimate, ±10 %.
            let actual = (est as f64 * 1.6 * (0.9 + 0.2 * noise(&mut rng))) as u64;
            c.observe("biased", est, actual);
            c.observe("fair", est, est);
        }
        let f = c.factor("biased");
        assert!((f - 1.6).abs() < 0.08, "factor {f}");
        assert!((c.factor("fair") - 1.0).abs() < 1e-9);
        assert_eq!(c.factor("unseen"), 1.0);
    }

    #[test]
    fn a_kept_slot_learns_what_a_lookup_sees() {
        let c = Correction::new();
        let s = c.slot("m");
        assert_eq!(s.apply(1000), 1000);
        for _ in 0..40 {
            c.learn(&s, 100, 150);
        }
        assert!((c.factor("m") - 1.5).abs() < 1e-9, "{}", c.factor("m"));
        assert_eq!(s.apply(1000), 1500);
        assert_eq!(c.apply("m", 1000), 1500);
    }

    #[test]
    fn waits_for_warmup_and_clamps() {
        let c = Correction::new();
        for _ in 0..15 {
            c.observe("m", 100, 1000);
        }
        assert_eq!(c.factor("m"), 1.0);
        c.observe("m", 100, 1000);
        assert_eq!(c.factor("m"), 3.0);
        c.observe("m", 0, 1000);
        c.observe("m", 1000, 0);
    }

    #[test]
    fn outliers_move_it_little() {
        let c = Correction::new();
        for _ in 0..100 {
            c.observe("m", 1000, 1000);
        }
        // One call in ten reads a huge prefix the estimate never saw.
        for i in 0..200 {
            let actual = if i % 10 == 0 { 20_000 } else { 1000 };
            c.observe("m", 1000, actual);
        }
        let f = c.factor("m");
        assert!(f < 1.25, "factor {f}");
        // And a real shift still gets through.
        for _ in 0..300 {
            c.observe("m", 1000, 700);
        }
        assert!((c.factor("m") - 0.7).abs() < 0.05);
    }

    #[test]
    fn bounded_models() {
        let c = Correction::with_config(CorrectionConfig {
            max_models: 2,
            warmup: 1,
            ..CorrectionConfig::default()
        });
        c.observe("a", 10, 20);
        c.observe("b", 10, 20);
        c.observe("c", 10, 20);
        assert!(c.len() <= 2, "{}", c.len());
        assert!(
            c.factor("c") > 1.5,
            "the newest model is learned, not ignored"
        );
    }

    #[test]
    fn junk_names_do_not_stop_a_real_model_from_learning() {
        let c = Correction::new();
        let cap = CorrectionConfig::default().max_models;
        // One tenant sends 10,000 distinct junk names, with a real model's calls among them.
        for i in 0..10_000 {
            c.observe(&format!("junk-{i}"), 1000, 1000);
            if i % 10 == 0 {
                c.observe("claude-real", 1000, 1600);
            }
            assert!(c.len() <= cap, "{} > {cap}", c.len());
        }
        let f = c.factor("claude-real");
        assert!((f - 1.6).abs() < 0.05, "the real model learned {f}");
        // A model first seen after the flood learns too.
        for _ in 0..40 {
            c.observe("claude-new", 1000, 700);
        }
        let f = c.factor("claude-new");
        assert!((f - 0.7).abs() < 0.05, "a new model learned {f}");
        assert!(c.len() <= cap);
    }
}
