//! An admission in Redis: one `EVALSHA` of `admit.lua` over every scope and the tenant's
//! budget counters, its reply read back into an [`Outcome`], and the fallback kept abreast of
//! the tenant's spend.

use super::connection::{CallError, Live};
use super::fallback::raise_spend;
use super::keys::{DAY_TTL_MS, MONTH_TTL_MS, micros, micros_i64, rate_args, tokens};
use super::{Admitted, RedisBackend, Via};
use crate::Dimension;
use crate::backend::{
    AdmitRequest, BackendError, BucketView, Denial, Outcome, Period, Rates, ScopeView,
};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long past its wait a replica's claim on the room it was refused lasts (see
/// `admit.lua`): long enough for a client's or a waiting call's next try, short enough that a
/// claimant that went away leaves that room idle only briefly.
const CLAIM_GRACE: Duration = Duration::from_millis(250);

impl RedisBackend {
    /// Admit (or refuse) `req`. `local_now_us` is the caller's monotonic clock, used by the
    /// fallback (and by Redis only with [`RedisOptions::caller_clock`]).
    pub async fn admit(
        &self,
        req: &AdmitRequest,
        local_now_us: u64,
    ) -> Result<Admitted, BackendError> {
        let sh = &self.shared;
        sh.local_now.fetch_max(local_now_us, Ordering::Relaxed);
        sh.wait_started().await;
        if let Some(live) = sh.live.load_full() {
            let call = self.admit_redis(&live, req, local_now_us);
            let res = match tokio::time::timeout(sh.opts.timeout, call).await {
                Ok(r) => r,
                Err(_) => Err(CallError::Timeout(sh.opts.timeout)),
            };
            match res {
                Ok(outcome) => {
                    return Ok(Admitted {
                        outcome,
                        via: Via::Redis,
                    });
                }
                Err(e) => sh.failed(&live, &e, "admission"),
            }
        }
        self.fallback(req, local_now_us)
    }

    async fn admit_redis(
        &self,
        live: &Live,
        req: &AdmitRequest,
        local_now_us: u64,
    ) -> Result<Outcome, CallError> {
        let sh = &self.shared;
        let mut inv = sh.scripts.admit.prepare_invoke();
        for s in req.scopes.iter() {
            inv.key(self.scope_key(&req.tenant, s));
        }
        if let Some(b) = req.budget {
            inv.key(self.spend_key(&req.tenant, Period::Day, b.day));
            inv.key(self.spend_key(&req.tenant, Period::Month, b.month));
        }
        inv.arg(self.now_arg(local_now_us))
            .arg(req.scopes.len())
            .arg(tokens(req.demand.requests))
            .arg(tokens(req.demand.input_tokens))
            .arg(tokens(req.demand.output_tokens));
        match req.budget {
            Some(b) => inv
                .arg(1)
                .arg(micros(b.cost_micros))
                .arg(b.daily_micros.map_or(-1, micros_i64))
                .arg(b.monthly_micros.map_or(-1, micros_i64))
                .arg(DAY_TTL_MS)
                .arg(MONTH_TTL_MS),
            None => inv.arg(0).arg(0).arg(-1).arg(-1).arg(0).arg(0),
        };
        for s in req.scopes.iter() {
            inv.arg(s.keep_free_ppm.min(1_000_000));
            push_rates(&mut inv, &s.rates);
        }
        inv.arg(&*sh.replica)
            .arg(u64::try_from(CLAIM_GRACE.as_micros()).unwrap_or(u64::MAX));
        let mut conn = live.conn.clone();
        let raw: Vec<i64> = inv.invoke_async(&mut conn).await?;
        let (outcome, spent) = parse_admit(&raw, req.scopes.len())?;
        // Keep the fallback's idea of the tenant's spend current, so an outage does not reset
        // the budget.
        if let (Some(b), Some((day, month))) = (req.budget, spent) {
            raise_spend(&sh.local, &req.tenant, Period::Day, b.day, day);
            raise_spend(&sh.local, &req.tenant, Period::Month, b.month, month);
        }
        Ok(outcome)
    }
}

fn push_rates(inv: &mut ::redis::ScriptInvocation<'_>, rates: &Rates) {
    for d in Dimension::ALL {
        let (pm, burst) = rate_args(rates.get(d));
        inv.arg(pm).arg(burst);
    }
}

fn dim_of(i: i64) -> Result<Dimension, CallError> {
    usize::try_from(i)
        .ok()
        .and_then(|i| Dimension::ALL.get(i).copied())
        .ok_or_else(|| CallError::Reply(format!("dimension {i}")))
}

fn u(i: i64) -> u64 {
    u64::try_from(i).unwrap_or(0)
}

/// The admission script's reply: the outcome and, with a budget, the day's and month's spend.
fn parse_admit(raw: &[i64], n: usize) -> Result<(Outcome, Option<(u64, u64)>), CallError> {
    const HEAD: usize = 7;
    if raw.len() != HEAD + 9 * n {
        return Err(CallError::Reply(format!(
            "{} numbers for {n} scopes",
            raw.len()
        )));
    }
    let (status, a, b, c) = (raw[0], raw[1], raw[2], raw[3]);
    let scope = |a: i64| -> Result<usize, CallError> {
        usize::try_from(a)
            .ok()
            .filter(|&s| s < n)
            .ok_or_else(|| CallError::Reply(format!("scope {a}")))
    };
    let result = match status {
        0 => Ok(()),
        1 => Err(Denial::Wait {
            scope: scope(a)?,
            dimension: dim_of(b)?,
            retry_after_us: if c < 0 { u64::MAX } else { u(c) },
        }),
        2 => Err(Denial::NeverFits {
            scope: scope(a)?,
            dimension: dim_of(b)?,
        }),
        3 => Err(Denial::Budget {
            period: if a == 0 { Period::Day } else { Period::Month },
            limit_micros: u(b),
            spent_micros: u(c),
        }),
        s => return Err(CallError::Reply(format!("status {s}"))),
    };
    let spent = (raw[4] >= 0 && raw[5] >= 0).then(|| (u(raw[4]), u(raw[5])));
    let views = raw[HEAD..]
        .chunks_exact(9)
        .map(|v| {
            let one = |o: usize| {
                (v[o] >= 0).then(|| BucketView {
                    limit: u(v[o]),
                    remaining: u(v[o + 1]),
                    full_in_us: if v[o + 2] < 0 { u64::MAX } else { u(v[o + 2]) },
                })
            };
            ScopeView {
                requests: one(0),
                input_tokens: one(3),
                output_tokens: one(6),
            }
        })
        .collect();
    Ok((Outcome { result, views }, spent))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_short_reply_is_an_error_not_a_panic() {
        assert!(parse_admit(&[0, 0, 0], 1).is_err());
        assert!(parse_admit(&[1, 5, 0, 10, -1, -1, 0], 0).is_err());
        assert!(parse_admit(&[9, 0, 0, 0, -1, -1, 0], 0).is_err());
    }
}
