//! One model's prices as integer rates, and what a call costs at them.
//!
//! Prices are kept as integer micro-dollars per million tokens (µ$/MTok, that is pico-dollars
//! per token), so every published price and every derived one ($0.30, $0.125 × 1.25, the batch
//! half of $0.125) is exact. A call's cost is summed in pico-dollars (`u128`), scaled by the
//! batch multiplier (parts per million), and only then rounded to the nearest micro-dollar,
//! halves up: each call is off by at most half a micro-dollar, never by float drift.
//!
//! A call's prices depend on its prompt length when the model has tiers: the upstream's
//! long-context pricing charges every token of a call whose total input (uncached + cache
//! writes + cache reads) exceeds a threshold at the higher prices, output included.

use crate::{PriceEntry, PricingError};
use sluice_core::Usage;

const MICROS_PER_USD: f64 = 1_000_000.0;
const PPM: u128 = 1_000_000;
/// Pico-dollars × parts-per-million in one micro-dollar.
const ROUNDING_UNIT: u128 = 1_000_000 * PPM;
const DEFAULT_BATCH_PPM: u32 = 500_000;

/// Prices of each token category, in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// Uncached input.
    pub input: u64,
    /// Output.
    pub output: u64,
    /// Cache writes, 5-minute TTL.
    pub cache_write_5m: u64,
    /// Cache writes, 1-hour TTL.
    pub cache_write_1h: u64,
    /// Cache reads.
    pub cache_read: u64,
}

impl Rates {
    fn from_usd(
        input: f64,
        output: f64,
        w5m: Option<f64>,
        w1h: Option<f64>,
        read: Option<f64>,
    ) -> Self {
        let input = usd_to_micros_per_mtok(input);
        // Derived from the integer input price so the upstream's multipliers stay exact.
        Self {
            input,
            output: usd_to_micros_per_mtok(output),
            cache_write_5m: w5m.map_or((input * 5 + 2) / 4, usd_to_micros_per_mtok),
            cache_write_1h: w1h.map_or(input * 2, usd_to_micros_per_mtok),
            cache_read: read.map_or((input + 5) / 10, usd_to_micros_per_mtok),
        }
    }
}

/// Prices that apply above a prompt length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    /// Applies when the call's total input tokens are strictly greater than this.
    pub above_input_tokens: u64,
    /// The prices.
    pub rates: Rates,
}

/// One model's prices, ready for arithmetic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrices {
    /// Canonical model id.
    pub model: String,
    /// Prices below the first tier.
    pub base: Rates,
    /// Prompt-length tiers, ascending.
    pub tiers: Vec<Tier>,
    /// Message Batches multiplier, in parts per million.
    pub batch_ppm: u32,
}

impl ModelPrices {
    /// Convert and check one entry.
    pub fn from_entry(e: &PriceEntry) -> Result<Self, PricingError> {
        e.validate().map_err(PricingError::Invalid)?;
        Ok(Self {
            model: e.model.clone(),
            base: Rates::from_usd(
                e.input,
                e.output,
                e.cache_write_5m,
                e.cache_write_1h,
                e.cache_read,
            ),
            tiers: e
                .tiers
                .iter()
                .map(|t| Tier {
                    above_input_tokens: t.above_input_tokens,
                    rates: Rates::from_usd(
                        t.input,
                        t.output,
                        t.cache_write_5m,
                        t.cache_write_1h,
                        t.cache_read,
                    ),
                })
                .collect(),
            // Validation keeps the multiplier in (0, 1], so this is at most 10^6.
            batch_ppm: e
                .batch
                .map_or(DEFAULT_BATCH_PPM, |b| (b * MICROS_PER_USD).round() as u32),
        })
    }

    /// The prices for a call with `total_input_tokens` of prompt.
    pub fn rates_for(&self, total_input_tokens: u64) -> &Rates {
        self.tiers
            .iter()
            .rev()
            .find(|t| total_input_tokens > t.above_input_tokens)
            .map_or(&self.base, |t| &t.rates)
    }

    /// The cost of a finished call. Cache writes without a TTL split (or the part of the total
    /// the split does not cover) are 5-minute writes, the API's default; a split larger than
    /// the total is believed over the total.
    pub fn cost_micros(&self, usage: &Usage, batch: bool) -> u64 {
        let w1h = usage.cache_creation_1h_input_tokens;
        let writes = usage
            .cache_creation_input_tokens
            .max(usage.cache_creation_5m_input_tokens.saturating_add(w1h));
        let w5m = writes.saturating_sub(w1h);
        let total = usage
            .input_tokens
            .saturating_add(writes)
            .saturating_add(usage.cache_read_input_tokens);
        let r = self.rates_for(total);
        let pico = [
            (usage.input_tokens, r.input),
            (usage.output_tokens, r.output),
            (w5m, r.cache_write_5m),
            (w1h, r.cache_write_1h),
            (usage.cache_read_input_tokens, r.cache_read),
        ]
        .iter()
        .fold(0u128, |acc, &(tokens, rate)| {
            acc.saturating_add(u128::from(tokens).saturating_mul(u128::from(rate)))
        });
        self.round(pico, batch)
    }

    /// What a call would cost if its whole prompt were uncached input and it wrote
    /// `output_tokens` (a reservation at admission, before usage is known).
    pub fn estimate_micros(&self, input_tokens: u64, output_tokens: u64, batch: bool) -> u64 {
        self.cost_micros(
            &Usage {
                input_tokens,
                output_tokens,
                ..Usage::default()
            },
            batch,
        )
    }

    /// What prompt caching saved a finished call, in micro-dollars: its cost had every prompt
    /// token been uncached input, minus what it cost. The cache reads' discount counts for it,
    /// the cache writes' premium against it, so a call that only wrote the cache saved a negative
    /// amount (the premium that later reads pay back). The prompt's length, and so its tier, is
    /// the same either way.
    pub fn prompt_cache_saved_micros(&self, usage: &Usage, batch: bool) -> i64 {
        let writes = usage.cache_creation_input_tokens.max(
            usage
                .cache_creation_5m_input_tokens
                .saturating_add(usage.cache_creation_1h_input_tokens),
        );
        if writes == 0 && usage.cache_read_input_tokens == 0 {
            return 0;
        }
        let uncached = Usage {
            input_tokens: usage
                .input_tokens
                .saturating_add(writes)
                .saturating_add(usage.cache_read_input_tokens),
            output_tokens: usage.output_tokens,
            ..Usage::default()
        };
        let without = i64::try_from(self.cost_micros(&uncached, batch)).unwrap_or(i64::MAX);
        let with = i64::try_from(self.cost_micros(usage, batch)).unwrap_or(i64::MAX);
        without.saturating_sub(with)
    }

    /// Pico-dollars to micro-dollars, scaled for batch, rounded to nearest (halves up).
    fn round(&self, pico: u128, batch: bool) -> u64 {
        let ppm = if batch {
            u128::from(self.batch_ppm)
        } else {
            PPM
        };
        let scaled = pico.saturating_mul(ppm).saturating_add(ROUNDING_UNIT / 2) / ROUNDING_UNIT;
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }
}

/// $/MTok → µ$/MTok. Validation bounds prices to [0, 10^6] $/MTok, so the result fits easily;
/// precision finer than a micro-dollar per million tokens is rounded away.
fn usd_to_micros_per_mtok(usd: f64) -> u64 {
    (usd * MICROS_PER_USD).round().max(0.0) as u64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::PriceTable;
    use crate::table::tests::table;
    use proptest::prelude::*;

    /// The usage of a reply fixture in the repository's `tests/fixtures`, read with a plain
    /// text search since this crate has no JSON parser: it keeps the hand-computed costs below
    /// tied to the fixtures they claim to price.
    fn fixture_usage(name: &str) -> Usage {
        let path = [env!("CARGO_MANIFEST_DIR"), "../../tests/fixtures", name]
            .iter()
            .collect::<std::path::PathBuf>();
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let n = |key: &str| -> u64 {
            let needle = format!("\"{key}\":");
            let Some(at) = text.find(&needle) else {
                return 0;
            };
            let digits: String = text[at + needle.len()..]
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().unwrap()
        };
        Usage {
            input_tokens: n("input_tokens"),
            output_tokens: n("output_tokens"),
            cache_creation_input_tokens: n("cache_creation_input_tokens"),
            cache_creation_5m_input_tokens: n("ephemeral_5m_input_tokens"),
            cache_creation_1h_input_tokens: n("ephemeral_1h_input_tokens"),
            cache_read_input_tokens: n("cache_read_input_tokens"),
        }
    }

    #[test]
    fn shipped_prices_keep_the_orderings_cost_monotonicity_relies_on() {
        // A longer hour-long cache write never costs less than a 5-minute one, and a higher
        // tier never charges less than the one below it: with these, more tokens of any kind
        // never cost less.
        for m in PriceTable::builtin().models() {
            let mut prev = m.base;
            for r in std::iter::once(&m.base).chain(m.tiers.iter().map(|t| &t.rates)) {
                assert!(r.cache_write_1h >= r.cache_write_5m, "{}", m.model);
                for (a, b) in [
                    (r.input, prev.input),
                    (r.output, prev.output),
                    (r.cache_write_5m, prev.cache_write_5m),
                    (r.cache_write_1h, prev.cache_write_1h),
                    (r.cache_read, prev.cache_read),
                ] {
                    assert!(a >= b, "{}", m.model);
                }
                prev = *r;
            }
        }
    }

    #[test]
    fn prompt_cache_savings_are_the_read_discount_minus_the_write_premium() {
        let t = PriceTable::builtin();
        let p = t.lookup("claude-sonnet-4-5-20250929").unwrap();
        // $3/MTok input is 3 µ$ a token; a read is 0.3 µ$, a 5-minute write 3.75 µ$, an
        // hour-long write 6 µ$.
        let reads = Usage {
            input_tokens: 100,
            output_tokens: 50,
            cache_read_input_tokens: 3_000,
            ..Usage::default()
        };
        // 3000 × (3 − 0.3) = 8100 µ$ saved.
        assert_eq!(p.prompt_cache_saved_micros(&reads, false), 8_100);
        // Batch prices halve it.
        assert_eq!(p.prompt_cache_saved_micros(&reads, true), 4_050);
        let writes = Usage {
            input_tokens: 100,
            cache_creation_input_tokens: 3_000,
            cache_creation_5m_input_tokens: 2_000,
            cache_creation_1h_input_tokens: 1_000,
            ..Usage::default()
        };
        // 2000 × 0.75 + 1000 × 3 = 4500 µ$ of premium paid.
        assert_eq!(p.prompt_cache_saved_micros(&writes, false), -4_500);
        assert_eq!(
            p.prompt_cache_saved_micros(
                &Usage {
                    input_tokens: 5_000,
                    output_tokens: 9,
                    ..Usage::default()
                },
                false
            ),
            0
        );
    }

    /// The worked example of docs/caching.md (`## Savings`), number for number.
    #[test]
    fn the_caching_docs_worked_example() {
        let t = PriceTable::builtin();
        let p = t.lookup("claude-sonnet-4-5").unwrap();
        let first = Usage {
            input_tokens: 200,
            output_tokens: 300,
            cache_creation_input_tokens: 3_000,
            cache_creation_5m_input_tokens: 3_000,
            ..Usage::default()
        };
        let later = Usage {
            input_tokens: 200,
            output_tokens: 300,
            cache_read_input_tokens: 3_000,
            ..Usage::default()
        };
        let uncached = Usage {
            input_tokens: 3_200,
            output_tokens: 300,
            ..Usage::default()
        };
        assert_eq!(p.cost_micros(&uncached, false), 14_100);
        assert_eq!(p.cost_micros(&first, false), 16_350);
        assert_eq!(p.cost_micros(&later, false), 6_000);
        assert_eq!(p.prompt_cache_saved_micros(&first, false), -2_250);
        assert_eq!(p.prompt_cache_saved_micros(&later, false), 8_100);
        let net = p.prompt_cache_saved_micros(&first, false)
            + 5 * p.prompt_cache_saved_micros(&later, false);
        assert_eq!(net, 38_250);
    }

    #[test]
    fn fixture_replies_cost_exactly_what_the_hand_sum_says() {
        let t = PriceTable::builtin();
        // message_response.json, claude-sonnet-4-5-20250929 ($3 in, $15 out, 5-minute write
        // $3.75; $x/MTok is x µ$ per token): 21 × 3 + 1532 × 3.75 + 9 × 15
        // = 63 + 5745 + 135 = 5943 µ$.
        let u = fixture_usage("message_response.json");
        assert_eq!(u.cache_creation_5m_input_tokens, 1532);
        assert_eq!(
            t.cost_micros("claude-sonnet-4-5-20250929", &u, false),
            Some(5943)
        );
        // Batch halves every category: 2971.5 µ$, rounded half up.
        assert_eq!(
            t.cost_micros("claude-sonnet-4-5-20250929", &u, true),
            Some(2972)
        );
        // message_response_tool_use.json, claude-opus-4-5-20251101 ($5 in, $25 out, cache read
        // $0.50): 412 × 5 + 2048 × 0.5 + 73 × 25 = 2060 + 1024 + 1825 = 4909 µ$.
        let u = fixture_usage("message_response_tool_use.json");
        assert_eq!(u.cache_read_input_tokens, 2048);
        assert_eq!(
            t.cost_micros("claude-opus-4-5-20251101", &u, false),
            Some(4909)
        );
    }

    #[test]
    fn cache_multipliers_and_explicit_cache_prices() {
        let t = table(
            r#"
            [[prices]]
            model = "std"
            input = 3.0
            output = 15.0
            [[prices]]
            model = "odd"
            input = 4.0
            output = 20.0
            cache_read = 0.2
            "#,
        );
        let m = t.lookup("std").unwrap();
        // $3.75, $6 and $0.30 per MTok, exactly.
        assert_eq!(
            m.base,
            Rates {
                input: 3_000_000,
                output: 15_000_000,
                cache_write_5m: 3_750_000,
                cache_write_1h: 6_000_000,
                cache_read: 300_000,
            }
        );
        let per_million = |u: Usage| t.cost_micros("std", &u, false).unwrap();
        let mtok = 1_000_000;
        assert_eq!(
            per_million(Usage {
                cache_creation_input_tokens: mtok,
                cache_creation_5m_input_tokens: mtok,
                ..Usage::default()
            }),
            3_750_000
        );
        assert_eq!(
            per_million(Usage {
                cache_creation_input_tokens: mtok,
                cache_creation_1h_input_tokens: mtok,
                ..Usage::default()
            }),
            6_000_000
        );
        assert_eq!(
            per_million(Usage {
                cache_read_input_tokens: mtok,
                ..Usage::default()
            }),
            300_000
        );
        // No split at all: 5-minute writes. A partial split: the rest is 5-minute.
        assert_eq!(
            per_million(Usage {
                cache_creation_input_tokens: mtok,
                ..Usage::default()
            }),
            3_750_000
        );
        assert_eq!(
            per_million(Usage {
                cache_creation_input_tokens: 2 * mtok,
                cache_creation_1h_input_tokens: mtok,
                ..Usage::default()
            }),
            3_750_000 + 6_000_000
        );
        // A split larger than the total is believed.
        assert_eq!(
            per_million(Usage {
                cache_creation_input_tokens: 1,
                cache_creation_5m_input_tokens: mtok,
                cache_creation_1h_input_tokens: mtok,
                ..Usage::default()
            }),
            3_750_000 + 6_000_000
        );
        // An explicit price beats the 0.1× default: 0.05× here.
        let odd = t.lookup("odd").unwrap().base;
        assert_eq!(odd.cache_read, 200_000);
        assert_eq!(
            (odd.cache_write_5m, odd.cache_write_1h),
            (5_000_000, 8_000_000)
        );
    }

    #[test]
    fn small_prices_stay_exact() {
        // $0.01/MTok reads and the batch half of $0.125 are not whole nano-dollars per token.
        let t = PriceTable::builtin();
        let haiku = t.lookup("claude-haiku-5-5").unwrap().base;
        assert_eq!(haiku.cache_read, 10_000);
        assert_eq!(haiku.cache_write_5m, 125_000);
        let u = Usage {
            cache_creation_input_tokens: 80_000,
            cache_creation_5m_input_tokens: 80_000,
            ..Usage::default()
        };
        // 80,000 × $0.125/MTok = $0.01 (under the 100K tier), batch half of it.
        assert_eq!(t.cost_micros("claude-haiku-5-5", &u, false), Some(10_000));
        assert_eq!(t.cost_micros("claude-haiku-5-5", &u, true), Some(5_000));
        let u = Usage {
            cache_read_input_tokens: 50_000,
            ..Usage::default()
        };
        // 50,000 × $0.01/MTok = $0.0005 = 500 µ$.
        assert_eq!(t.cost_micros("claude-haiku-5-5", &u, false), Some(500));
    }

    #[test]
    fn batch_halves_by_default_and_honours_a_configured_multiplier() {
        let t = table(
            r#"
            [[prices]]
            model = "a"
            input = 1.0
            output = 5.0
            [[prices]]
            model = "b"
            input = 1.0
            output = 5.0
            batch = 0.75
            "#,
        );
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(t.cost_micros("a", &u, false), Some(6_000_000));
        assert_eq!(t.cost_micros("a", &u, true), Some(3_000_000));
        assert_eq!(t.cost_micros("b", &u, true), Some(4_500_000));
        assert_eq!(
            t.estimate_micros("a", 1_000_000, 1_000_000, true),
            Some(3_000_000)
        );
    }

    #[test]
    fn rounding_is_to_the_nearest_micro_dollar() {
        let t = table("[[prices]]\nmodel = \"m\"\ninput = 0.5\noutput = 1.5\n");
        let cost = |input_tokens, output_tokens| {
            t.cost_micros(
                "m",
                &Usage {
                    input_tokens,
                    output_tokens,
                    ..Usage::default()
                },
                false,
            )
        };
        assert_eq!(cost(0, 0), Some(0));
        assert_eq!(cost(1, 0), Some(1)); // 0.5 µ$, half up
        assert_eq!(cost(0, 1), Some(2)); // 1.5 µ$, half up
        assert_eq!(cost(3, 0), Some(2)); // 1.5 µ$
        assert_eq!(cost(2, 1), Some(3)); // 2.5 µ$
        let t = table("[[prices]]\nmodel = \"m\"\ninput = 0.4\noutput = 1.0\n");
        assert_eq!(t.estimate_micros("m", 1, 0, false), Some(0)); // 0.4 µ$
        assert_eq!(t.estimate_micros("m", 4, 0, false), Some(2)); // 1.6 µ$
    }

    #[test]
    fn long_context_tier_switches_above_the_threshold_on_every_token() {
        let t = PriceTable::builtin();
        let m = "claude-sonnet-4-5";
        // Exactly 200,000 tokens of prompt, counting cache writes and reads: base prices.
        // 100,000 × 3 + 50,000 × 3.75 + 50,000 × 0.3 + 1,000 × 15
        // = 300,000 + 187,500 + 15,000 + 15,000 = 517,500 µ$.
        let at = Usage {
            input_tokens: 100_000,
            cache_creation_input_tokens: 50_000,
            cache_read_input_tokens: 50_000,
            output_tokens: 1_000,
            ..Usage::default()
        };
        assert_eq!(t.cost_micros(m, &at, false), Some(517_500));
        // One more token of prompt: $6 / $22.50, writes $7.50, reads $0.60 on all tokens.
        // 100,001 × 6 + 50,000 × 7.5 + 50,000 × 0.6 + 1,000 × 22.5
        // = 600,006 + 375,000 + 30,000 + 22,500 = 1,027,506 µ$.
        let above = Usage {
            input_tokens: 100_001,
            ..at
        };
        assert_eq!(t.cost_micros(m, &above, false), Some(1_027_506));
        assert_eq!(t.cost_micros(m, &above, true), Some(513_753));
        // The admission estimate switches on the same threshold.
        assert_eq!(t.estimate_micros(m, 200_000, 0, false), Some(600_000));
        assert_eq!(t.estimate_micros(m, 200_001, 0, false), Some(1_200_006));
        // Haiku 5.5 switches at 100,000 with its own published cache prices.
        let h = "claude-haiku-5-5";
        assert_eq!(
            t.estimate_micros(h, 100_000, 1_000, false),
            Some(10_000 + 500)
        );
        assert_eq!(
            t.estimate_micros(h, 100_001, 1_000, false),
            Some(50_001 + 2_500)
        );
        // A model without tiers does not switch.
        assert_eq!(
            t.estimate_micros("claude-sonnet-4-6", 900_000, 0, false),
            Some(2_700_000)
        );
    }

    #[test]
    fn tiers_pick_the_highest_threshold_exceeded() {
        let t = table(
            r#"
            [[prices]]
            model = "m"
            input = 1.0
            output = 1.0
            [[prices.tiers]]
            above_input_tokens = 10
            input = 2.0
            output = 2.0
            [[prices.tiers]]
            above_input_tokens = 20
            input = 3.0
            output = 3.0
            "#,
        );
        let m = t.lookup("m").unwrap();
        assert_eq!(m.rates_for(10).input, 1_000_000);
        assert_eq!(m.rates_for(11).input, 2_000_000);
        assert_eq!(m.rates_for(20).input, 2_000_000);
        assert_eq!(m.rates_for(21).input, 3_000_000);
        // The tier's cache prices derive from the tier's input, not the base's.
        assert_eq!(m.rates_for(21).cache_read, 300_000);
    }

    #[test]
    fn huge_counts_saturate_instead_of_wrapping() {
        let t = PriceTable::builtin();
        let u = Usage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
            cache_creation_input_tokens: u64::MAX,
            cache_creation_5m_input_tokens: u64::MAX,
            cache_creation_1h_input_tokens: u64::MAX,
            cache_read_input_tokens: u64::MAX,
        };
        assert_eq!(t.cost_micros("claude-fable-5-1", &u, false), Some(u64::MAX));
    }

    fn field(u: &mut Usage, i: usize) -> &mut u64 {
        match i {
            0 => &mut u.input_tokens,
            1 => &mut u.output_tokens,
            2 => &mut u.cache_creation_input_tokens,
            3 => &mut u.cache_creation_5m_input_tokens,
            4 => &mut u.cache_creation_1h_input_tokens,
            _ => &mut u.cache_read_input_tokens,
        }
    }

    proptest! {
        #[test]
        fn cost_is_monotone_in_every_token_count(
            model in 0usize..64,
            counts in proptest::array::uniform6(0u64..400_000),
            which in 0usize..6,
            more in 1u64..300_000,
            batch in any::<bool>(),
        ) {
            let t = PriceTable::builtin();
            let m = t.models().nth(model % t.len()).unwrap();
            let mut u = Usage::default();
            for (i, c) in counts.iter().enumerate() {
                *field(&mut u, i) = *c;
            }
            let before = m.cost_micros(&u, batch);
            *field(&mut u, which) += more;
            let after = m.cost_micros(&u, batch);
            prop_assert!(after >= before, "{}: {before} -> {after} after +{more} on field {which}", m.model);
            prop_assert!(m.cost_micros(&u, true) <= m.cost_micros(&u, false));
        }

        #[test]
        fn estimate_is_monotone_and_matches_an_uncached_call(
            model in 0usize..64,
            input in 0u64..2_000_000,
            output in 0u64..200_000,
            more in 1u64..300_000,
        ) {
            let t = PriceTable::builtin();
            let m = t.models().nth(model % t.len()).unwrap();
            let e = t.estimate_micros(&m.model, input, output, false).unwrap();
            prop_assert!(t.estimate_micros(&m.model, input + more, output, false).unwrap() >= e);
            prop_assert!(t.estimate_micros(&m.model, input, output + more, false).unwrap() >= e);
            let u = Usage { input_tokens: input, output_tokens: output, ..Usage::default() };
            prop_assert_eq!(t.cost_micros(&m.model, &u, false), Some(e));
        }
    }
}
