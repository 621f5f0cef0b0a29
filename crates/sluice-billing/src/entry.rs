//! `[[prices]]`: per-model prices that override or extend the price table shipped in the
//! binary (`crates/sluice-billing/prices.toml`, which uses this same format).
//!
//! Prices are written as the upstream publishes them: US dollars per million tokens (MTok).
//! Only the schema and its checks live here; the arithmetic (integer units, tiers, batch,
//! rounding) is the price table's.
//!
//! ```toml
//! [[prices]]
//! model = "claude-sonnet-4-5"                 # canonical id
//! aliases = ["claude-sonnet-4-5-20250929", "claude-sonnet-4-5-*"]
//! input = 3.0                                 # $/MTok, uncached input
//! output = 15.0
//! # cache_write_5m = 3.75                     # default: input × 1.25
//! # cache_write_1h = 6.0                      # default: input × 2
//! # cache_read = 0.30                         # default: input × 0.1
//! # batch = 0.5                               # Message Batches multiplier (default 0.5)
//!
//! [[prices.tiers]]                            # long-context pricing
//! above_input_tokens = 200000
//! input = 6.0
//! output = 22.5
//! ```

use serde::Deserialize;

/// The most a price may be ($/MTok). Far above any published price; it bounds the integer
/// arithmetic so no cost can overflow.
pub const MAX_USD_PER_MTOK: f64 = 1_000_000.0;

/// One model's prices, in US dollars per million tokens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    /// Canonical model id (`claude-sonnet-4-5`). An entry in `sluice.toml` with the same id as
    /// a shipped one replaces it.
    pub model: String,
    /// Other ids priced the same: exact ids (dated snapshots such as
    /// `claude-sonnet-4-5-20250929`) or prefix patterns ending in `*` (`claude-sonnet-4-5-*`;
    /// the longest matching prefix wins). When absent from an override, the replaced entry's
    /// aliases are kept; `aliases = []` drops them.
    #[serde(default)]
    pub aliases: Option<Vec<String>>,
    /// Uncached input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Cache writes with the 5-minute TTL (default `input` × 1.25).
    #[serde(default)]
    pub cache_write_5m: Option<f64>,
    /// Cache writes with the 1-hour TTL (default `input` × 2).
    #[serde(default)]
    pub cache_write_1h: Option<f64>,
    /// Cache reads (default `input` × 0.1; some models publish other ratios).
    #[serde(default)]
    pub cache_read: Option<f64>,
    /// Multiplier for Message Batches calls, applied to every category (default 0.5).
    #[serde(default)]
    pub batch: Option<f64>,
    /// Prices for large prompts, ascending by threshold. A call whose total input (uncached +
    /// cache writes + cache reads) exceeds a tier's threshold pays that tier's prices on all
    /// of its tokens, output included, as the upstream's long-context pricing works.
    #[serde(default)]
    pub tiers: Vec<PriceTier>,
}

/// A prompt-length tier of a [`PriceEntry`]. Cache prices left out are derived from this
/// tier's `input` with the usual multipliers, not inherited from the base prices.
//
// The five price fields repeat the entry's on purpose: one struct shared through
// `#[serde(flatten)]` would cost a typo its list of expected keys and a bad value its line in
// the TOML error, and those messages are what an operator fixing `sluice.toml` reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTier {
    /// Applies when the call's total input tokens are strictly greater than this.
    pub above_input_tokens: u64,
    /// Uncached input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Cache writes with the 5-minute TTL (default `input` × 1.25).
    #[serde(default)]
    pub cache_write_5m: Option<f64>,
    /// Cache writes with the 1-hour TTL (default `input` × 2).
    #[serde(default)]
    pub cache_write_1h: Option<f64>,
    /// Cache reads (default `input` × 0.1).
    #[serde(default)]
    pub cache_read: Option<f64>,
}

/// A document holding only `[[prices]]` tables (the shipped price file).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[serde(default)]
    prices: Vec<PriceEntry>,
}

impl PriceEntry {
    /// Parse a document of `[[prices]]` tables (and nothing else), such as the price file
    /// shipped in the binary. Entries are not validated: call [`PriceEntry::validate`].
    pub fn parse_list(toml_text: &str) -> Result<Vec<PriceEntry>, String> {
        toml::from_str::<PriceFile>(toml_text)
            .map(|f| f.prices)
            .map_err(|e| e.to_string())
    }

    /// Check the entry: a non-empty id without `*`, well-formed aliases, prices that are
    /// finite, not negative and at most [`MAX_USD_PER_MTOK`], a batch multiplier in (0, 1],
    /// and tier thresholds strictly ascending.
    pub fn validate(&self) -> Result<(), String> {
        let m = &self.model;
        if m.trim().is_empty() || m.contains('*') || m.chars().any(char::is_whitespace) {
            return Err(format!(
                "prices: model {m:?} must be a non-empty id without spaces or '*'"
            ));
        }
        for a in self.aliases.iter().flatten() {
            let stem = a.strip_suffix('*').unwrap_or(a);
            if stem.is_empty() || stem.contains('*') || a.chars().any(char::is_whitespace) {
                return Err(format!(
                    "prices {m:?}: alias {a:?} must be an id, or a non-empty prefix followed by one '*'"
                ));
            }
        }
        let mut prices = vec![
            ("input", Some(self.input)),
            ("output", Some(self.output)),
            ("cache_write_5m", self.cache_write_5m),
            ("cache_write_1h", self.cache_write_1h),
            ("cache_read", self.cache_read),
        ];
        for t in &self.tiers {
            prices.extend([
                ("tiers.input", Some(t.input)),
                ("tiers.output", Some(t.output)),
                ("tiers.cache_write_5m", t.cache_write_5m),
                ("tiers.cache_write_1h", t.cache_write_1h),
                ("tiers.cache_read", t.cache_read),
            ]);
        }
        for (name, v) in prices {
            if let Some(v) = v
                && !(v.is_finite() && (0.0..=MAX_USD_PER_MTOK).contains(&v))
            {
                return Err(format!(
                    "prices {m:?}: {name} = {v} must be between 0 and {MAX_USD_PER_MTOK} ($/MTok)"
                ));
            }
        }
        if let Some(b) = self.batch
            && !(b.is_finite() && b > 0.0 && b <= 1.0)
        {
            return Err(format!(
                "prices {m:?}: batch = {b} must be a multiplier in (0, 1]"
            ));
        }
        for pair in self.tiers.windows(2) {
            if let [a, b] = pair
                && b.above_input_tokens <= a.above_input_tokens
            {
                return Err(format!(
                    "prices {m:?}: tiers must be in strictly ascending order of above_input_tokens \
                     ({} then {})",
                    a.above_input_tokens, b.above_input_tokens
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn one(text: &str) -> PriceEntry {
        let mut v = PriceEntry::parse_list(text).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    const SONNET: &str = r#"
        [[prices]]
        model = "claude-sonnet-4-5"
        aliases = ["claude-sonnet-4-5-20250929", "claude-sonnet-4-5-*"]
        input = 3.0
        output = 15.0
        [[prices.tiers]]
        above_input_tokens = 200000
        input = 6.0
        output = 22.5
    "#;

    #[test]
    fn parses_and_validates_a_full_entry() {
        let e = one(SONNET);
        assert_eq!(e.model, "claude-sonnet-4-5");
        assert_eq!(e.aliases.as_ref().map(Vec::len), Some(2));
        assert_eq!(e.cache_read, None);
        assert_eq!(e.batch, None);
        assert_eq!(e.tiers.len(), 1);
        assert_eq!(e.tiers[0].above_input_tokens, 200_000);
        e.validate().unwrap();
    }

    #[test]
    fn absent_aliases_differ_from_empty_aliases() {
        let e = one("[[prices]]\nmodel = \"m\"\ninput = 1\noutput = 2\n");
        assert_eq!(e.aliases, None);
        assert_eq!((e.input, e.output), (1.0, 2.0));
        let e = one("[[prices]]\nmodel = \"m\"\naliases = []\ninput = 1.0\noutput = 2.0\n");
        assert_eq!(e.aliases, Some(vec![]));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(
            PriceEntry::parse_list(
                "[[prices]]\nmodel = \"m\"\ninput = 1.0\noutput = 2.0\ncache_write = 1.0\n"
            )
            .is_err()
        );
        assert!(PriceEntry::parse_list("[other]\nx = 1\n").is_err());
        let tier_typo = format!("{SONNET}\nthreshold = 5\n");
        assert!(PriceEntry::parse_list(&tier_typo).is_err());
    }

    #[test]
    fn rejects_bad_values() {
        let base = one(SONNET);
        let bad = |f: &dyn Fn(&mut PriceEntry)| {
            let mut e = base.clone();
            f(&mut e);
            e.validate().unwrap_err()
        };
        assert!(bad(&|e| e.input = -1.0).contains("input"));
        assert!(bad(&|e| e.output = f64::NAN).contains("output"));
        assert!(bad(&|e| e.cache_read = Some(-0.1)).contains("cache_read"));
        assert!(bad(&|e| e.cache_write_1h = Some(f64::INFINITY)).contains("cache_write_1h"));
        assert!(bad(&|e| e.input = 2.0e6).contains("input"));
        assert!(bad(&|e| e.tiers[0].output = -2.0).contains("tiers.output"));
        assert!(bad(&|e| e.batch = Some(0.0)).contains("batch"));
        assert!(bad(&|e| e.batch = Some(1.5)).contains("batch"));
        assert!(bad(&|e| e.model = String::new()).contains("model"));
        assert!(bad(&|e| e.model = "claude-*".into()).contains("model"));
        assert!(bad(&|e| e.aliases = Some(vec!["*".into()])).contains("alias"));
        assert!(bad(&|e| e.aliases = Some(vec!["a*b*".into()])).contains("alias"));
        assert!(
            bad(&|e| {
                let mut t = e.tiers[0].clone();
                t.above_input_tokens = 200_000;
                e.tiers.push(t);
            })
            .contains("ascending")
        );
    }

    #[test]
    fn zero_prices_and_a_full_batch_multiplier_are_allowed() {
        let mut e = one(SONNET);
        e.input = 0.0;
        e.batch = Some(1.0);
        e.validate().unwrap();
    }
}
