//! Limiter maths: unit cases and properties.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use proptest::prelude::*;

const SEC: u64 = 1_000_000;

fn tenant(rpm: u64, itpm: u64, otpm: u64) -> Buckets {
    Buckets {
        requests: Some(Bucket::full(Rate::per_minute(rpm), 0)),
        input_tokens: Some(Bucket::full(Rate::per_minute(itpm), 0)),
        output_tokens: Some(Bucket::full(Rate::per_minute(otpm), 0)),
    }
}

fn demand(i: u64, o: u64) -> Demand {
    Demand {
        requests: 1,
        input_tokens: i,
        output_tokens: o,
    }
}

#[test]
fn refill_is_continuous_not_a_window() {
    let mut b = Bucket::full(Rate::per_minute(600), 0);
    b.take(600);
    b.refill(SEC); // 600/min = 10/s
    assert_eq!(b.level(), 10);
    b.refill(SEC + SEC / 2);
    assert_eq!(b.level(), 15);
    b.refill(120 * SEC);
    assert_eq!(b.level(), 600, "never above capacity");
}

#[test]
fn wait_is_exact_to_the_microsecond() {
    let mut b = Bucket::full(Rate::per_minute(60), 0); // 1 token per second
    b.take(60);
    let w = b.wait_us(3);
    assert_eq!(w, 3 * SEC);
    let mut early = b.clone();
    early.refill(w - 1);
    assert!(early.wait_us(3) > 0);
    b.refill(w);
    assert_eq!(b.wait_us(3), 0);
}

#[test]
fn admission_is_all_or_nothing_across_scopes() {
    let mut t = tenant(100, 1_000, 1_000);
    let mut org = tenant(100, 50, 1_000);
    let before = (t.clone(), org.clone());
    let r = admit(&mut [&mut t, &mut org], &demand(40, 10), 0);
    assert!(r.is_ok());
    let r = admit(&mut [&mut t, &mut org], &demand(40, 10), 0);
    match r {
        Err(Refusal::Wait {
            scope,
            dimension,
            retry_after_us,
        }) => {
            assert_eq!(scope, 1);
            assert_eq!(dimension, Dimension::InputTokens);
            // 30 input tokens short at 50/min.
            assert_eq!(retry_after_us, 36 * SEC);
        }
        other => panic!("{other:?}"),
    }
    // The refused request debited nothing: the tenant paid only for the first.
    assert_eq!(
        t.requests.as_ref().unwrap().level(),
        before.0.requests.unwrap().level() - 1
    );
    assert_eq!(org.input_tokens.as_ref().unwrap().level(), 10);
}

#[test]
fn a_demand_larger_than_capacity_never_fits() {
    let mut t = tenant(100, 1_000, 1_000);
    let r = admit(&mut [&mut t], &demand(1_001, 1), 0);
    assert_eq!(
        r,
        Err(Refusal::NeverFits {
            scope: 0,
            dimension: Dimension::InputTokens
        })
    );
}

#[test]
fn settlement_refunds_and_charges_into_debt() {
    let mut t = tenant(100, 1_000, 1_000);
    admit(&mut [&mut t], &demand(100, 500), 0).unwrap();
    // Used less output than reserved: refund.
    settle(&mut [&mut t], &demand(100, 500), &demand(100, 200), 0);
    assert_eq!(t.output_tokens.as_ref().unwrap().level(), 800);
    // Used far more input than estimated: the bucket goes into debt and later calls wait.
    admit(&mut [&mut t], &demand(100, 0), 0).unwrap();
    settle(&mut [&mut t], &demand(100, 0), &demand(1_900, 0), 0);
    let b = t.input_tokens.as_ref().unwrap();
    assert_eq!(b.level(), -1_000);
    assert_eq!(b.wait_us(1), 60 * SEC + 60_000); // 1001 tokens at 1000/min
}

#[test]
fn unlimited_dimensions_never_refuse() {
    let mut t = Buckets {
        requests: Some(Bucket::full(Rate::per_minute(1), 0)),
        ..Buckets::default()
    };
    assert!(admit(&mut [&mut t], &demand(u64::MAX / 2, u64::MAX / 2), 0).is_ok());
    assert!(admit(&mut [&mut t], &demand(0, 0), 0).is_err());
}

/// Drive a tenant limited to `n` tokens/min at 5x demand for two minutes of simulated time:
/// after the initial burst, admissions track the refill rate within ±2%.
#[test]
fn five_times_demand_is_admitted_at_the_limit() {
    let n = 120_000u64;
    let mut t = Buckets {
        input_tokens: Some(Bucket::full(Rate::per_minute(n), 0)),
        ..Buckets::default()
    };
    let per_req = 1_000u64;
    // 5n tokens per minute of demand = one request every 60s / (5n / per_req).
    let step = 60 * SEC / (5 * n / per_req);
    let mut admitted_in_second_minute = 0u64;
    let mut now = 0;
    while now < 120 * SEC {
        if admit(
            &mut [&mut t],
            &Demand {
                input_tokens: per_req,
                ..Demand::default()
            },
            now,
        )
        .is_ok()
            && now >= 60 * SEC
        {
            admitted_in_second_minute += per_req;
        }
        now += step;
    }
    let err = (admitted_in_second_minute as f64 - n as f64).abs() / n as f64;
    assert!(
        err <= 0.02,
        "admitted {admitted_in_second_minute} vs {n}/min ({err:.4})"
    );
}

proptest! {
    /// Whatever the arrivals, a bucket never holds more than its capacity, and what it admits
    /// over any run is at most its capacity plus what the elapsed time refilled.
    #[test]
    fn admitted_never_exceeds_burst_plus_refill(
        per_minute in 1u64..1_000_000,
        burst_extra in 0u64..1_000_000,
        arrivals in proptest::collection::vec((0u64..5 * SEC, 0u64..50_000), 1..200),
    ) {
        let rate = Rate { per_minute, burst: per_minute + burst_extra };
        let mut scope = Buckets { input_tokens: Some(Bucket::full(rate, 0)), ..Buckets::default() };
        let mut now = 0u64;
        let mut admitted: u128 = 0;
        for (dt, amount) in arrivals {
            now += dt;
            let d = Demand { input_tokens: amount, ..Demand::default() };
            if admit(&mut [&mut scope], &d, now).is_ok() {
                admitted += u128::from(amount);
            }
            let b = scope.input_tokens.as_ref().unwrap();
            prop_assert!(b.level() <= i64::try_from(rate.burst).unwrap());
        }
        let refilled = u128::from(now) * u128::from(per_minute) / 60_000_000;
        prop_assert!(admitted <= u128::from(rate.burst) + refilled + 1);
    }

    /// A refusal leaves every bucket exactly as a bare refill would.
    #[test]
    fn refusal_changes_nothing_but_time(
        levels in proptest::collection::vec(0u64..2_000, 3),
        d in (0u64..3_000, 0u64..3_000),
        t in 0u64..10 * SEC,
    ) {
        let mut a = tenant(1_000, 1_000, 1_000);
        a.input_tokens.as_mut().unwrap().take(1_000 - levels[1].min(1_000));
        a.output_tokens.as_mut().unwrap().take(1_000 - levels[2].min(1_000));
        let mut b = a.clone();
        let r = admit(&mut [&mut a], &demand(d.0, d.1), t);
        // Refill is lazy, so compare the two at the same instant.
        for dim in Dimension::ALL {
            if let Some(x) = b.get_mut(dim) { x.refill(t) }
            if let Some(x) = a.get_mut(dim) { x.refill(t) }
        }
        if r.is_err() {
            prop_assert_eq!(a, b);
        }
    }

    /// If admission says "wait w", it succeeds at exactly w and not a microsecond earlier.
    #[test]
    fn retry_after_is_tight(
        per_minute in 1u64..10_000_000,
        used in 0u64..10_000_000,
        amount in 1u64..10_000_000,
    ) {
        let cap = per_minute.max(amount);
        let mut s = Buckets { output_tokens: Some(Bucket::full(Rate { per_minute, burst: cap }, 0)), ..Buckets::default() };
        s.output_tokens.as_mut().unwrap().take(used.min(cap));
        let d = Demand { output_tokens: amount, ..Demand::default() };
        if let Err(Refusal::Wait { retry_after_us, .. }) = admit(&mut [&mut s.clone()], &d, 0) {
            let mut early = s.clone();
            prop_assert!(admit(&mut [&mut early], &d, retry_after_us - 1).is_err());
            prop_assert!(admit(&mut [&mut s], &d, retry_after_us).is_ok());
        }
    }

    /// Settling exactly what was reserved is a no-op; reserve-then-settle equals charging the
    /// actual amount directly (before the capacity cap interferes).
    #[test]
    fn settlement_conserves_tokens(reserved in 0u64..500, actual in 0u64..3_000) {
        let mut a = tenant(1_000, 1_000, 1_000);
        let mut b = a.clone();
        let r = Demand { requests: 1, input_tokens: reserved, output_tokens: 0 };
        let x = Demand { requests: 1, input_tokens: actual, output_tokens: 0 };
        admit(&mut [&mut a], &r, 0).unwrap();
        settle(&mut [&mut a], &r, &r, 0);
        let mut a2 = a.clone();
        settle(&mut [&mut a2], &r, &x, 0);
        for dim in Dimension::ALL { if let Some(bk) = b.get_mut(dim) { bk.take(dim.of(&x)) } }
        prop_assert_eq!(a2, b);
    }
}
