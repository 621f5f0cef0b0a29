//! Built-in presets of the upstream's published rate limits.
//!
//! The upstream (the Anthropic Claude API) limits each organisation per *model class* (a group
//! of models sharing one set of buckets, such as "Opus 4.x combined") in requests, input tokens
//! and output tokens per minute, with numbers that depend on the organisation's usage tier.
//! `presets.toml` (embedded at build time) records the classes, which of them count cache reads
//! toward the input-token limit, and the published numbers of each tier: `start`, `build` and
//! `scale` (current), and `tier1` to `tier4` (the names used before 2026-06-26). Its header
//! comment lists the sources and their caveats.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::Deserialize;
use sluice_config::{LimitSet, ModelClass};

/// The embedded preset file.
pub const PRESETS_TOML: &str = include_str!("../presets.toml");

/// The class of a model that matches no class.
pub const OTHER_CLASS: &str = "other";

/// Model classes and per-tier limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Presets {
    classes: Vec<ModelClass>,
    cache_reads_count: BTreeMap<String, bool>,
    tiers: BTreeMap<String, BTreeMap<String, LimitSet>>,
}

/// Why a preset file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PresetError {
    /// Not valid TOML, or not of the expected shape.
    #[error("presets: {0}")]
    Toml(#[from] toml::de::Error),
    /// A class or tier name outside `a-z 0-9 - _`, empty, or the reserved `other`.
    #[error("presets: invalid name {0:?}")]
    BadName(String),
    /// Two classes with one name.
    #[error("presets: class {0:?} declared twice")]
    DuplicateClass(String),
    /// A class without model patterns, or with an empty or catch-all (`*`) pattern.
    #[error("presets: class {0:?} has no models, or an empty or catch-all pattern")]
    NoModels(String),
    /// A tier gives limits to a class that is not declared.
    #[error("presets: tier {tier:?} names undeclared class {class:?}")]
    UnknownClass {
        /// The tier.
        tier: String,
        /// The class it names.
        class: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPresets {
    #[serde(default)]
    classes: Vec<RawClass>,
    #[serde(default)]
    tiers: BTreeMap<String, BTreeMap<String, LimitSet>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClass {
    name: String,
    models: Vec<String>,
    #[serde(default)]
    cache_reads_count: bool,
}

static BUILTIN: LazyLock<Presets> = LazyLock::new(|| match Presets::parse(PRESETS_TOML) {
    Ok(presets) => presets,
    Err(e) => {
        // A unit test guarantees the embedded file parses; this is only a safety net.
        tracing::error!(error = %e, "built-in presets rejected; using none");
        Presets::default()
    }
});

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != OTHER_CLASS
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Presets {
    /// The presets embedded in the binary, parsed once.
    pub fn builtin() -> &'static Presets {
        &BUILTIN
    }

    /// Parse and check a preset file (the format of `presets.toml`).
    pub fn parse(text: &str) -> Result<Presets, PresetError> {
        let raw: RawPresets = toml::from_str(text)?;
        let mut classes = Vec::with_capacity(raw.classes.len());
        let mut cache_reads_count = BTreeMap::new();
        for class in raw.classes {
            if !valid_name(&class.name) {
                return Err(PresetError::BadName(class.name));
            }
            if class.models.is_empty() || class.models.iter().any(|m| m.is_empty() || m == "*") {
                return Err(PresetError::NoModels(class.name));
            }
            if cache_reads_count
                .insert(class.name.clone(), class.cache_reads_count)
                .is_some()
            {
                return Err(PresetError::DuplicateClass(class.name));
            }
            classes.push(ModelClass {
                name: class.name,
                models: class.models,
            });
        }
        for (tier, limits) in &raw.tiers {
            if !valid_name(tier) {
                return Err(PresetError::BadName(tier.clone()));
            }
            if let Some(class) = limits.keys().find(|c| !cache_reads_count.contains_key(*c)) {
                return Err(PresetError::UnknownClass {
                    tier: tier.clone(),
                    class: class.clone(),
                });
            }
        }
        Ok(Presets {
            classes,
            cache_reads_count,
            tiers: raw.tiers,
        })
    }

    /// The model classes, in matching order (the first match wins).
    pub fn classes(&self) -> &[ModelClass] {
        &self.classes
    }

    /// Whether the upstream counts cache reads toward the input-token limit of `class` (false
    /// for an unknown class, as for most current models).
    pub fn cache_reads_count(&self, class: &str) -> bool {
        self.cache_reads_count.get(class).copied().unwrap_or(false)
    }

    /// The limits of tier `name`, by class. A class a tier leaves out has no published limits
    /// in that tier.
    pub fn tier(&self, name: &str) -> Option<&BTreeMap<String, LimitSet>> {
        self.tiers.get(name)
    }

    /// The tier names, in alphabetical order.
    pub fn tier_names(&self) -> impl Iterator<Item = &str> {
        self.tiers.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// The class a model lands in (the same first-match rule as the limiter's policy).
    fn class_of<'a>(classes: &'a [ModelClass], model: &str) -> &'a str {
        classes
            .iter()
            .find(|c| c.matches(model))
            .map_or(OTHER_CLASS, |c| c.name.as_str())
    }

    const CURRENT: [&str; 3] = ["start", "build", "scale"];
    const LEGACY: [&str; 4] = ["tier1", "tier2", "tier3", "tier4"];

    fn builtin() -> &'static Presets {
        Presets::builtin()
    }

    fn limits(tier: &str, class: &str) -> (u64, u64, u64) {
        let l = builtin()
            .tier(tier)
            .and_then(|t| t.get(class))
            .unwrap_or_else(|| panic!("no {tier}.{class}"));
        (
            l.requests_per_minute.unwrap(),
            l.input_tokens_per_minute.unwrap(),
            l.output_tokens_per_minute.unwrap(),
        )
    }

    #[test]
    fn presets_file_parses() {
        let parsed = Presets::parse(PRESETS_TOML).expect("presets.toml must parse");
        assert_eq!(&parsed, builtin());
        assert!(!builtin().classes().is_empty());
        let names: Vec<&str> = builtin().tier_names().collect();
        for t in CURRENT.iter().chain(&LEGACY) {
            assert!(names.contains(t), "tier {t} missing");
        }
    }

    #[test]
    fn presets_classes_are_well_formed() {
        let mut seen = std::collections::BTreeSet::new();
        for c in builtin().classes() {
            assert!(valid_name(&c.name), "bad class name {:?}", c.name);
            assert!(seen.insert(c.name.as_str()), "duplicate class {}", c.name);
            assert!(!c.models.is_empty(), "class {} has no models", c.name);
        }
    }

    #[test]
    fn presets_tiers_name_only_declared_classes() {
        let p = builtin();
        let declared: Vec<&str> = p.classes().iter().map(|c| c.name.as_str()).collect();
        for t in p.tier_names() {
            assert!(valid_name(t), "bad tier name {t:?}");
            for class in p.tier(t).unwrap().keys() {
                assert!(declared.contains(&class.as_str()), "{t} names {class}");
            }
        }
    }

    #[test]
    fn presets_current_tiers_cover_the_same_classes() {
        let keys = |t: &str| {
            builtin()
                .tier(t)
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(keys("start"), keys("build"));
        assert_eq!(keys("start"), keys("scale"));
        for c in builtin().classes() {
            // Mythos 5.x has its own bucket, but its numbers are not published.
            if c.name != "mythos-5" {
                assert!(keys("start").contains(&c.name), "start lacks {}", c.name);
            }
        }
    }

    #[test]
    fn presets_real_model_ids_land_in_their_class() {
        let cases = [
            ("claude-sonnet-4-5-20250929", "sonnet-4"),
            ("claude-sonnet-4-5", "sonnet-4"),
            ("claude-sonnet-4-6", "sonnet-4"),
            ("claude-sonnet-4-20250514", "sonnet-4"),
            ("claude-sonnet-4-0", "sonnet-4"),
            ("claude-opus-4-1", "opus-4"),
            ("claude-opus-4-1-20250805", "opus-4"),
            ("claude-opus-4-20250514", "opus-4"),
            ("claude-opus-4-5-20251101", "opus-4"),
            ("claude-opus-4-5", "opus-4"),
            ("claude-opus-4-6", "opus-4"),
            ("claude-opus-4-7", "opus-4"),
            ("claude-opus-4-8", "opus-4"),
            ("claude-haiku-4-5", "haiku-4-5"),
            ("claude-haiku-4-5-20251001", "haiku-4-5"),
            ("claude-haiku-5-5", "haiku-5-5"),
            ("claude-3-5-haiku-20241022", "haiku-3-5"),
            ("claude-3-5-haiku-latest", "haiku-3-5"),
            ("claude-fable-5", "fable-5"),
            ("claude-fable-5-1", "fable-5"),
            ("claude-mythos-5", "mythos-5"),
            ("claude-mythos-5-1", "mythos-5"),
            ("claude-opus-5", "opus-5"),
            ("claude-opus-5-5", "opus-5-5"),
            ("claude-sonnet-5", "sonnet-5"),
            ("claude-sonnet-5-5", "sonnet-5-5"),
            ("claude-3-7-sonnet-20250219", OTHER_CLASS),
            ("claude-3-haiku-20240307", OTHER_CLASS),
            ("claude-opus-5-6", OTHER_CLASS),
            ("gpt-6-sol", OTHER_CLASS),
            ("", OTHER_CLASS),
        ];
        for (model, want) in cases {
            assert_eq!(class_of(builtin().classes(), model), want, "model {model}");
        }
        assert_eq!(class_of(&[], "claude-opus-4-8"), OTHER_CLASS);
    }

    #[test]
    fn presets_numbers_are_positive() {
        let p = builtin();
        for t in p.tier_names() {
            for (class, l) in p.tier(t).unwrap() {
                for v in [
                    l.requests_per_minute,
                    l.input_tokens_per_minute,
                    l.output_tokens_per_minute,
                ] {
                    assert!(v.is_some_and(|v| v > 0), "{t}.{class}: {l:?}");
                }
                for v in [
                    l.requests_burst,
                    l.input_tokens_burst,
                    l.output_tokens_burst,
                ] {
                    assert!(v.is_none_or(|v| v > 0), "{t}.{class}: {l:?}");
                }
            }
        }
    }

    #[test]
    fn presets_tiers_are_monotone() {
        let p = builtin();
        let dims = |l: &LimitSet| {
            [
                l.requests_per_minute,
                l.input_tokens_per_minute,
                l.output_tokens_per_minute,
                l.requests_burst,
                l.input_tokens_burst,
                l.output_tokens_burst,
            ]
        };
        for ladder in [&CURRENT[..], &LEGACY[..]] {
            for pair in ladder.windows(2) {
                let (lo, hi) = (p.tier(pair[0]).unwrap(), p.tier(pair[1]).unwrap());
                for (class, low) in lo {
                    let high = hi
                        .get(class)
                        .unwrap_or_else(|| panic!("{class} in {} but not {}", pair[0], pair[1]));
                    for (a, b) in dims(low).into_iter().zip(dims(high)) {
                        assert!(
                            b >= a,
                            "{class}: {} {low:?} > {} {high:?}",
                            pair[0],
                            pair[1]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn presets_spot_check_published_numbers() {
        assert_eq!(limits("start", "fable-5"), (1_000, 500_000, 100_000));
        assert_eq!(limits("build", "fable-5"), (2_000, 1_500_000, 300_000));
        assert_eq!(limits("scale", "fable-5"), (4_000, 4_000_000, 800_000));
        assert_eq!(limits("build", "opus-4"), (5_000, 5_000_000, 1_000_000));
        assert_eq!(
            limits("scale", "haiku-5-5"),
            (10_000, 10_000_000, 2_000_000)
        );
        assert_eq!(limits("start", "haiku-3-5"), (1_000, 100_000, 20_000));
        assert_eq!(limits("tier1", "haiku-4-5"), (50, 50_000, 10_000));
        assert_eq!(limits("tier4", "sonnet-4"), (4_000, 2_000_000, 400_000));
    }

    #[test]
    fn presets_cache_reads_count_only_for_haiku_3_5() {
        let p = builtin();
        for c in p.classes() {
            assert_eq!(
                p.cache_reads_count(&c.name),
                c.name == "haiku-3-5",
                "{}",
                c.name
            );
        }
        assert!(!p.cache_reads_count(OTHER_CLASS));
        assert!(!p.cache_reads_count("no-such-class"));
    }

    #[test]
    fn presets_parse_rejects_bad_files() {
        assert!(matches!(
            Presets::parse("[[classes"),
            Err(PresetError::Toml(_))
        ));
        let undeclared = "[tiers.start.opus-4]\nrequests_per_minute = 1\n";
        assert!(matches!(
            Presets::parse(undeclared),
            Err(PresetError::UnknownClass { .. })
        ));
        let bad_name = "[[classes]]\nname = \"Opus\"\nmodels = [\"claude-opus-4*\"]\n";
        assert!(matches!(
            Presets::parse(bad_name),
            Err(PresetError::BadName(_))
        ));
        let other = "[[classes]]\nname = \"other\"\nmodels = [\"x\"]\n";
        assert!(matches!(
            Presets::parse(other),
            Err(PresetError::BadName(_))
        ));
        let empty = "[[classes]]\nname = \"a\"\nmodels = []\n";
        assert!(matches!(
            Presets::parse(empty),
            Err(PresetError::NoModels(_))
        ));
        let twice = "[[classes]]\nname = \"a\"\nmodels = [\"x\"]\n\
                     [[classes]]\nname = \"a\"\nmodels = [\"y\"]\n";
        assert!(matches!(
            Presets::parse(twice),
            Err(PresetError::DuplicateClass(_))
        ));
        let unknown_field = "[[classes]]\nname = \"a\"\nmodels = [\"x\"]\nweight = 2\n";
        assert!(matches!(
            Presets::parse(unknown_field),
            Err(PresetError::Toml(_))
        ));
    }

    #[test]
    fn presets_empty_fallback_classifies_everything_as_other() {
        let p = Presets::default();
        assert!(p.classes().is_empty());
        assert_eq!(p.tier_names().count(), 0);
        assert!(p.tier("start").is_none());
        assert_eq!(class_of(p.classes(), "claude-opus-4-8"), OTHER_CLASS);
    }
}
