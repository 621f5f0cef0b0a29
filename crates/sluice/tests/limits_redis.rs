//! The Redis backend through real gateways: two gateways sharing one Redis admit together
//! within 1% of one limit, and a gateway whose Redis is unreachable follows its fail mode
//! (local limits at the fallback share, or 503) without hanging. Redis runs at
//! 127.0.0.1:6379 on this project's machines; every test uses its own key prefix and deletes
//! its keys.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Env, Opts, env_with};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BODY: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;

fn prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sluice-test-{}-{nanos:x}", std::process::id())
}

fn cleanup(prefix: &str) {
    let out = std::process::Command::new("redis-cli")
        .args(["--scan", "--pattern", &format!("*{prefix}*")])
        .output()
        .unwrap();
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    if !keys.is_empty() {
        std::process::Command::new("redis-cli")
            .arg("del")
            .args(&keys)
            .output()
            .unwrap();
    }
}

async fn gateway(sections: &str, web: &str) -> Env {
    env_with(Opts {
        sections: sections.into(),
        web_extra: web.into(),
        ..Opts::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_redis_admit_together_within_one_percent_of_one_limit() {
    let p = prefix();
    let sections = format!("[limits]\nbackend = \"redis\"\nredis_prefix = \"{p}\"\n");
    // 10 requests per second, 50 at once.
    let web = "limits = { requests_per_minute = 600, requests_burst = 50 }";
    let a = Arc::new(gateway(&sections, web).await);
    let b = Arc::new(gateway(&sections, web).await);
    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let run = Duration::from_secs(4);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let env = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (admitted, refused) = (admitted.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < run {
                let r = env.post_messages(&env.web_key, BODY).send().await.unwrap();
                match r.status().as_u16() {
                    200 => admitted.fetch_add(1, Ordering::Relaxed),
                    429 => refused.fetch_add(1, Ordering::Relaxed),
                    s => panic!("unexpected status {s}"),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    let limit = 50.0 + 10.0 * elapsed;
    eprintln!(
        "two gateways: admitted {admitted} in {elapsed:.2}s against a limit of {limit:.1} ({} refused)",
        refused.load(Ordering::Relaxed)
    );
    assert!(admitted <= limit * 1.01, "{admitted} > {limit} + 1%");
    assert!(
        admitted >= limit * 0.95,
        "{admitted} well under {limit}: was it driven?"
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "demand exceeded the limit"
    );
    cleanup(&p);
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_to_local_limits_at_the_configured_share() {
    let p = prefix();
    // Nothing listens on port 1: every Redis call fails at once.
    let env = gateway(
        &format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\nredis_prefix = \"{p}\"\nfail_mode = \"local\"\nfallback_share = 0.5\n"
        ),
        "limits = { requests_per_minute = 4 }",
    )
    .await;
    let t = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = env.post_messages(&env.web_key, BODY).send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429], "half of 4 per minute");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let ready: serde_json::Value = env
        .http
        .get(env.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Public readiness says only that it serves; the limiter's state is the admin API's.
    assert_eq!(ready, serde_json::json!({"status": "ready"}));
    let limiter = sluice_proxy::api::limiter_status(env.gw.as_ref().unwrap().state().unwrap());
    assert_eq!(limiter["redis_up"], false);
}

#[tokio::test]
async fn an_unreachable_redis_with_fail_mode_closed_answers_503_quickly() {
    let env = gateway(
        "[limits]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\nfail_mode = \"closed\"\n",
        "limits = { requests_per_minute = 4 }",
    )
    .await;
    let t = Instant::now();
    let r = env.post_messages(&env.web_key, BODY).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "api_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rate limiter is unavailable")
    );
    // A tenant without limits is not held up by the limiter at all.
    let r = env
        .post_messages(&env.email_key, BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
