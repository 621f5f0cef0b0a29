//! Admission: a call prepared once (scopes, estimates, budget check), tried against the
//! backend, and either admitted, refused, or made to wait in its class's fair queue up to the
//! tenant's `max_wait_ms`; and the precheck that refuses a certain refusal before the body is
//! read.

use super::period::day_and_month;
use super::permit::{Learn, Permit};
use super::refusal::{RefusalReason, Refused, TenantView, describe};
use super::{Backend, CallInfo, Limiter};
use crate::Demand;
use crate::Dimension;
use crate::backend::{
    AdmitRequest, BackendError, BudgetCheck, Denial, Outcome, Period, ScopeKind, ScopeView,
};
use crate::estimate::{estimate_input, estimate_input_auto};
use crate::queue::{FairQueue, Place, Seat};
use crate::redis::Via;
use sluice_config::{Config, Priority};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Prefixes shorter than this are never cached upstream (the smallest published minimum is
/// 1024 tokens; some models need more, where a prediction errs towards reserving).
const MIN_CACHEABLE: u64 = 1024;

/// A call on its way through admission: what [`Limiter::acquire`] prepared once and every
/// attempt reuses.
struct Waiting {
    /// The permit it will get (its request, view and wait filled in at admission).
    permit: Permit,
    req: AdmitRequest,
    priority: Priority,
    weight: u32,
    max_wait: Duration,
    can_wait: bool,
    /// When it was first found short of room (the wait is measured from there).
    started: Option<Instant>,
    queue: Arc<FairQueue>,
    /// Its size in the fair queue.
    cost_tokens: u64,
    unix_ms: i64,
    /// The limiter's clock when it was prepared.
    prepared_at_us: u64,
}

impl Waiting {
    fn admitted(self, view: TenantView, via: Via, waited: Duration) -> Permit {
        let mut permit = self.permit;
        permit.request = Some(self.req);
        permit.via = via;
        permit.view = view;
        permit.waited = waited;
        permit.queue = Some(self.queue);
        permit
    }
}

/// What [`Limiter::prepare`] found. The variants are both about a permit's size: neither
/// is boxed, so an unlimited call allocates nothing here.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    Unlimited(Permit),
    Limited(Waiting),
}

/// See [`Limiter::decide`].
enum Decided {
    Admitted(TenantView, Via, Duration),
    Refused(Box<Refused>),
    Wait(usize, u64),
}

impl Limiter {
    async fn admit_once(&self, req: &AdmitRequest) -> Result<(Outcome, Via), BackendError> {
        match &self.0.backend {
            Backend::Local(b) => Ok((b.admit(req, self.now_us()), Via::Local)),
            Backend::Redis(b) => b
                .admit(req, self.now_us())
                .await
                .map(|a| (a.outcome, a.via)),
        }
    }

    /// Admit a call, waiting for room up to the tenant's `max_wait_ms`.
    ///
    /// Most calls are admitted (or refused) by the in-process backend at once: that path runs
    /// synchronously and never builds the waiting machinery, so the future the request
    /// handler awaits stays small. Only a call that must wait, or one that asks Redis, goes on
    /// to [`Limiter::wait_for_room`], boxed.
    pub async fn acquire(
        &self,
        cfg: &Arc<Config>,
        call: CallInfo<'_>,
    ) -> Result<Permit, Box<Refused>> {
        let mut w = match self.prepare(cfg, call) {
            Prepared::Limited(w) => w,
            Prepared::Unlimited(permit) => return Ok(permit),
        };
        let mut first = None;
        if let Backend::Local(b) = &self.0.backend
            && !(w.can_wait && w.queue.busy_at_or_above(w.priority))
        {
            // The clock read while preparing is microseconds old: close enough to admit at.
            let outcome = b.admit(&w.req, w.prepared_at_us);
            match self.decide(&mut w, &mut None, outcome, Via::Local) {
                Decided::Admitted(view, via, waited) => return Ok(w.admitted(view, via, waited)),
                Decided::Refused(r) => return Err(r),
                Decided::Wait(scope, retry_after_us) => first = Some((scope, retry_after_us)),
            }
        }
        Box::pin(self.wait_for_room(w, first)).await
    }

    /// Whether a Messages call of `tenant` is certain to be refused, judged from what is known
    /// before its body is read (so a refused client is not buffered first): its daily or
    /// monthly budget is already spent, or its own tenant-wide request bucket is empty for
    /// longer than it may wait (`max_wait_ms`). The refusal is the one [`Limiter::acquire`]
    /// would give. Nothing is taken: a call that passes still goes through `acquire`, which
    /// alone admits. Model-class buckets and the org pool need the model, so they are not
    /// looked at.
    ///
    /// Only the in-process backend is looked at: with Redis the look would be a round trip
    /// per call on top of the admission's, so there every call's body is read first.
    pub fn precheck(
        &self,
        cfg: &Arc<Config>,
        tenant: &Arc<str>,
        unix_ms: i64,
    ) -> Result<(), Box<Refused>> {
        let Backend::Local(b) = &self.0.backend else {
            return Ok(());
        };
        let policy = self.policy(cfg);
        let Some(tp) = policy.tenants.get(&**tenant) else {
            return Ok(());
        };
        let refuse = |d: Denial, now_us: u64| {
            // Built only to word a refusal: the tenant's own scope, as an admission lists it.
            let req = AdmitRequest {
                tenant: tenant.clone(),
                scopes: tp.wide.iter().cloned().collect(),
                demand: Demand {
                    requests: 1,
                    ..Demand::default()
                },
                budget: None,
            };
            let views: Vec<ScopeView> = req.scopes.iter().map(|s| b.view(s, now_us)).collect();
            let view = TenantView::from_outcome(&req, &views);
            Err(self.refuse(describe(&req, d, view, unix_ms), None))
        };
        if tp.daily_micros.is_some() || tp.monthly_micros.is_some() {
            let (day, month) = day_and_month(unix_ms);
            let sp = b.spend(tenant);
            let checks = [
                (Period::Day, tp.daily_micros, sp.day == day, sp.day_micros),
                (
                    Period::Month,
                    tp.monthly_micros,
                    sp.month == month,
                    sp.month_micros,
                ),
            ];
            for (period, limit, current, spent) in checks {
                if let Some(limit) = limit
                    && current
                    && spent >= limit
                {
                    let d = Denial::Budget {
                        period,
                        limit_micros: limit,
                        spent_micros: spent,
                    };
                    return refuse(d, self.now_us());
                }
            }
        }
        if let Some(wide) = &tp.wide {
            let now = self.now_us();
            if let Some(wait) = b.request_wait_us(wide, now)
                && wait > 0
                && Duration::from_micros(wait) > tp.max_wait
            {
                let d = Denial::Wait {
                    scope: 0,
                    dimension: Dimension::Requests,
                    retry_after_us: wait,
                };
                return refuse(d, now);
            }
        }
        Ok(())
    }

    /// Admit a call that the gateway answers itself (a response-cache hit): one request from
    /// the tenant's own request buckets (tenant-wide and for the model's class), no tokens,
    /// no budget (it costs nothing) and not the org pool (the upstream is not called). It
    /// never waits: a hit that would have to is refused like any call over its request rate.
    /// With Redis away the call is let through, as it spends nothing the upstream would bill.
    /// Returns the tenant's buckets as the rate-limit headers show them.
    pub async fn admit_request_only(
        &self,
        cfg: &Arc<Config>,
        tenant: &Arc<str>,
        model: &str,
        unix_ms: i64,
    ) -> Result<TenantView, Box<Refused>> {
        let policy = self.policy(cfg);
        let (ci, _) = policy.model_info(model);
        let Some(tp) = policy.tenants.get(&**tenant) else {
            return Ok(TenantView::default());
        };
        let Some(scopes) = tp.request_plans.get(ci).filter(|p| !p.is_empty()) else {
            return Ok(TenantView::default());
        };
        let req = AdmitRequest {
            tenant: tenant.clone(),
            scopes: scopes.clone(),
            demand: Demand {
                requests: 1,
                ..Demand::default()
            },
            budget: None,
        };
        let Ok((outcome, _)) = self.admit_once(&req).await else {
            return Ok(TenantView::default());
        };
        let view = TenantView::from_outcome(&req, &outcome.views);
        match outcome.result {
            Ok(()) => {
                self.0.stats.admitted.fetch_add(1, Ordering::Relaxed);
                Ok(view)
            }
            Err(d) => Err(self.refuse(describe(&req, d, view, unix_ms), None)),
        }
    }

    /// Everything about a call that admission needs, or the permit of a call that nothing
    /// limits.
    fn prepare(&self, cfg: &Arc<Config>, call: CallInfo<'_>) -> Prepared {
        let policy = self.policy(cfg);
        let (ci, model) = policy.model_info(call.model);
        let class = policy.class_name(ci).clone();
        let queue = policy.queues.get(ci).cloned();
        let now = self.now_us();

        let tp = policy.tenants.get(&**call.tenant);
        let scopes = tp
            .map_or(&policy.default_plans, |t| &t.plans)
            .get(ci)
            .cloned()
            .unwrap_or_default();
        let priority = tp.map_or(Priority::Standard, |t| t.priority);
        let has_budget = tp.is_some_and(|t| t.daily_micros.is_some() || t.monthly_micros.is_some());
        if scopes.is_empty() && !has_budget {
            // Nothing limits this call: no estimate is needed (an unlimited tenant's calls cost
            // the request path nothing here), and there is nothing to settle.
            self.0.stats.admitted.fetch_add(1, Ordering::Relaxed);
            return Prepared::Unlimited(Permit {
                limiter: None,
                request: None,
                via: Via::Local,
                view: TenantView::default(),
                model,
                class,
                class_index: ci,
                learn: None,
                raw_input_estimate: 0,
                breakpoints: Vec::new(),
                policy,
                waited: Duration::ZERO,
                cache_reads_count: false,
                queue: None,
            });
        }
        let est = if call.auto_prompt_cache {
            estimate_input_auto(call.body)
        } else {
            estimate_input(call.body)
        };
        let correction = Some(self.0.correction.slot(&model));
        let corrected = correction
            .as_ref()
            .map_or(est.total, |c| c.apply(est.total));
        let cache_reads_count = policy.cache_reads_count.contains(&class);
        // Cache reads are free: predict them. The longest prefix (a breakpoint of this call,
        // or a block boundary just before its last one, where the upstream looks for earlier
        // turns' entries) that a recent call wrote or read is assumed to be read again.
        let cached_raw = if cache_reads_count {
            0
        } else {
            est.breakpoints()
                .iter()
                .chain(est.lookback())
                .filter(|p| p.tokens >= MIN_CACHEABLE)
                .filter(|p| self.prefix_is_cached(p.hash, now, policy.cache_ttl_us))
                .map(|p| p.tokens)
                .max()
                .unwrap_or(0)
        };
        // Scaled by the same correction as the whole.
        let cached = u64::try_from(
            u128::from(cached_raw) * u128::from(corrected.max(1)) / u128::from(est.total.max(1)),
        )
        .unwrap_or(u64::MAX);
        let input = corrected.saturating_sub(cached).max(1);
        let outputs = self.0.outputs.slot(call.tenant, &model);
        let output = outputs.reserve(call.max_tokens);

        let budget = tp.and_then(|t| {
            (t.daily_micros.is_some() || t.monthly_micros.is_some()).then(|| {
                let (day, month) = day_and_month(call.unix_ms);
                BudgetCheck {
                    cost_micros: policy
                        .prices
                        .estimate_micros(call.model, input, output, false)
                        .unwrap_or(0),
                    day,
                    month,
                    daily_micros: t.daily_micros,
                    monthly_micros: t.monthly_micros,
                }
            })
        });
        let queue = queue.unwrap_or_else(|| self.queue(&class));
        let max_wait = tp.map_or(Duration::ZERO, |t| t.max_wait);
        let weight = tp.map_or(1, |t| t.weight);
        let permit = Permit {
            limiter: Some(self.clone()),
            request: None,
            via: Via::Local,
            view: TenantView::default(),
            model,
            class,
            class_index: ci,
            learn: Some(Learn {
                correction,
                outputs,
            }),
            raw_input_estimate: est.total,
            breakpoints: est
                .breakpoints()
                .iter()
                .filter(|p| p.tokens >= MIN_CACHEABLE)
                .map(|p| p.hash)
                .collect(),
            policy,
            waited: Duration::ZERO,
            cache_reads_count,
            // Given at admission (a refused call never needs it).
            queue: None,
        };
        Prepared::Limited(Waiting {
            permit,
            req: AdmitRequest {
                tenant: call.tenant.clone(),
                scopes,
                demand: Demand {
                    requests: 1,
                    input_tokens: input,
                    output_tokens: output,
                },
                budget,
            },
            priority,
            weight,
            max_wait,
            can_wait: !max_wait.is_zero(),
            started: None,
            queue,
            cost_tokens: input.saturating_add(output),
            unix_ms: call.unix_ms,
            prepared_at_us: now,
        })
    }

    /// What one admission attempt means for the call: admitted, refused for good, or short
    /// of room in the scope at that index for `retry_after_us` and allowed to wait that long.
    /// An admission or a refusal gives up `seat`; a wait keeps it.
    fn decide(
        &self,
        w: &mut Waiting,
        seat: &mut Option<Seat>,
        outcome: Outcome,
        via: Via,
    ) -> Decided {
        let view = TenantView::from_outcome(&w.req, &outcome.views);
        match outcome.result {
            Ok(()) => {
                let queued = seat.is_some();
                if let Some(s) = seat.take() {
                    s.leave(true);
                }
                let waited = w.started.map_or(Duration::ZERO, |t| t.elapsed());
                let st = &self.0.stats;
                st.admitted.fetch_add(1, Ordering::Relaxed);
                if !waited.is_zero() {
                    if queued {
                        st.admitted_after_wait.fetch_add(1, Ordering::Relaxed);
                    }
                    st.wait_us_total.fetch_add(
                        u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                }
                Decided::Admitted(view, via, waited)
            }
            Err(d @ (Denial::Budget { .. } | Denial::NeverFits { .. })) => {
                let r = describe(&w.req, d, view, w.unix_ms);
                Decided::Refused(self.refuse(r, seat.take()))
            }
            Err(
                d @ Denial::Wait {
                    scope,
                    retry_after_us,
                    ..
                },
            ) => {
                let now = Instant::now();
                let deadline = *w.started.get_or_insert(now) + w.max_wait;
                if !w.can_wait || now + Duration::from_micros(retry_after_us) > deadline {
                    let r = describe(&w.req, d, view, w.unix_ms);
                    return Decided::Refused(self.refuse(r, seat.take()));
                }
                Decided::Wait(scope, retry_after_us)
            }
        }
    }

    /// Wait in the class's fair queue (or aside, when only the tenant's own bucket is short)
    /// until the call is admitted, refused, or out of `max_wait_ms`. `first` is the wait the
    /// synchronous attempt already found, if it made one.
    async fn wait_for_room(
        &self,
        mut w: Waiting,
        mut first: Option<(usize, u64)>,
    ) -> Result<Permit, Box<Refused>> {
        let started = *w.started.get_or_insert_with(Instant::now);
        let deadline = started + w.max_wait;
        let mut seat: Option<Seat> = None;
        let queue = w.queue.clone();
        let join = |w: &Waiting, rejoin: Option<Place>| {
            Seat::take(
                &queue,
                &w.req.tenant,
                w.priority,
                w.cost_tokens,
                w.weight,
                rejoin,
            )
        };

        loop {
            let (scope, retry_after_us) = match first.take() {
                Some(wait) => wait,
                None => {
                    if let Some(s) = &seat {
                        if !s.is_head() {
                            if tokio::time::timeout_at(deadline, s.notified())
                                .await
                                .is_err()
                            {
                                let r = Refused {
                                    reason: RefusalReason::OrgPool,
                                    message: format!(
                                        "the shared {} capacity stayed busy for the {} ms tenant '{}' may wait (max_wait_ms); retry shortly",
                                        w.permit.class,
                                        w.max_wait.as_millis(),
                                        w.req.tenant
                                    ),
                                    retry_after_secs: 1,
                                    should_retry: true,
                                    view: self.current_view(&w.req),
                                };
                                return Err(self.refuse(r, seat));
                            }
                            continue;
                        }
                    } else if w.can_wait && w.queue.busy_at_or_above(w.priority) {
                        seat = Some(join(&w, None));
                        continue;
                    }

                    let (outcome, via) = match self.admit_once(&w.req).await {
                        Ok(o) => o,
                        Err(e) => {
                            let r = Refused {
                                reason: RefusalReason::Unavailable,
                                message: format!(
                                    "the rate limiter is unavailable ({e}) and this gateway is configured to refuse calls until it is back; retry shortly"
                                ),
                                retry_after_secs: 1,
                                should_retry: true,
                                view: TenantView::default(),
                            };
                            return Err(self.refuse(r, seat));
                        }
                    };
                    match self.decide(&mut w, &mut seat, outcome, via) {
                        Decided::Admitted(view, via, waited) => {
                            return Ok(w.admitted(view, via, waited));
                        }
                        Decided::Refused(r) => return Err(r),
                        Decided::Wait(scope, retry_after_us) => (scope, retry_after_us),
                    }
                }
            };
            let wait = Duration::from_micros(retry_after_us);
            let is_org = w
                .req
                .scopes
                .get(scope)
                .is_some_and(|s| s.kind == ScopeKind::Org);
            if is_org {
                let s = seat.get_or_insert_with(|| join(&w, None));
                if s.is_head() {
                    // Sleep until the pool has room for us, or until a refund pokes us.
                    let _ = tokio::time::timeout(wait, s.notified()).await;
                }
            } else {
                // Our own tenant's bucket is short: step aside so the rest of the class is not
                // held up, and come back to the same place.
                let old = seat.take().map(|s| s.leave(false));
                tokio::time::sleep(wait).await;
                if let Some(p) = old {
                    seat = Some(join(&w, Some(p)));
                }
            }
        }
    }

    fn refuse(&self, r: Refused, seat: Option<Seat>) -> Box<Refused> {
        if let Some(s) = seat {
            s.leave(false);
        }
        let c = match r.reason {
            RefusalReason::TenantRate => &self.0.stats.refused_tenant,
            RefusalReason::OrgPool => &self.0.stats.refused_org,
            RefusalReason::Budget => &self.0.stats.refused_budget,
            RefusalReason::Unavailable => &self.0.stats.refused_unavailable,
        };
        c.fetch_add(1, Ordering::Relaxed);
        Box::new(r)
    }
    /// The tenant's buckets now, without admitting anything.
    fn current_view(&self, req: &AdmitRequest) -> TenantView {
        match &self.0.backend {
            Backend::Local(b) => {
                let now = self.now_us();
                let views: Vec<ScopeView> = req.scopes.iter().map(|s| b.view(s, now)).collect();
                TenantView::from_outcome(req, &views)
            }
            Backend::Redis(_) => TenantView::default(),
        }
    }
}
