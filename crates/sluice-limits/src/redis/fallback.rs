//! The answer while Redis is unreachable, by `fail_mode`: the embedded local limiter with
//! every limit scaled to the fallback share, a refusal, or an unchecked admission.

use super::{Admitted, RedisBackend, Via};
use crate::Rate;
use crate::backend::{AdmitRequest, BackendError, Outcome, Period, Rates, ScopeView, Views};
use crate::local::LocalBackend;
use sluice_config::FailMode;
use std::sync::atomic::Ordering;

impl RedisBackend {
    pub(super) fn fallback(
        &self,
        req: &AdmitRequest,
        local_now_us: u64,
    ) -> Result<Admitted, BackendError> {
        let sh = &self.shared;
        sh.fallbacks.fetch_add(1, Ordering::Relaxed);
        match sh.opts.fail_mode {
            FailMode::Local => {
                let scaled = scale_request(req, sh.opts.fallback_share);
                Ok(Admitted {
                    outcome: sh.local.admit(&scaled, local_now_us),
                    via: Via::Local,
                })
            }
            FailMode::Closed => Err(BackendError::Unavailable(
                "Redis is unreachable (fail_mode = \"closed\")".into(),
            )),
            FailMode::Open => Ok(Admitted {
                outcome: Outcome {
                    result: Ok(()),
                    views: Views::from_elem(ScopeView::default(), req.scopes.len()),
                },
                via: Via::Open,
            }),
        }
    }
}

/// Raise the fallback's spend of `tenant` in `period` number `at` to `micros` (never lower it:
/// the fallback may have admitted calls Redis has not heard of yet).
pub(super) fn raise_spend(
    local: &LocalBackend,
    tenant: &str,
    period: Period,
    at: u32,
    micros: u64,
) {
    let sp = local.spend(tenant);
    let have = match period {
        Period::Day if sp.day == at => sp.day_micros,
        Period::Month if sp.month == at => sp.month_micros,
        _ => 0,
    };
    if micros > have {
        local.add_spend(tenant, period, at, micros - have);
    }
}

/// `n` scaled to `share` of it, at least 1 when `n` is not 0 (a tiny limit times a small share
/// must not become "nothing ever").
pub(super) fn scale(n: u64, share: f64) -> u64 {
    if n == 0 {
        return 0;
    }
    let share = if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        1.0
    };
    // f64 holds every realistic limit exactly; the product is floored.
    let scaled = (n as f64 * share).floor();
    if scaled < 1.0 {
        1
    } else if scaled >= u64::MAX as f64 {
        u64::MAX
    } else {
        scaled as u64
    }
}

pub(super) fn scale_rates(r: &Rates, share: f64) -> Rates {
    let one = |r: Option<Rate>| {
        r.map(|r| Rate {
            per_minute: scale(r.per_minute, share),
            burst: scale(r.burst, share),
        })
    };
    Rates {
        requests: one(r.requests),
        input_tokens: one(r.input_tokens),
        output_tokens: one(r.output_tokens),
    }
}

fn scale_request(req: &AdmitRequest, share: f64) -> AdmitRequest {
    let mut r = req.clone();
    r.scopes = req
        .scopes
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.rates = scale_rates(&s.rates, share);
            s
        })
        .collect();
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn scaling_keeps_at_least_one() {
        assert_eq!(scale(100, 0.5), 50);
        assert_eq!(scale(1, 0.1), 1);
        assert_eq!(scale(0, 0.5), 0);
        assert_eq!(scale(10, f64::NAN), 10);
        assert_eq!(scale(10, 3.0), 10);
    }
}
