//! The price table: every priced model, looked up by id, alias or prefix pattern.
//!
//! The table is the price file shipped in the binary (`prices.toml` next to this crate's
//! `Cargo.toml`), with the `[[prices]]` entries of `sluice.toml` replacing or extending it.

use crate::{ModelPrices, PriceEntry};
use foldhash::HashMap;
use sluice_core::Usage;

/// The shipped price file.
const BUILTIN: &str = include_str!("../prices.toml");

/// Why a price table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// The price file is not a list of `[[prices]]` entries.
    #[error("price file: {0}")]
    Parse(String),
    /// An entry breaks a rule (the message names the model).
    #[error("{0}")]
    Invalid(String),
    /// Two entries claim one model id, alias or pattern.
    #[error("prices: {key:?} is claimed by both {first:?} and {second:?}")]
    Duplicate {
        /// The id, alias or pattern.
        key: String,
        /// The entry that claimed it first.
        first: String,
        /// The entry that claimed it again.
        second: String,
    },
    /// An override lists another priced model's canonical id as an alias.
    #[error(
        "prices {by:?}: {key:?} is another priced model; to change its prices use `model = {key:?}`"
    )]
    Shadowed {
        /// The canonical id.
        key: String,
        /// The override that lists it.
        by: String,
    },
}

/// An entry's canonical id, aliases and patterns.
fn keys(e: &PriceEntry) -> impl Iterator<Item = &str> {
    std::iter::once(e.model.as_str()).chain(e.aliases.iter().flatten().map(String::as_str))
}

/// Every priced model, looked up by id.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    /// The entries the table was built from, kept so overrides can inherit aliases.
    entries: Vec<PriceEntry>,
    models: Vec<ModelPrices>,
    /// Canonical ids and exact aliases → index in `models`.
    exact: HashMap<String, usize>,
    /// Prefix patterns (without the `*`), longest first.
    prefixes: Vec<(String, usize)>,
}

impl PriceTable {
    /// The table shipped in the binary. It is checked by a unit test; should it ever fail to
    /// load anyway, the error is logged and the table is empty (every cost is then unknown)
    /// rather than the gateway refusing to start.
    pub fn builtin() -> PriceTable {
        match Self::try_builtin() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "the shipped price table is invalid: no model has a price");
                PriceTable::default()
            }
        }
    }

    /// The table shipped in the binary, or why it cannot be used.
    pub fn try_builtin() -> Result<PriceTable, PricingError> {
        let entries = PriceEntry::parse_list(BUILTIN).map_err(PricingError::Parse)?;
        Self::build(entries)
    }

    /// A table of exactly these entries (no shipped prices).
    pub fn from_entries(entries: &[PriceEntry]) -> Result<PriceTable, PricingError> {
        Self::build(entries.to_vec())
    }

    /// This table with `overrides` (from `sluice.toml`) applied: an override whose `model` is
    /// already here replaces that entry (keeping its aliases unless the override lists its
    /// own), others are added. An alias or pattern of an override also listed by an entry it
    /// does not replace moves to the override; an override may not claim another entry's
    /// canonical id (it should name that id as its `model` instead).
    pub fn with_overrides(&self, overrides: &[PriceEntry]) -> Result<PriceTable, PricingError> {
        let replaced: HashMap<&str, &PriceEntry> = self
            .entries
            .iter()
            .filter(|e| overrides.iter().any(|o| o.model == e.model))
            .map(|e| (e.model.as_str(), e))
            .collect();
        let over: Vec<PriceEntry> = overrides
            .iter()
            .map(|o| {
                let mut o = o.clone();
                if o.aliases.is_none() {
                    o.aliases = replaced
                        .get(o.model.as_str())
                        .and_then(|e| e.aliases.clone());
                }
                o
            })
            .collect();
        let claimed: HashMap<&str, &str> = over
            .iter()
            .flat_map(|o| keys(o).map(move |k| (k, o.model.as_str())))
            .collect();
        let mut entries = Vec::with_capacity(self.entries.len() + over.len());
        for e in &self.entries {
            if replaced.contains_key(e.model.as_str()) {
                continue;
            }
            if let Some(&by) = claimed.get(e.model.as_str()) {
                return Err(PricingError::Shadowed {
                    key: e.model.clone(),
                    by: by.to_owned(),
                });
            }
            let mut e = e.clone();
            if let Some(a) = e.aliases.as_mut() {
                a.retain(|k| !claimed.contains_key(k.as_str()));
            }
            entries.push(e);
        }
        entries.extend(over);
        Self::build(entries)
    }

    fn build(entries: Vec<PriceEntry>) -> Result<PriceTable, PricingError> {
        let mut t = PriceTable::default();
        for e in entries {
            let i = t.models.len();
            t.models.push(ModelPrices::from_entry(&e)?);
            for key in keys(&e) {
                let index = match key.strip_suffix('*') {
                    Some(prefix) => t.prefixes.iter().find(|(p, _)| p == prefix).map(|p| p.1),
                    None => t.exact.get(key).copied(),
                };
                if let Some(j) = index {
                    return Err(PricingError::Duplicate {
                        key: key.to_owned(),
                        first: t.models.get(j).map(|m| m.model.clone()).unwrap_or_default(),
                        second: e.model.clone(),
                    });
                }
                match key.strip_suffix('*') {
                    Some(prefix) => t.prefixes.push((prefix.to_owned(), i)),
                    None => {
                        t.exact.insert(key.to_owned(), i);
                    }
                }
            }
            t.entries.push(e);
        }
        t.prefixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(t)
    }

    /// The prices of `model`: its exact id or alias, else the longest matching prefix pattern.
    pub fn lookup(&self, model: &str) -> Option<&ModelPrices> {
        let i = match self.exact.get(model) {
            Some(&i) => i,
            None => {
                self.prefixes
                    .iter()
                    .find(|(p, _)| model.starts_with(p.as_str()))?
                    .1
            }
        };
        self.models.get(i)
    }

    /// The cost of a finished call in micro-dollars; `None` when `model` has no price.
    pub fn cost_micros(&self, model: &str, usage: &Usage, batch: bool) -> Option<u64> {
        self.lookup(model).map(|p| p.cost_micros(usage, batch))
    }

    /// What prompt caching saved a finished call of `model` (see
    /// [`ModelPrices::prompt_cache_saved_micros`]); 0 for a call that cached nothing, `None`
    /// when `model` has no price.
    pub fn prompt_cache_saved_micros(
        &self,
        model: &str,
        usage: &Usage,
        batch: bool,
    ) -> Option<i64> {
        if usage.cache_creation_input_tokens == 0
            && usage.cache_creation_5m_input_tokens == 0
            && usage.cache_creation_1h_input_tokens == 0
            && usage.cache_read_input_tokens == 0
        {
            // Most calls cache nothing: no lookup (the settlement right after does its own).
            return Some(0);
        }
        self.lookup(model)
            .map(|p| p.prompt_cache_saved_micros(usage, batch))
    }

    /// The cost of `input_tokens` of uncached prompt and `output_tokens` of output, for
    /// reserving budget at admission; `None` when `model` has no price.
    pub fn estimate_micros(
        &self,
        model: &str,
        input_tokens: u64,
        output_tokens: u64,
        batch: bool,
    ) -> Option<u64> {
        self.lookup(model)
            .map(|p| p.estimate_micros(input_tokens, output_tokens, batch))
    }

    /// Every model's prices (order unspecified).
    pub fn models(&self) -> impl Iterator<Item = &ModelPrices> {
        self.models.iter()
    }

    /// How many models are priced.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether no model is priced.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// A table of exactly the entries of `toml`, for the tests here and in `cost`.
    pub(crate) fn table(toml: &str) -> PriceTable {
        PriceTable::from_entries(&entries(toml)).unwrap()
    }

    fn entries(toml: &str) -> Vec<PriceEntry> {
        PriceEntry::parse_list(toml).unwrap()
    }

    #[test]
    fn the_shipped_table_parses_and_every_entry_validates() {
        let list = PriceEntry::parse_list(BUILTIN).unwrap();
        assert!(list.len() >= 15);
        for e in &list {
            e.validate().unwrap_or_else(|m| panic!("{m}"));
        }
        let t = PriceTable::try_builtin().unwrap();
        assert_eq!(t.len(), list.len());
        assert!(!PriceTable::builtin().is_empty());
    }

    #[test]
    fn unknown_models_have_no_price() {
        let t = PriceTable::builtin();
        assert_eq!(t.cost_micros("gpt-4o", &Usage::default(), false), None);
        assert_eq!(t.estimate_micros("claude-opus-9", 1, 1, false), None);
        // A later model of a family is not priced as an earlier one.
        assert!(t.lookup("claude-opus-5-7").is_none());
        assert!(t.lookup("claude-sonnet-5-1").is_none());
        assert!(t.lookup("").is_none());
    }

    #[test]
    fn aliases_and_the_longest_prefix_pattern_resolve() {
        let t = PriceTable::builtin();
        let id = |m: &str| t.lookup(m).map(|p| p.model.as_str());
        assert_eq!(id("claude-sonnet-4-5"), Some("claude-sonnet-4-5"));
        assert_eq!(id("claude-sonnet-4-5-20250929"), Some("claude-sonnet-4-5"));
        assert_eq!(id("claude-sonnet-4-20250514"), Some("claude-sonnet-4-0"));
        assert_eq!(id("claude-haiku-4-5-20251001"), Some("claude-haiku-4-5"));
        // Future dated snapshots, by pattern; the longer pattern wins over a shorter one.
        assert_eq!(id("claude-opus-5-5-20270101"), Some("claude-opus-5-5"));
        assert_eq!(id("claude-opus-5-20270101"), Some("claude-opus-5"));

        let t = table(
            r#"
            [[prices]]
            model = "short"
            aliases = ["fam-*"]
            input = 1.0
            output = 1.0
            [[prices]]
            model = "long"
            aliases = ["fam-x-*", "fam-x"]
            input = 2.0
            output = 2.0
            "#,
        );
        let id = |m: &str| t.lookup(m).map(|p| p.model.as_str());
        assert_eq!(id("fam-y"), Some("short"));
        assert_eq!(id("fam-x-1"), Some("long"));
        assert_eq!(id("fam-x"), Some("long"));
        assert_eq!(id("fam"), None);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let two = |a: &str, b: &str| {
            format!(
                "[[prices]]\nmodel = \"a\"\naliases = [{a}]\ninput = 1.0\noutput = 1.0\n\
                 [[prices]]\nmodel = \"b\"\naliases = [{b}]\ninput = 1.0\noutput = 1.0\n"
            )
        };
        let err = |s: String| PriceTable::from_entries(&entries(&s)).unwrap_err();
        assert!(
            matches!(err(two("\"x\"", "\"x\"")), PricingError::Duplicate { key, .. } if key == "x")
        );
        assert!(matches!(
            err(two("\"p*\"", "\"p*\"")),
            PricingError::Duplicate { .. }
        ));
        assert!(matches!(
            err(two("\"b\"", "")),
            PricingError::Duplicate { .. }
        ));
        // An id and a pattern with the same stem are different keys.
        PriceTable::from_entries(&entries(&two("\"x\"", "\"x*\""))).unwrap();
        // Invalid entries are refused with the validation message.
        let bad = entries("[[prices]]\nmodel = \"m\"\ninput = -1.0\noutput = 1.0\n");
        assert!(
            matches!(PriceTable::from_entries(&bad), Err(PricingError::Invalid(m)) if m.contains("input"))
        );
    }

    #[test]
    fn overrides_replace_and_extend() {
        let base = PriceTable::builtin();
        let t = base
            .with_overrides(&entries(
                r#"
                [[prices]]
                model = "claude-sonnet-4-5"
                input = 1.0
                output = 2.0
                [[prices]]
                model = "my-fine-tune"
                aliases = ["my-fine-tune-*"]
                input = 7.0
                output = 9.0
                "#,
            ))
            .unwrap();
        assert_eq!(t.len(), base.len() + 1);
        let sonnet = t.lookup("claude-sonnet-4-5").unwrap();
        assert_eq!(
            (sonnet.base.input, sonnet.base.output),
            (1_000_000, 2_000_000)
        );
        // Replaced whole: the shipped long-context tier is gone too.
        assert!(sonnet.tiers.is_empty());
        // Aliases are inherited when the override lists none.
        assert_eq!(
            t.lookup("claude-sonnet-4-5-20250929").unwrap().base.input,
            1_000_000
        );
        assert_eq!(t.lookup("my-fine-tune-v2").unwrap().base.input, 7_000_000);
        // Everything else is untouched, and the base table too.
        assert_eq!(t.lookup("claude-opus-4-5").unwrap().base.input, 5_000_000);
        assert_eq!(
            base.lookup("claude-sonnet-4-5").unwrap().base.input,
            3_000_000
        );
        // Overrides stack.
        let again = t
            .with_overrides(&entries(
                "[[prices]]\nmodel = \"my-fine-tune\"\ninput = 1.0\noutput = 1.0\n",
            ))
            .unwrap();
        assert_eq!(
            again.lookup("my-fine-tune-v2").unwrap().base.input,
            1_000_000
        );
        assert_eq!(
            again.lookup("claude-sonnet-4-5").unwrap().base.input,
            1_000_000
        );
    }

    #[test]
    fn override_aliases_can_be_dropped_or_taken_over() {
        let base = PriceTable::builtin();
        let t = base
            .with_overrides(&entries(
                "[[prices]]\nmodel = \"claude-sonnet-4-5\"\naliases = []\ninput = 1.0\noutput = 2.0\n",
            ))
            .unwrap();
        assert!(t.lookup("claude-sonnet-4-5-20250929").is_none());
        // An alias of another entry moves to the override.
        let t = base
            .with_overrides(&entries(
                "[[prices]]\nmodel = \"pinned\"\naliases = [\"claude-sonnet-4-5-20250929\"]\ninput = 1.0\noutput = 2.0\n",
            ))
            .unwrap();
        assert_eq!(
            t.lookup("claude-sonnet-4-5-20250929").unwrap().model,
            "pinned"
        );
        assert_eq!(
            t.lookup("claude-sonnet-4-5").unwrap().model,
            "claude-sonnet-4-5"
        );
        // Another model's canonical id may not be taken as an alias.
        let err = base
            .with_overrides(&entries(
                "[[prices]]\nmodel = \"pinned\"\naliases = [\"claude-sonnet-4-5\"]\ninput = 1.0\noutput = 2.0\n",
            ))
            .unwrap_err();
        assert!(
            matches!(err, PricingError::Shadowed { ref key, .. } if key == "claude-sonnet-4-5")
        );
        // Two overrides of the same model are refused; so are invalid ones.
        let dup = "[[prices]]\nmodel = \"x\"\ninput = 1.0\noutput = 1.0\n";
        assert!(
            base.with_overrides(&entries(&format!("{dup}{dup}")))
                .is_err()
        );
        let bad = entries("[[prices]]\nmodel = \"x\"\ninput = 1.0\noutput = 1.0\nbatch = 2.0\n");
        assert!(matches!(
            base.with_overrides(&bad),
            Err(PricingError::Invalid(_))
        ));
    }
}
