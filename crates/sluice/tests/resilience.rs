//! Retries against the fake upstream: a transient 529 is absorbed, a persistent one is tried
//! exactly `max_attempts` times and then passed on unchanged with `x-should-retry: false`, the
//! upstream's `retry-after` is honoured, the deadline bounds the waiting, errors that cannot
//! improve are never retried, and every retry is counted on the ledger row.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Opts, env_with};
use std::time::{Duration, Instant};

fn body(marker: &str) -> String {
    format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{{"role":"user","content":"{marker}"}}]}}"#
    )
}

fn opts(upstream: &str) -> Opts {
    Opts {
        upstream_extra: upstream.into(),
        ..Opts::default()
    }
}

#[tokio::test]
async fn a_transient_529_is_retried_and_the_client_never_sees_it() {
    let mut env = env_with(opts("retry_base_ms = 20")).await;
    let r = env
        .post_messages(&env.web_key, &body("transient"))
        .header("x-mock-fail-first", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    assert_eq!(
        env.mock.stats().messages,
        3,
        "two failures, then the success"
    );
    let rows = env.finish().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, 200);
    assert_eq!(rows[0].retries, 2);
}

#[tokio::test]
async fn a_persistent_529_is_tried_max_attempts_times_then_passed_on_with_do_not_retry() {
    let mut env = env_with(opts("max_attempts = 3\nretry_base_ms = 20")).await;
    let t = Instant::now();
    let r = env
        .post_messages(&env.web_key, &body("storm"))
        .header("x-mock-status", "529")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 529);
    assert_eq!(
        r.headers().get("x-should-retry").unwrap(),
        "false",
        "the SDK must not multiply the gateway's attempts"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["type"], "overloaded_error",
        "the upstream's body, unchanged"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        env.mock.stats().messages,
        3,
        "exactly max_attempts, no retry storm"
    );
    let rows = env.finish().await;
    assert_eq!(rows[0].retries, 2);
    assert_eq!(rows[0].outcome, "upstream_error");
}

#[tokio::test]
async fn the_upstreams_retry_after_is_honoured() {
    let env = env_with(opts("retry_base_ms = 1")).await;
    let t = Instant::now();
    // The mock's 429 says `retry-after: 1`.
    let r = env
        .post_messages(&env.web_key, &body("slow-down"))
        .header("x-mock-status", "429")
        .header("x-mock-fail-first", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn no_retry_starts_past_the_deadline() {
    let env = env_with(opts("retry_deadline_ms = 300")).await;
    let t = Instant::now();
    // retry-after: 1 s would end past the 300 ms deadline: the 429 is returned at once.
    let r = env
        .post_messages(&env.web_key, &body("deadline"))
        .header("x-mock-status", "429")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(env.mock.stats().messages, 1);
    assert!(r.headers().get("retry-after").is_some());
    // Not retried, so the SDK may do as it likes.
    assert!(r.headers().get("x-should-retry").is_none());
}

#[tokio::test]
async fn a_client_error_is_never_retried() {
    let env = env_with(opts("retry_base_ms = 1")).await;
    let r = env
        .post_messages(&env.web_key, &body("bad"))
        .header("x-mock-status", "400")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(env.mock.stats().messages, 1);
}

#[tokio::test]
async fn an_unreachable_upstream_is_retried_then_a_502_that_says_do_not_retry() {
    let env = env_with(Opts {
        upstream_override: Some("http://127.0.0.1:1".into()),
        upstream_extra: "retry_base_ms = 10\nconnect_timeout_ms = 200".into(),
        ..Opts::default()
    })
    .await;
    let t = Instant::now();
    let r = env
        .post_messages(&env.web_key, &body("down"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers().get("x-should-retry").unwrap(), "false");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

fn stream_body(marker: &str) -> String {
    format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":5,"stream":true,"messages":[{{"role":"user","content":"{marker}"}}]}}"#
    )
}

#[tokio::test]
async fn a_stalled_stream_is_ended_with_an_error_event_but_a_slow_healthy_one_is_not() {
    let mut env = env_with(opts("stream_idle_timeout_ms = 400")).await;
    // Events 150 ms apart: slow, never idle for 400 ms, and longer than 400 ms in total.
    let t = Instant::now();
    let r = env
        .post_messages(&env.web_key, &stream_body("slow"))
        .header("x-mock-event-interval-ms", "150")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        t.elapsed() > Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert!(
        text.contains("message_stop") && !text.contains("event: error"),
        "{text}"
    );
    // Events 2 s apart: the gateway gives up after 400 ms of silence.
    let t = Instant::now();
    let r = env
        .post_messages(&env.web_key, &stream_body("stalled"))
        .header("x-mock-event-interval-ms", "2000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("upstream sent nothing for 400 ms"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");
    let rows = env.finish().await;
    let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["ok", "upstream_stalled"]);
}
