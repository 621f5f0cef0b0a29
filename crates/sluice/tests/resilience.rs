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

// Key pools and circuit breakers (docs/resilience.md, "Key pools and circuit breakers").

const KEY_A: &str = "sk-ant-AAAA-pool-member-a-secret";
const KEY_B: &str = "sk-ant-BBBB-pool-member-b-secret";

/// Two members, `a` (weight `weight_a`, so it is picked first) and `b` (weight 1), each with its
/// own key at the fake upstream.
async fn pool_env(weight_a: u32, upstream: &str) -> common::Env {
    env_with(Opts {
        upstream_extra: format!(
            "{upstream}\n[[upstream.members]]\nname = \"a\"\napi_key = \"{KEY_A}\"\nweight = {weight_a}\n[[upstream.members]]\nname = \"b\"\napi_key = \"{KEY_B}\"\n"
        ),
        mock: sluice_mock::MockOptions {
            api_keys: vec![KEY_A.into(), KEY_B.into()],
            record: true,
            ..sluice_mock::MockOptions::default()
        },
        ..Opts::default()
    })
    .await
}

/// Member health as the admin API shows it (`GET /admin/v1/upstream`), read in process.
async fn readyz_members(env: &common::Env) -> Vec<serde_json::Value> {
    sluice_proxy::api::member_status(env.gw.as_ref().unwrap().state().unwrap())
}

fn ledger_upstreams(env: &common::Env) -> Vec<Option<String>> {
    let c = rusqlite::Connection::open(&env.db).unwrap();
    let mut s = c
        .prepare("SELECT upstream FROM ledger ORDER BY id")
        .unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn one_key_429ing_moves_the_traffic_to_the_healthy_key_at_once() {
    let mut env = pool_env(1000, "retry_base_ms = 10").await;
    env.mock.set_key_status(KEY_A, Some(429));
    for i in 0..20 {
        let r = env
            .post_messages(&env.web_key, &body(&format!("pool {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "call {i}");
        r.bytes().await.unwrap();
    }
    // `a` cools down for the mock's retry-after (1 s): it sees about one request, not 20.
    let a = env.mock.key_requests(KEY_A);
    assert!((1..=2).contains(&a), "the 429ing key got {a} requests");
    assert_eq!(env.mock.key_requests(KEY_B), 20);
    let stats = env.mock_stats().await.to_string();
    assert!(!stats.contains(KEY_A) && !stats.contains(KEY_B), "{stats}");
    let members = readyz_members(&env).await;
    assert_eq!(members[0]["name"], "a");
    assert_eq!(
        members[0]["state"], "closed",
        "a 429 never opens the breaker"
    );
    assert!(members[0]["cooling_down_ms"].as_u64().unwrap() > 0);
    assert_eq!(members[1]["state"], "closed");
    let all = readyz_members(&env).await;
    assert!(!format!("{all:?}").contains("sk-ant-"), "keys never shown");
    let rows = env.finish().await;
    assert_eq!(rows.len(), 20);
    assert!(
        ledger_upstreams(&env)
            .iter()
            .all(|u| u.as_deref() == Some("b")),
        "every call was answered by b"
    );
}

#[tokio::test]
async fn a_failing_member_opens_its_breaker_and_gets_exactly_one_probe_after_the_open_time() {
    let env = pool_env(
        1000,
        "retry_base_ms = 10\nbreaker_failures = 2\nbreaker_open_ms = 300",
    )
    .await;
    env.mock.set_key_status(KEY_A, Some(529));
    let call = |i: usize| {
        let req = env.post_messages(&env.web_key, &body(&format!("breaker {i}")));
        async move {
            let r = req.send().await.unwrap();
            let status = r.status();
            r.bytes().await.unwrap();
            status
        }
    };
    for i in 0..10 {
        assert_eq!(call(i).await, 200, "b answers the retry");
    }
    assert_eq!(env.mock.key_requests(KEY_A), 2, "open after 2 failures");
    assert_eq!(readyz_members(&env).await[0]["state"], "open");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(readyz_members(&env).await[0]["state"], "half_open");
    // Concurrent calls after the open time: exactly one of them probes `a`.
    let mut set = tokio::task::JoinSet::new();
    for i in 10..16 {
        set.spawn(call(i));
    }
    let statuses = set.join_all().await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(env.mock.key_requests(KEY_A), 3, "exactly one probe");
    assert_eq!(
        readyz_members(&env).await[0]["state"],
        "open",
        "failed probe"
    );
    // Healthy again: the next probe closes the breaker and `a` takes traffic again.
    env.mock.set_key_status(KEY_A, None);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for i in 16..20 {
        assert_eq!(call(i).await, 200);
    }
    assert_eq!(readyz_members(&env).await[0]["state"], "closed");
    assert!(env.mock.key_requests(KEY_A) >= 5);
}

#[tokio::test]
async fn a_full_outage_gets_fast_503s_then_recovers_when_the_upstream_returns() {
    let mut env = pool_env(
        1,
        "max_attempts = 2\nretry_base_ms = 1\nbreaker_failures = 2\nbreaker_open_ms = 400",
    )
    .await;
    env.mock.set_key_status(KEY_A, Some(529));
    env.mock.set_key_status(KEY_B, Some(529));
    // Each call tries both members (a retry prefers the one not tried yet).
    for i in 0..2 {
        let r = env
            .post_messages(&env.web_key, &body(&format!("outage {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 529);
        r.bytes().await.unwrap();
    }
    let upstream_calls = env.mock.stats().messages;
    assert_eq!(upstream_calls, 4);
    for i in 0..5 {
        let t = Instant::now();
        let r = env
            .post_messages(&env.web_key, &body(&format!("fast {i}")))
            .send()
            .await
            .unwrap();
        let took = t.elapsed();
        assert_eq!(r.status(), 503);
        assert!(took < Duration::from_millis(100), "{took:?}");
        assert_eq!(r.headers()["retry-after"], "1");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("all upstream members are unavailable") && msg.contains("ms"),
            "{msg}"
        );
    }
    assert_eq!(
        env.mock.stats().messages,
        upstream_calls,
        "nothing piled up"
    );
    let members = readyz_members(&env).await;
    assert!(members.iter().all(|m| m["state"] == "open"), "{members:?}");
    // The upstream returns; after the open time the probes succeed and calls flow again.
    env.mock.set_key_status(KEY_A, None);
    env.mock.set_key_status(KEY_B, None);
    tokio::time::sleep(Duration::from_millis(450)).await;
    for i in 0..4 {
        let r = env
            .post_messages(&env.web_key, &body(&format!("back {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "call {i} after recovery");
        r.bytes().await.unwrap();
    }
    let rows = env.finish().await;
    let unavailable: Vec<_> = rows
        .iter()
        .filter(|r| r.outcome == "upstream_unavailable")
        .collect();
    assert_eq!(unavailable.len(), 5);
    assert!(unavailable.iter().all(|r| r.status == 503));
}

#[tokio::test]
async fn a_first_byte_timeout_on_messages_is_not_retried_by_default() {
    // The upstream has the request and may still bill it: a second attempt could pay twice.
    let env = env_with(opts(
        "first_byte_timeout_ms = 300\nretry_base_ms = 10\nmax_attempts = 3",
    ))
    .await;
    let r = env
        .post_messages(&env.web_key, &body("slow-headers"))
        .header("x-mock-latency-ms", "1500")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "timeout_error");
    assert_eq!(env.mock.stats().messages, 1, "one upstream attempt only");
}

#[tokio::test]
async fn a_first_byte_timeout_on_messages_is_retried_when_opted_in() {
    let env = env_with(opts(
        "first_byte_timeout_ms = 300\nretry_base_ms = 10\nmax_attempts = 3\n\
         retry_on_first_byte_timeout = true",
    ))
    .await;
    let r = env
        .post_messages(&env.web_key, &body("slow-headers-opt-in"))
        .header("x-mock-latency-ms", "1500")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(env.mock.stats().messages, 3, "max_attempts attempts");
}
