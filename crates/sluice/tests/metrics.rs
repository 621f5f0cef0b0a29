//! Metrics through the real gateway against the fake upstream: the scrape after a mix of calls
//! (ok, streamed, upstream errors, a tenant's 429, a dated model id, a model nobody priced)
//! counts them under labels bounded by the config, never by request data; scrape-time gauges
//! (breakers, ledger, limiter backend, budgets) are there; and every metric the Grafana
//! dashboard queries exists in a real scrape.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Env, Opts, SMALL, env_with, stream_body};
use std::collections::BTreeSet;

/// The value of the sample whose line starts with `series` exactly (name and labels).
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

fn scrape(env: &Env) -> String {
    sluice_telemetry::render(env.gw.as_ref().unwrap().state().unwrap())
}

async fn mixed_traffic() -> Env {
    let env = env_with(Opts {
        upstream_extra: "max_attempts = 1".into(),
        web_extra: "budget_daily_usd = 100.0".into(),
        email_extra: "limits = { requests_per_minute = 1 }".into(),
        ..Opts::default()
    })
    .await;
    for _ in 0..3 {
        let r = env.post_messages(&env.web_key, SMALL).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = env
        .post_messages(&env.web_key, &stream_body(32))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let r = env
        .post_messages(&env.web_key, SMALL)
        .header("x-mock-status", "500")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    // A dated snapshot id folds into its price table name; an unpriced model is `other`.
    let dated = SMALL.replace("claude-sonnet-4-5", "claude-sonnet-4-5-20250929");
    let r = env
        .post_messages(&env.web_key, &dated)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let odd = SMALL.replace("claude-sonnet-4-5", "claude-zz-attacker-chosen-name");
    let _ = env.post_messages(&env.web_key, &odd).send().await.unwrap();
    // The email tenant's second call in a minute is refused by its own bucket.
    let r = env
        .post_messages(&env.email_key, SMALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = env
        .post_messages(&env.email_key, SMALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    env
}

#[tokio::test]
async fn a_scrape_counts_calls_under_labels_the_config_bounds() {
    let env = mixed_traffic().await;
    let s = scrape(&env);
    let ok = r#"sluice_requests_total{endpoint="messages",model="claude-sonnet-4-5",status="200",tenant="web"}"#;
    // 3 plain, 1 streamed, 1 dated id.
    assert_eq!(value(&s, ok), Some(5.0), "{s}");
    let err = r#"sluice_requests_total{endpoint="messages",model="claude-sonnet-4-5",status="500",tenant="web"}"#;
    assert_eq!(value(&s, err), Some(1.0));
    assert!(!s.contains("attacker"), "request data leaked into a label");
    assert!(
        s.lines()
            .any(|l| l.starts_with("sluice_requests_total{") && l.contains(r#"model="other""#)),
        "{s}"
    );
    assert_eq!(
        value(
            &s,
            r#"sluice_rate_limited_total{reason="limited_tenant",tenant="email"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            r#"sluice_request_outcomes_total{outcome="upstream_error",tenant="web"}"#
        ),
        Some(1.0)
    );
    // Tokens and cost, and the histograms with their explicit buckets.
    let input = value(
        &s,
        r#"sluice_tokens_total{kind="input",model="claude-sonnet-4-5",tenant="web"}"#,
    )
    .unwrap();
    let output = value(
        &s,
        r#"sluice_tokens_total{kind="output",model="claude-sonnet-4-5",tenant="web"}"#,
    )
    .unwrap();
    assert!(input > 0.0 && output > 0.0);
    let cost = value(
        &s,
        r#"sluice_cost_microdollars_total{model="claude-sonnet-4-5",tenant="web"}"#,
    )
    .unwrap();
    // Sonnet 4.5: $3 per million input tokens, $15 per million output.
    assert!(
        (cost - (input * 3.0 + output * 15.0)).abs() < 10.0,
        "{cost}"
    );
    assert!(s.contains(
        r#"sluice_request_duration_seconds_bucket{model="claude-sonnet-4-5",tenant="web",le="300"}"#
    ));
    assert_eq!(
        value(
            &s,
            r#"sluice_time_to_first_byte_seconds_count{model="claude-sonnet-4-5",tenant="web"}"#
        ),
        Some(6.0)
    );
    // Upstream: one attempt per call that reached it, the failure counted.
    assert_eq!(
        value(&s, r#"sluice_upstream_errors_total{member="anthropic"}"#),
        Some(1.0)
    );
    assert!(
        value(
            &s,
            r#"sluice_upstream_attempts_total{member="anthropic",provider="anthropic"}"#
        )
        .unwrap()
            >= 8.0
    );
    assert_eq!(
        value(&s, r#"sluice_fallbacks_total{provider="bedrock"}"#),
        Some(0.0)
    );
    // Scrape-time numbers.
    assert_eq!(
        value(&s, r#"sluice_upstream_breaker_state{member="anthropic"}"#),
        Some(0.0)
    );
    assert_eq!(value(&s, "sluice_ledger_writer_up"), Some(1.0));
    assert_eq!(value(&s, "sluice_limiter_redis_fallback_active"), Some(0.0));
    assert_eq!(
        value(&s, r#"sluice_limiter_backend{backend="local"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            r#"sluice_tenant_budget_microdollars{tenant="web",period="day"}"#
        ),
        Some(100_000_000.0)
    );
    let spent = value(
        &s,
        r#"sluice_tenant_spend_microdollars{tenant="web",period="day"}"#,
    )
    .unwrap();
    assert!(spent >= cost - 1.0, "{spent} vs {cost}");
    // Every sample line is `name{labels} value`.
    for l in s.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (_, v) = l.rsplit_once(' ').unwrap();
        v.parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample line {l:?}"));
        assert!(l.starts_with("sluice_"), "{l}");
    }
}

/// Metric names in a PromQL expression (`sluice_…`).
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(p) = expr[i..].find("sluice_") {
        let start = i + p;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let preceded = start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if !preceded {
            out.insert(expr[start..end].to_owned());
        }
        i = end;
    }
}

fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn bucket_headroom_and_queue_depth_are_scraped() {
    let env = mixed_traffic().await;
    let s = scrape(&env);
    // The email tenant (1 request per minute) spent its one request; its limit is shown.
    let key =
        |m: &str| format!(r#"{m}{{class="",dimension="requests",scope="tenant",tenant="email"}}"#);
    assert_eq!(value(&s, &key("sluice_bucket_limit")), Some(1.0), "{s}");
    assert_eq!(value(&s, &key("sluice_bucket_remaining")), Some(0.0), "{s}");
    // Unlimited dimensions and tenants have no bucket, so no series.
    assert!(!s.contains(r#"dimension="input_tokens",scope="tenant",tenant="email""#));
    assert!(!s.contains(r#"scope="tenant",tenant="web""#));
    // Every class a call went through has a queue, empty now.
    assert!(
        s.lines()
            .any(|l| l.starts_with("sluice_limiter_queue_depth{class=") && l.ends_with(" 0")),
        "{s}"
    );
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_in_a_real_scrape() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/sluice-dashboard.json"
    );
    let dash: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut qs = Vec::new();
    queries(&dash, &mut qs);
    let mut names = BTreeSet::new();
    for q in &qs {
        metric_names(q, &mut names);
    }
    assert!(names.len() >= 15, "{names:?}");
    let env = mixed_traffic().await;
    let s = scrape(&env);
    let present: BTreeSet<&str> = s
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !present.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in the scrape: {missing:?}\n{s}");
}
