//! Proof under load, at the limiter's own API and in accelerated time (tokio's paused clock
//! jumps forward whenever every task is asleep, so minutes of traffic take milliseconds):
//! continuous refill at 5× demand, fair sharing of a short organisation pool between a greedy
//! and a light tenant, a critical tenant unaffected by a batch tenant's backlog, and budgets
//! that hold under 200 concurrent calls.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sluice_config::Config;
use sluice_core::Usage;
use sluice_limits::estimate::estimate_input;
use sluice_limits::limiter::{Backend, CallInfo, Limiter, RefusalReason};
use sluice_limits::local::LocalBackend;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BODY: &str = r#"{"model":"m-1","max_tokens":10,"messages":[{"role":"user","content":"Summarise the quarterly report for the board in three short bullet points, please."}]}"#;

fn estimate() -> u64 {
    estimate_input(BODY.as_bytes()).total
}

fn limiter(toml: &str) -> (Limiter, Arc<Config>) {
    let cfg = Arc::new(Config::from_toml(toml).unwrap());
    let l = Limiter::new(&cfg, Backend::Local(LocalBackend::new())).unwrap();
    (l, cfg)
}

fn usage(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    }
}

/// One call: acquire, then settle as if the upstream reported exactly the estimate.
async fn call(
    l: &Limiter,
    cfg: &Arc<Config>,
    tenant: &Arc<str>,
) -> Result<Duration, RefusalReason> {
    let info = CallInfo {
        tenant,
        model: "m-1",
        max_tokens: 10,
        body: BODY.as_bytes(),
        unix_ms: 1_700_000_000_000,
        auto_prompt_cache: false,
    };
    match l.acquire(cfg, info).await {
        Ok(p) => {
            let waited = p.waited();
            let reserved = p.reserved();
            p.settle(&usage(reserved.input_tokens, 10), None);
            Ok(waited)
        }
        Err(r) => Err(r.reason),
    }
}

#[tokio::test(start_paused = true)]
async fn five_times_demand_is_admitted_at_the_limit_with_continuous_refill() {
    let e = estimate();
    // N input tokens per minute = 100 calls' worth per minute.
    let n = 100 * e;
    let (l, cfg) = limiter(&format!(
        "[[limits.classes]]\nname = \"m\"\nmodels = [\"m-*\"]\n[[tenants]]\nname = \"t\"\nlimits = {{ input_tokens_per_minute = {n} }}\n"
    ));
    let t: Arc<str> = Arc::from("t");
    // 5× demand: 500 calls per minute, evenly spaced, for two minutes.
    let interval = Duration::from_micros(60_000_000 / 500);
    let mut admitted = 0u64;
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start, interval);
    for _ in 0..1000 {
        tick.tick().await;
        if call(&l, &cfg, &t).await.is_ok() {
            admitted += 1;
        }
    }
    // The bucket starts full (N), then refills N per minute: over 2 minutes N + 2N tokens.
    let refilled = (admitted * e).saturating_sub(n) as f64 / 2.0;
    let err = (refilled - n as f64).abs() / n as f64;
    eprintln!(
        "5x demand: {refilled:.0} tokens/min admitted vs limit {n} ({:+.2}%)",
        (refilled / n as f64 - 1.0) * 100.0
    );
    assert!(
        err <= 0.02,
        "admitted {admitted} calls: {refilled} tokens/min after the initial burst vs limit {n} ({:.2}%)",
        err * 100.0
    );
}

/// Org pool: one call's worth of input tokens per second. Every tenant waits up to 10 minutes.
fn pool_config(extra_org: &str, greedy: (&str, &str), light: (&str, &str)) -> String {
    let e = estimate();
    format!(
        "[[limits.classes]]\nname = \"m\"\nmodels = [\"m-*\"]\n[org]\n{extra_org}\n[org.classes.m]\ninput_tokens_per_minute = {}\n\
         [[tenants]]\nname = \"{}\"\npriority = \"{}\"\nmax_wait_ms = 600000\n\
         [[tenants]]\nname = \"{}\"\npriority = \"{}\"\nmax_wait_ms = 600000\n",
        60 * e,
        greedy.0,
        greedy.1,
        light.0,
        light.1
    )
}

#[tokio::test(start_paused = true)]
async fn a_light_tenant_keeps_its_fair_share_while_a_greedy_one_floods_the_pool() {
    let (l, cfg) = limiter(&pool_config(
        "",
        ("greedy", "standard"),
        ("light", "standard"),
    ));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let from = tokio::time::Instant::now() + Duration::from_secs(10);
    let stop = from + Duration::from_secs(120);
    let mut tasks = Vec::new();
    // Twenty greedy callers against one light one.
    for i in 0..21 {
        let (l, cfg, counts) = (l.clone(), cfg.clone(), counts.clone());
        let (name, slot) = if i == 0 { ("light", 1) } else { ("greedy", 0) };
        tasks.push(tokio::spawn(async move {
            let t: Arc<str> = Arc::from(name);
            while tokio::time::Instant::now() < stop {
                // Calls still queued at the end are admitted later: count the window only.
                // The first seconds spend the pool's initial burst on whoever runs first.
                let ok = call(&l, &cfg, &t).await.is_ok();
                let now = tokio::time::Instant::now();
                if ok && now >= from && now <= stop {
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let greedy = counts[0].load(Ordering::Relaxed);
    let light = counts[1].load(Ordering::Relaxed);
    let share = light as f64 / (greedy + light) as f64;
    eprintln!(
        "greedy {greedy}, light {light}: light share {:.1}%",
        share * 100.0
    );
    // Equal weights, both always backlogged: half each. FIFO would give light 1/21.
    assert!(
        share >= 0.4,
        "light tenant got {light} of {} admissions ({:.0}%)",
        greedy + light,
        share * 100.0
    );
    // And the pool itself was respected: one call per second once the burst is spent.
    assert!(
        (118..=122).contains(&(greedy + light)),
        "{}",
        greedy + light
    );
}

async fn critical_waits(keep_free: &str) -> (Duration, Duration) {
    let (l, cfg) = limiter(&pool_config(
        keep_free,
        ("bulk", "batch"),
        ("crit", "critical"),
    ));
    let stop = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (l, cfg) = (l.clone(), cfg.clone());
        tasks.push(tokio::spawn(async move {
            let t: Arc<str> = Arc::from("bulk");
            let mut worst = Duration::ZERO;
            while tokio::time::Instant::now() < stop {
                if let Ok(w) = call(&l, &cfg, &t).await {
                    worst = worst.max(w);
                }
            }
            worst
        }));
    }
    let crit = {
        let (l, cfg) = (l.clone(), cfg.clone());
        tokio::spawn(async move {
            let t: Arc<str> = Arc::from("crit");
            let mut worst = Duration::ZERO;
            // Let the batch backlog build first.
            tokio::time::sleep(Duration::from_secs(10)).await;
            while tokio::time::Instant::now() < stop {
                worst = worst.max(call(&l, &cfg, &t).await.expect("critical call refused"));
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            worst
        })
    };
    let mut bulk_worst = Duration::ZERO;
    for t in tasks {
        bulk_worst = bulk_worst.max(t.await.unwrap());
    }
    (crit.await.unwrap(), bulk_worst)
}

#[tokio::test(start_paused = true)]
async fn a_critical_tenant_is_not_delayed_by_a_batch_backlog() {
    // With a share of the pool kept free of batch work, critical calls never wait at all.
    let (crit, bulk) = critical_waits("keep_free = { batch = 0.2 }").await;
    eprintln!("keep_free 0.2: critical worst wait {crit:?}, batch worst wait {bulk:?}");
    assert_eq!(crit, Duration::ZERO, "critical waited {crit:?}");
    assert!(
        bulk > Duration::from_secs(5),
        "the batch backlog was real: {bulk:?}"
    );
    // Without it, a critical call goes to the front of the queue: it waits only for its own
    // tokens to refill (one second here), never behind the backlog.
    let (crit, bulk) = critical_waits("").await;
    eprintln!("keep_free 0: critical worst wait {crit:?}, batch worst wait {bulk:?}");
    assert!(
        crit <= Duration::from_millis(1100),
        "critical waited {crit:?}"
    );
    assert!(bulk > Duration::from_secs(5), "{bulk:?}");
}

#[tokio::test(start_paused = true)]
async fn a_wait_longer_than_the_deadline_is_refused_at_once() {
    let e = estimate();
    let (l, cfg) = limiter(&format!(
        "[[tenants]]\nname = \"t\"\nmax_wait_ms = 500\nlimits = {{ input_tokens_per_minute = {} }}\n",
        e * 6
    ));
    let t: Arc<str> = Arc::from("t");
    for _ in 0..6 {
        call(&l, &cfg, &t).await.unwrap();
    }
    // The next call's tokens come back in 10 s: more than 500 ms, so no waiting at all.
    let before = tokio::time::Instant::now();
    assert_eq!(call(&l, &cfg, &t).await, Err(RefusalReason::TenantRate));
    assert_eq!(before.elapsed(), Duration::ZERO);
}

fn chat(turns: usize) -> String {
    let system = "You are a careful assistant for the finance team. ".repeat(300);
    let mut msgs = Vec::new();
    for i in 0..turns {
        let last = i + 1 == turns;
        let cc = if last {
            r#","cache_control":{"type":"ephemeral"}"#
        } else {
            ""
        };
        msgs.push(format!(
            r#"{{"role":"user","content":[{{"type":"text","text":"Question {i}: what changed in the ledger this week?"{cc}}}]}}"#
        ));
        if !last {
            msgs.push(format!(
                r#"{{"role":"assistant","content":"Answer {i}: three entries were reversed."}}"#
            ));
        }
    }
    format!(
        r#"{{"model":"m-1","max_tokens":10,"system":[{{"type":"text","text":"{system}","cache_control":{{"type":"ephemeral"}}}}],"messages":[{}]}}"#,
        msgs.join(",")
    )
}

#[tokio::test(start_paused = true)]
async fn a_recently_cached_prefix_is_not_reserved_again_even_as_the_conversation_grows() {
    let (l, cfg) =
        limiter("[[tenants]]\nname = \"t\"\nlimits = { input_tokens_per_minute = 10000000 }\n");
    let t: Arc<str> = Arc::from("t");
    let acquire = |body: String| {
        let (l, cfg, t) = (l.clone(), cfg.clone(), t.clone());
        async move {
            let info = CallInfo {
                tenant: &t,
                model: "m-1",
                max_tokens: 10,
                body: body.as_bytes(),
                unix_ms: 0,
                auto_prompt_cache: false,
            };
            l.acquire(&cfg, info).await.unwrap()
        }
    };
    let first = chat(1);
    let total = estimate_input(first.as_bytes()).total;
    assert!(total > 2000, "{total}");
    let p = acquire(first.clone()).await;
    assert_eq!(p.reserved().input_tokens, total, "nothing cached yet");
    // The upstream wrote the prefix to its cache.
    p.settle(
        &Usage {
            input_tokens: 20,
            cache_creation_input_tokens: total - 20,
            output_tokens: 10,
            ..Usage::default()
        },
        None,
    );
    let p = acquire(first).await;
    assert!(p.reserved().input_tokens < total / 10, "{:?}", p.reserved());
    p.settle(&usage(20, 10), None);
    // The next turn moves the breakpoint; the earlier prefix is still a cache read.
    let second = chat(2);
    let total2 = estimate_input(second.as_bytes()).total;
    let p = acquire(second).await;
    assert!(
        p.reserved().input_tokens < total2 / 10,
        "{:?} of {total2}",
        p.reserved()
    );
    // After the cache lifetime, nothing is assumed cached.
    tokio::time::sleep(Duration::from_secs(301)).await;
    let p = acquire(chat(1)).await;
    assert_eq!(p.reserved().input_tokens, total);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_client_went_away_does_not_stall_the_queue() {
    // The pool holds one call and refills one per second; callers may wait a minute.
    let e = estimate();
    let (l, cfg) = limiter(&format!(
        "[[limits.classes]]\nname = \"m\"\nmodels = [\"m-*\"]\n[org.classes.m]\ninput_tokens_per_minute = {}\ninput_tokens_burst = {e}\n[[tenants]]\nname = \"t\"\nmax_wait_ms = 60000\n",
        60 * e
    ));
    let t: Arc<str> = Arc::from("t");
    call(&l, &cfg, &t).await.unwrap();
    let spawn = |l: Limiter, cfg: Arc<Config>, t: Arc<str>| {
        tokio::spawn(async move { call(&l, &cfg, &t).await })
    };
    let head = spawn(l.clone(), cfg.clone(), t.clone());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let behind = spawn(l.clone(), cfg.clone(), t.clone());
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The head's client disconnects: its future is dropped mid-wait.
    head.abort();
    let waited = behind.await.unwrap().unwrap();
    assert!(waited <= Duration::from_millis(1100), "{waited:?}");
}

/// The per-call cost of acquire + settle on the benchmark's request (run in release:
/// `cargo test --release -p sluice-limits --test limiter per_call_cost -- --ignored --nocapture`).
#[tokio::test]
#[ignore]
async fn per_call_cost() {
    let body = br#"{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":"Hello, how are you today?"}]}"#;
    let (l, cfg) = limiter(
        "[org.classes.sonnet-4]\nrequests_per_minute = 1000000000\ninput_tokens_per_minute = 1000000000\noutput_tokens_per_minute = 1000000000\n[[tenants]]\nname = \"t\"\nbudget_daily_usd = 1e9\nlimits = { requests_per_minute = 1000000000, input_tokens_per_minute = 1000000000, output_tokens_per_minute = 1000000000 }\n",
    );
    let t: Arc<str> = Arc::from("t");
    let n = 200_000;
    let start = std::time::Instant::now();
    for _ in 0..n {
        let info = CallInfo {
            tenant: &t,
            model: "claude-sonnet-4-5",
            max_tokens: 256,
            body,
            unix_ms: 1_700_000_000_000,
            auto_prompt_cache: false,
        };
        let p = l.acquire(&cfg, info).await.unwrap();
        p.settle(&usage(12, 40), None);
    }
    let per = start.elapsed() / n;
    let est = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(estimate_input(std::hint::black_box(body)));
    }
    eprintln!(
        "acquire + settle: {per:?} per call; of which estimate_input {:?}",
        est.elapsed() / n
    );
}

/// A response-cache hit takes one request and no tokens: with a request limit of 3 and an
/// input-token limit that one real call exhausts, hits go on being admitted (no token is taken
/// and the token debt does not hold them up) until the request bucket is empty.
#[tokio::test(start_paused = true)]
async fn a_request_only_admission_takes_a_request_and_no_tokens() {
    let e = estimate();
    let (l, cfg) = limiter(&format!(
        "[[tenants]]\nname = \"t\"\nlimits = {{ requests_per_minute = 3, input_tokens_per_minute = {e} }}\n"
    ));
    let t: Arc<str> = Arc::from("t");
    // One real call drains the input bucket.
    call(&l, &cfg, &t).await.unwrap();
    assert_eq!(
        call(&l, &cfg, &t).await.unwrap_err(),
        RefusalReason::TenantRate,
        "the input bucket is empty"
    );
    let view = l
        .admit_request_only(&cfg, &t, "m-1", 1_700_000_000_000)
        .await
        .unwrap();
    let req = view.requests.unwrap();
    assert_eq!(
        req.remaining, 1,
        "one request taken by the call, one by the hit"
    );
    l.admit_request_only(&cfg, &t, "m-1", 1_700_000_000_000)
        .await
        .unwrap();
    let r = l
        .admit_request_only(&cfg, &t, "m-1", 1_700_000_000_000)
        .await
        .unwrap_err();
    assert_eq!(r.reason, RefusalReason::TenantRate);
    // An unlimited tenant is admitted with nothing to show.
    let u: Arc<str> = Arc::from("nobody");
    assert!(
        l.admit_request_only(&cfg, &u, "m-1", 0)
            .await
            .unwrap()
            .requests
            .is_none()
    );
}
