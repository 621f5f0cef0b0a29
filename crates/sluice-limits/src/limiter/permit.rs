//! The permit of an admitted call: what it reserved, and its settlement to what the upstream
//! reported (the backend corrected, the estimators taught, the class's queue woken).

use super::policy::Policy;
use super::refusal::TenantView;
use super::{Backend, Limiter};
use crate::backend::{AdmitRequest, ScopeKind, Settlement};
use crate::estimate::{CorrectionSlot, OutputSlot};
use crate::queue::FairQueue;
use crate::redis::Via;
use crate::{Demand, Dimension};
use sluice_core::Usage;
use std::sync::Arc;
use std::time::Duration;

/// An admitted call. Settle it when the call ends; dropping it unsettled keeps the whole
/// reservation (the honest answer when nothing is known of what the upstream did).
pub struct Permit {
    pub(super) limiter: Option<Limiter>,
    pub(super) request: Option<AdmitRequest>,
    pub(super) via: Via,
    pub(super) view: TenantView,
    pub(super) model: Arc<str>,
    pub(super) class: Arc<str>,
    /// `class`'s index in the policy.
    pub(super) class_index: usize,
    /// Where settlement learns (a limited call's).
    pub(super) learn: Option<Learn>,
    pub(super) raw_input_estimate: u64,
    /// The call's cache breakpoints (hashes of cacheable prefixes of at least the minimum size).
    pub(super) breakpoints: Vec<u64>,
    pub(super) policy: Arc<Policy>,
    pub(super) waited: Duration,
    /// The class's upstream limit counts cache reads as input.
    pub(super) cache_reads_count: bool,
    /// The class's fair queue, woken at settlement (kept from admission: one map lookup and
    /// lock fewer per call).
    pub(super) queue: Option<Arc<FairQueue>>,
}

/// The estimators' slots a call reserved with, so that its settlement learns without finding
/// them again.
pub(super) struct Learn {
    pub(super) correction: Option<Arc<CorrectionSlot>>,
    pub(super) outputs: Arc<OutputSlot>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("request", &self.request)
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// The tenant's buckets after the admission (for the response headers).
    pub fn view(&self) -> &TenantView {
        &self.view
    }

    /// What was reserved.
    pub fn reserved(&self) -> Demand {
        self.request.as_ref().map(|r| r.demand).unwrap_or_default()
    }

    /// How long the call waited for room.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The model class.
    pub fn class(&self) -> &Arc<str> {
        &self.class
    }

    /// The upstream's reply reported what remains of the organisation's limits (`remaining`
    /// reads it, only when wanted): never believe the org pool of this call's class has more
    /// room than that. Sampled: at most one observation per class per [`OBSERVE_EVERY_US`](super::OBSERVE_EVERY_US),
    /// because every reply carries these headers and the pool only needs correcting when it
    /// drifts, not a write to the backend per call. The permit knows its pool, so this costs
    /// a call no lookup.
    pub fn observe_upstream<I: IntoIterator<Item = (Dimension, u64)>>(
        &self,
        remaining: impl FnOnce() -> I,
    ) {
        let (Some(limiter), Some(req)) = (&self.limiter, &self.request) else {
            return;
        };
        let Some(scope) = req.scopes.last().filter(|s| s.kind == ScopeKind::Org) else {
            return;
        };
        if let Some(last) = self.policy.observed.get(self.class_index) {
            limiter.observe_upstream(scope, last, remaining);
        }
    }

    /// The price table the call is charged by (the snapshot it was admitted under).
    pub fn prices(&self) -> &sluice_billing::PriceTable {
        &self.policy.prices
    }

    /// What prompt caching saved the call at its model's prices (see
    /// [`sluice_billing::ModelPrices::prompt_cache_saved_micros`]); `None` when unpriced.
    pub fn prompt_cache_saved(&self, usage: &Usage, model_served: Option<&str>) -> Option<i64> {
        let model = model_served.unwrap_or(&self.model);
        self.policy
            .prices
            .prompt_cache_saved_micros(model, usage, false)
    }

    /// Settle to what the upstream reported, learn from it, and return the call's cost in
    /// micro-dollars (`None` when the model has no price).
    pub fn settle(mut self, usage: &Usage, model_served: Option<&str>) -> Option<u64> {
        let model = model_served.unwrap_or(&self.model);
        let cost = self.policy.prices.cost_micros(model, usage, false);
        let Some(limiter) = self.limiter.take() else {
            return cost;
        };
        let inner = &limiter.0;
        let now = limiter.now_us();
        if let Some(l) = &self.learn {
            if let Some(c) = &l.correction {
                inner
                    .correction
                    .learn(c, self.raw_input_estimate, usage.total_input());
            }
            if usage.output_tokens > 0 {
                inner.outputs.learn(&l.outputs, usage.output_tokens);
            }
        }
        if usage.cache_creation_input_tokens + usage.cache_read_input_tokens > 0 {
            for h in &self.breakpoints {
                limiter.remember_prefix(*h, now);
            }
        }
        if let Some(request) = self.request.take() {
            let actual = Demand {
                requests: request.demand.requests,
                input_tokens: if self.cache_reads_count {
                    usage.total_input()
                } else {
                    usage.rate_limited_input()
                },
                output_tokens: usage.output_tokens,
            };
            let s = Settlement {
                request,
                actual,
                actual_cost_micros: cost.unwrap_or(0),
            };
            match &inner.backend {
                Backend::Local(b) => b.settle(&s, now),
                Backend::Redis(b) => b.settle(s, self.via),
            }
            match &self.queue {
                Some(q) => q.poke(),
                None => limiter.queue(&self.class).poke(),
            }
        }
        cost
    }
}
