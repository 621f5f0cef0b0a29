//! The limiter's policy: everything derived from one config snapshot (model classes, the org
//! pools, each tenant's scopes, budgets and queue settings, prices), built once per snapshot
//! so a call only looks things up.

use super::LimitsError;
use crate::backend::{Rates, Scope, ScopeKind};
use crate::presets::Presets;
use crate::queue::FairQueue;
use foldhash::{HashMap, HashMapExt as _};
use sluice_billing::PriceTable;
use sluice_config::{Config, ModelClass, Priority, usd_to_micros};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One tenant's derived policy.
#[derive(Debug, Clone)]
pub(super) struct TenantPolicy {
    pub(super) wide: Option<Scope>,
    pub(super) by_class: HashMap<Arc<str>, Scope>,
    pub(super) priority: Priority,
    pub(super) weight: u32,
    pub(super) max_wait: Duration,
    pub(super) daily_micros: Option<u64>,
    pub(super) monthly_micros: Option<u64>,
    /// The scopes of a call, per model class (indexed as [`Policy::class_index`]), built
    /// once per snapshot: a call shares its list instead of assembling one.
    pub(super) plans: Vec<Arc<[Scope]>>,
    /// The same, keeping only the tenant's own scopes that limit requests: what a call the
    /// gateway answers itself is admitted against (`Limiter::admit_request_only`).
    pub(super) request_plans: Vec<Arc<[Scope]>>,
}

/// Everything derived from one config snapshot.
pub struct Policy {
    classes: Vec<ModelClass>,
    class_names: Vec<Arc<str>>,
    other: Arc<str>,
    pub(super) org: HashMap<Arc<str>, Scope>,
    pub(super) tenants: HashMap<String, TenantPolicy>,
    /// The scopes of a tenant the config does not name, per model class (the org pool).
    pub(super) default_plans: Vec<Arc<[Scope]>>,
    pub(super) prices: Arc<PriceTable>,
    pub(super) cache_ttl_us: u64,
    /// Classes whose upstream limits count cache reads as input (older models).
    pub(super) cache_reads_count: Vec<Arc<str>>,
    /// When each class's org pool last took the upstream's word (µs on the limiter's
    /// clock), indexed as [`Policy::class_index`].
    pub(super) observed: Vec<AtomicU64>,
    /// The fair queue of each entry of `class_names`, then of `other`: the limiter's queues
    /// (which outlive any one policy), looked up once per snapshot instead of once per call.
    pub(super) queues: Vec<Arc<FairQueue>>,
    /// Models seen under this policy: their class index and their name as a shared string
    /// (see [`Policy::model_info`]). Keyed by the client's string, so bounded with a
    /// scan-resistant eviction: junk names seen once do not push out the models in use.
    models: quick_cache::sync::Cache<Box<str>, ModelInfo>,
}

/// A model's class index and its name as a shared string.
type ModelInfo = (usize, Arc<str>);

/// Most models [`Policy::model_info`] remembers (past it, one is forgotten to make room).
const MODELS_REMEMBERED: usize = 1024;

impl Policy {
    /// Derive the policy of `cfg`.
    pub fn build(cfg: &Config) -> Result<Policy, LimitsError> {
        let presets = Presets::builtin();
        let classes: Vec<ModelClass> = if cfg.limits.classes.is_empty() {
            presets.classes().to_vec()
        } else {
            cfg.limits.classes.clone()
        };
        let class_names: Vec<Arc<str>> = classes.iter().map(|c| Arc::from(&*c.name)).collect();
        let cache_reads_count = if cfg.limits.classes.is_empty() {
            class_names
                .iter()
                .filter(|c| presets.cache_reads_count(c))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let other: Arc<str> = Arc::from(crate::presets::OTHER_CLASS);
        let known = |name: &str| -> Result<Arc<str>, LimitsError> {
            if name == crate::presets::OTHER_CLASS {
                return Ok(other.clone());
            }
            class_names
                .iter()
                .find(|c| &***c == name)
                .cloned()
                .ok_or_else(|| {
                    LimitsError::Invalid(format!(
                        "model class {name:?} is not declared (classes: {}, other)",
                        class_names
                            .iter()
                            .map(|c| &**c)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
        };

        let mut org_sets: HashMap<Arc<str>, sluice_config::LimitSet> = HashMap::new();
        if let Some(tier) = &cfg.org.tier {
            let Some(t) = presets.tier(tier) else {
                return Err(LimitsError::Invalid(format!(
                    "org.tier {tier:?} is not a known preset (known: {})",
                    presets.tier_names().collect::<Vec<_>>().join(", ")
                )));
            };
            for (class, set) in t {
                // A preset may name classes the config replaced; those simply do not apply.
                if let Ok(c) = known(class) {
                    org_sets.insert(c, *set);
                }
            }
        }
        for (class, set) in &cfg.org.classes {
            let c = known(class)?;
            let merged = org_sets.get(&c).copied().unwrap_or_default().overlay(set);
            org_sets.insert(c, merged);
        }
        let org: HashMap<Arc<str>, Scope> = org_sets
            .into_iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(c, s)| {
                let scope = Scope::new(
                    ScopeKind::Org,
                    Scope::org_key(&c),
                    c.clone(),
                    Rates::from_set(&s),
                    0,
                );
                (c, scope)
            })
            .collect();

        let mut tenants = HashMap::new();
        for t in &cfg.tenants {
            let name: Arc<str> = Arc::from(&*t.name);
            let wide = (!t.limits.is_empty()).then(|| {
                Scope::new(
                    ScopeKind::Tenant,
                    Scope::tenant_key(&t.name),
                    name.clone(),
                    Rates::from_set(&t.limits),
                    0,
                )
            });
            let mut by_class = HashMap::new();
            for (class, set) in &t.class_limits {
                let c = known(class)?;
                if set.is_empty() {
                    continue;
                }
                by_class.insert(
                    c.clone(),
                    Scope::new(
                        ScopeKind::TenantClass,
                        Scope::tenant_class_key(&t.name, &c),
                        name.clone(),
                        Rates::from_set(set),
                        0,
                    ),
                );
            }
            let mut tp = TenantPolicy {
                wide,
                by_class,
                priority: t.priority,
                weight: t.weight.max(1),
                max_wait: Duration::from_millis(t.max_wait_ms),
                daily_micros: t.budget_daily_usd.map(usd_to_micros),
                monthly_micros: t.budget_monthly_usd.map(usd_to_micros),
                plans: Vec::new(),
                request_plans: Vec::new(),
            };
            tp.plans = plans(&class_names, &other, &org, &cfg.org.keep_free, Some(&tp));
            tp.request_plans = tp
                .plans
                .iter()
                .map(|p| {
                    p.iter()
                        .filter(|s| s.kind != ScopeKind::Org && s.rates.requests.is_some())
                        .cloned()
                        .collect()
                })
                .collect();
            tenants.insert(t.name.clone(), tp);
        }
        let default_plans = plans(&class_names, &other, &org, &cfg.org.keep_free, None);
        let prices = PriceTable::builtin()
            .with_overrides(&cfg.prices)
            .map_err(|e| LimitsError::Invalid(e.to_string()))?;
        let observed = (0..=class_names.len()).map(|_| AtomicU64::new(0)).collect();
        Ok(Policy {
            observed,
            classes,
            class_names,
            other,
            org,
            tenants,
            default_plans,
            prices: Arc::new(prices),
            cache_ttl_us: cfg.limits.cache_ttl_secs.saturating_mul(1_000_000),
            cache_reads_count,
            queues: Vec::new(),
            models: quick_cache::sync::Cache::new(MODELS_REMEMBERED),
        })
    }

    /// Give the policy its classes' queues from the limiter's `queues`.
    pub(super) fn attach_queues(&mut self, queues: &Mutex<HashMap<Arc<str>, Arc<FairQueue>>>) {
        let mut q = queues.lock().unwrap_or_else(PoisonError::into_inner);
        self.queues = self
            .class_names
            .iter()
            .chain(std::iter::once(&self.other))
            .map(|c| q.entry(c.clone()).or_default().clone())
            .collect();
    }

    /// The index of the class of `model`: its position among the configured classes (first
    /// match), or their count for `other`.
    fn class_index(&self, model: &str) -> usize {
        self.classes
            .iter()
            .position(|c| c.matches(model))
            .unwrap_or(self.class_names.len())
    }

    /// The class index of `model` and its name as a shared string, remembered: matching a
    /// model against every class's patterns (strings scattered over the heap) and copying its
    /// name showed in the profile of every limited call, and a service uses a handful of
    /// models.
    pub(super) fn model_info(&self, model: &str) -> (usize, Arc<str>) {
        if let Some(info) = self.models.get(model) {
            return info;
        }
        let i = self.class_index(model);
        let name: Arc<str> = Arc::from(model);
        self.models.insert(Box::from(model), (i, name.clone()));
        (i, name)
    }

    /// The name of the class at `i` (see [`Policy::class_index`]).
    pub(super) fn class_name(&self, i: usize) -> &Arc<str> {
        self.class_names.get(i).unwrap_or(&self.other)
    }

    /// The model class of `model` (first match; `other` when none matches).
    pub fn class_of(&self, model: &str) -> &Arc<str> {
        self.class_name(self.class_index(model))
    }

    /// The price table in force.
    pub fn prices(&self) -> &Arc<PriceTable> {
        &self.prices
    }
}

/// The scopes of a call of each class (configured classes, then `other`): the tenant's own
/// (when `tp` is a configured tenant), then the class's org pool with the share the tenant's
/// priority must leave free.
fn plans(
    class_names: &[Arc<str>],
    other: &Arc<str>,
    org: &HashMap<Arc<str>, Scope>,
    keep_free: &sluice_config::KeepFree,
    tp: Option<&TenantPolicy>,
) -> Vec<Arc<[Scope]>> {
    let priority = tp.map_or(Priority::Standard, |t| t.priority);
    class_names
        .iter()
        .chain(std::iter::once(other))
        .map(|class| {
            let mut scopes = Vec::with_capacity(3);
            if let Some(tp) = tp {
                scopes.extend(tp.wide.iter().cloned());
                scopes.extend(tp.by_class.get(class).cloned());
            }
            if let Some(o) = org.get(class) {
                let mut o = o.clone();
                o.keep_free_ppm = ppm(keep_free.for_priority(priority));
                scopes.push(o);
            }
            Arc::from(scopes)
        })
        .collect()
}

fn ppm(share: f64) -> u32 {
    (share.clamp(0.0, 1.0) * 1_000_000.0).round() as u32
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn remembered_models_keep_their_class_and_the_memo_stays_bounded() {
        let cfg = Config::from_toml("").unwrap();
        let p = Policy::build(&cfg).unwrap();
        let (i, a) = p.model_info("claude-sonnet-4-5");
        let (j, b) = p.model_info("claude-sonnet-4-5");
        assert_eq!((i, &*a), (j, "claude-sonnet-4-5"));
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second call shares the first's name"
        );
        assert_eq!(p.class_names.get(i), Some(p.class_of("claude-sonnet-4-5")));
        for n in 0..MODELS_REMEMBERED + 50 {
            for model in [format!("claude-opus-4-{n}"), format!("x-{n}")] {
                let (k, name) = p.model_info(&model);
                assert_eq!(k, p.class_index(&model), "{model}");
                assert_eq!(&*name, model);
            }
        }
        assert!(p.models.len() <= MODELS_REMEMBERED, "{}", p.models.len());
        assert_eq!(p.model_info("claude-sonnet-4-5").0, i);
    }
}
