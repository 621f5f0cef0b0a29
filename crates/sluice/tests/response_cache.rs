//! The per-tenant response cache through the real gateway against the fake upstream: a hit
//! never crosses tenants, member order and whitespace do not matter, entries expire, identical
//! non-streamed calls in flight share one upstream call (and, when it fails, one retry) while
//! streams never wait on each other, refused, failed, truncated and oversize replies
//! are never stored, the per-call headers do what they say, a streamed hit is a valid SSE
//! stream, the ledger records hits with cost 0 and what they saved, and the Redis backend
//! shares entries between two gateways.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Env, Opts, SMALL, env_with, stream_body};
use std::sync::Arc;
use std::time::Duration;

const RC: &str = "response_cache = { ttl_secs = 300, max_entry_bytes = 1048576 }";

/// `SMALL` with its members in another order and other whitespace.
const SMALL_REORDERED: &str = r#"{ "messages" : [ { "content":"Hello", "role":"user" } ],
  "max_tokens": 64, "model": "claude-sonnet-4-5" }"#;

async fn gateway(web: &str, email: &str) -> Env {
    env_with(Opts {
        web_extra: web.into(),
        email_extra: email.into(),
        ..Opts::default()
    })
    .await
}

async fn upstream_calls(env: &Env) -> u64 {
    env.mock_stats().await["messages"].as_u64().unwrap()
}

fn cache_header(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("x-sluice-cache")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// (outcome, cost_micros, saved_micros, input_tokens, output_tokens) of every row.
fn ledger(env: &Env) -> Vec<(String, Option<i64>, i64, i64, i64)> {
    let c = rusqlite::Connection::open(&env.db).unwrap();
    let mut s = c
        .prepare("SELECT outcome, cost_micros, saved_micros, input_tokens, output_tokens FROM ledger ORDER BY id")
        .unwrap();
    s.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[tokio::test]
async fn a_hit_never_crosses_tenants_and_is_recorded_with_what_it_saved() {
    let mut env = gateway(RC, RC).await;
    let first = env.post_messages(&env.web_key, SMALL).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(cache_header(&first).as_deref(), Some("miss"));
    let first = first.bytes().await.unwrap();

    // The same request with its members reordered: answered by the gateway, byte for byte.
    let hit = env
        .post_messages(&env.web_key, SMALL_REORDERED)
        .send()
        .await
        .unwrap();
    assert_eq!(hit.status(), 200);
    assert_eq!(cache_header(&hit).as_deref(), Some("hit"));
    assert!(hit.headers().get("age").is_some());
    assert_eq!(
        hit.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let id = hit.headers()["request-id"].to_str().unwrap().to_owned();
    assert!(id.starts_with("req_sluice_"), "a gateway request id: {id}");
    assert_eq!(hit.bytes().await.unwrap(), first);
    assert_eq!(upstream_calls(&env).await, 1);

    // Another tenant, the same body: its own miss.
    let other = env
        .post_messages(&env.email_key, SMALL)
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&other).as_deref(), Some("miss"));
    assert_eq!(upstream_calls(&env).await, 2);

    env.finish().await;
    let rows = ledger(&env);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let (miss, hit) = (&rows[0], &rows[1]);
    assert_eq!(miss.0, "ok");
    let cost = miss.1.unwrap();
    assert!(cost > 0, "the miss was priced: {miss:?}");
    assert_eq!(hit.0, "cache_hit");
    assert_eq!(hit.1, Some(0), "a hit costs nothing");
    assert_eq!(hit.2, cost, "a hit saves what the stored reply cost");
    assert_eq!((hit.3, hit.4), (0, 0), "a hit bills no tokens");
    assert_eq!(rows[2].0, "ok");
}

#[tokio::test]
async fn entries_expire() {
    let env = gateway(
        "response_cache = { ttl_secs = 1, max_entry_bytes = 1048576 }",
        "",
    )
    .await;
    let r = env.post_messages(&env.web_key, SMALL).send().await.unwrap();
    assert_eq!(cache_header(&r).as_deref(), Some("miss"));
    let r = env.post_messages(&env.web_key, SMALL).send().await.unwrap();
    assert_eq!(cache_header(&r).as_deref(), Some("hit"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = env.post_messages(&env.web_key, SMALL).send().await.unwrap();
    assert_eq!(
        cache_header(&r).as_deref(),
        Some("miss"),
        "expired after 1 s"
    );
    assert_eq!(upstream_calls(&env).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_concurrent_calls_make_one_upstream_call() {
    let mut env = gateway(RC, "").await;
    let env_ref = Arc::new(std::mem::replace(&mut env.http, reqwest::Client::new()));
    let (url, key) = (env.url("/v1/messages"), env.web_key.clone());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (http, url, key) = (env_ref.clone(), url.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01")
                .header("content-type", "application/json")
                // The leader's reply takes a while, so the others arrive while it is in flight.
                .header("x-mock-latency-ms", "400")
                .body(SMALL)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let h = cache_header(&r).unwrap();
            (h, r.bytes().await.unwrap())
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(upstream_calls(&env).await, 1, "one upstream call for 50");
    let misses = results.iter().filter(|(h, _)| h == "miss").count();
    assert_eq!(misses, 1, "one leader");
    assert!(results.iter().all(|(_, b)| *b == results[0].1), "one reply");
    env.finish().await;
    let hits = ledger(&env).iter().filter(|r| r.0 == "cache_hit").count();
    assert_eq!(hits, 49);
}

#[tokio::test]
async fn refused_failed_truncated_and_oversize_replies_are_never_stored() {
    let env = env_with(Opts {
        web_extra: RC.into(),
        email_extra: "response_cache = { ttl_secs = 300, max_entry_bytes = 100 }".into(),
        upstream_extra: "max_attempts = 1".into(),
        ..Opts::default()
    })
    .await;
    let mut expected = 0;
    // The upstream's 429 and 500 (x-mock-* headers are not part of the key).
    for status in ["429", "500"] {
        let r = env
            .post_messages(&env.web_key, SMALL)
            .header("x-mock-status", status)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_str(), status);
        assert_eq!(cache_header(&r).as_deref(), Some("miss"));
        expected += 1;
    }
    // Streams that broke, or ended with an error event.
    for (knob, v) in [
        ("x-mock-drop-after", "3"),
        ("x-mock-stream-error-after", "2"),
    ] {
        let r = env
            .post_messages(&env.web_key, &stream_body(32))
            .header(knob, v)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        expected += 1;
    }
    // A reply larger than the tenant's max_entry_bytes.
    let r = env
        .post_messages(&env.email_key, SMALL)
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.unwrap().len() > 100);
    expected += 1;
    assert_eq!(upstream_calls(&env).await, expected);

    // None of them answers the same request now.
    for (key, body) in [
        (&env.web_key, SMALL.to_owned()),
        (&env.web_key, stream_body(32)),
        (&env.email_key, SMALL.to_owned()),
    ] {
        let r = env.post_messages(key, &body).send().await.unwrap();
        assert_eq!(cache_header(&r).as_deref(), Some("miss"), "{body}");
        let _ = r.bytes().await;
    }
    assert_eq!(upstream_calls(&env).await, expected + 3);
}

#[tokio::test]
async fn a_tenant_over_its_limit_is_refused_and_nothing_is_stored() {
    let env = gateway(&format!("{RC}\nlimits = {{ requests_per_minute = 1 }}"), "").await;
    let r = env.post_messages(&env.web_key, SMALL).send().await.unwrap();
    assert_eq!(cache_header(&r).as_deref(), Some("miss"));
    // A hit still counts one request: the bucket (1 a minute) is empty.
    let r = env.post_messages(&env.web_key, SMALL).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(upstream_calls(&env).await, 1);
    // The refused would-be hit was not answered from the cache: it is no hit.
    let text = sluice_telemetry::render(env.gw.as_ref().unwrap().state().unwrap());
    let count = |result: &str| {
        let series =
            format!("sluice_response_cache_requests_total{{result=\"{result}\",tenant=\"web\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    assert_eq!((count("hit"), count("miss"), count("bypass")), (0, 1, 0));
}

#[tokio::test]
async fn refresh_off_and_no_store_do_what_they_say() {
    let env = gateway(RC, "").await;
    let msg_id = |b: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(b).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let send = |h: Option<(&'static str, &'static str)>| {
        let mut rb = env.post_messages(&env.web_key, SMALL);
        if let Some((k, v)) = h {
            rb = rb.header(k, v);
        }
        rb.send()
    };
    let r = send(None).await.unwrap();
    assert_eq!(cache_header(&r).as_deref(), Some("miss"));
    let stored = msg_id(&r.bytes().await.unwrap());

    for h in [("x-sluice-cache", "off"), ("cache-control", "no-store")] {
        let r = send(Some(h)).await.unwrap();
        assert_eq!(cache_header(&r).as_deref(), Some("bypass"), "{h:?}");
        assert_ne!(msg_id(&r.bytes().await.unwrap()), stored, "{h:?} looked up");
    }
    // Bypassed replies were not stored: the first entry still answers.
    let r = send(None).await.unwrap();
    assert_eq!(cache_header(&r).as_deref(), Some("hit"));
    assert_eq!(msg_id(&r.bytes().await.unwrap()), stored);
    assert_eq!(upstream_calls(&env).await, 3);

    for h in [("x-sluice-cache", "refresh"), ("cache-control", "no-cache")] {
        let r = send(Some(h)).await.unwrap();
        assert_eq!(cache_header(&r).as_deref(), Some("miss"), "{h:?}");
        let fresh = msg_id(&r.bytes().await.unwrap());
        assert_ne!(fresh, stored, "{h:?} looked up");
        // The refreshed reply replaced the entry.
        let r = send(None).await.unwrap();
        assert_eq!(cache_header(&r).as_deref(), Some("hit"));
        assert_eq!(msg_id(&r.bytes().await.unwrap()), fresh);
    }
    assert_eq!(upstream_calls(&env).await, 5);

    // Tenants without a response cache see no header at all.
    let r = env
        .post_messages(&env.email_key, SMALL)
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&r), None);
}

#[tokio::test]
async fn a_streamed_hit_is_a_valid_sse_stream_and_kept_apart_from_json() {
    let mut env = gateway(RC, "").await;
    let body = stream_body(48);
    let miss = env.post_messages(&env.web_key, &body).send().await.unwrap();
    assert_eq!(cache_header(&miss).as_deref(), Some("miss"));
    let miss = miss.bytes().await.unwrap();

    let hit = env.post_messages(&env.web_key, &body).send().await.unwrap();
    assert_eq!(hit.status(), 200);
    assert_eq!(cache_header(&hit).as_deref(), Some("hit"));
    let h = hit.headers().clone();
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(h.get("transfer-encoding").is_none_or(|v| v == "chunked"));
    let bytes = hit.bytes().await.unwrap();
    if let Some(len) = h.get("content-length") {
        assert_eq!(
            len.to_str().unwrap(),
            bytes.len().to_string(),
            "no stale length"
        );
    }
    assert_eq!(bytes, miss, "the stream replayed byte for byte");
    let mut tap = sluice_anthropic::SseTap::new();
    tap.feed(&bytes);
    tap.finish();
    let s = tap.summary();
    assert!(s.saw_message_start && s.saw_message_stop, "{s:?}");
    assert!(s.error.is_none());
    assert!(s.usage.output_tokens > 0);
    assert_eq!(upstream_calls(&env).await, 1);

    // The same request without `stream` is another key.
    let json = body.replace(r#""stream":true,"#, "");
    let r = env.post_messages(&env.web_key, &json).send().await.unwrap();
    assert_eq!(cache_header(&r).as_deref(), Some("miss"));
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let _ = r.bytes().await;
    env.finish().await;
    let rows = ledger(&env);
    assert_eq!(rows[0].0, "ok");
    assert_eq!(rows[1].0, "cache_hit");
    assert_eq!(rows[1].1, Some(0));
    assert!(rows[1].2 > 0);
    assert_eq!(
        rows[1].2,
        rows[0].1.unwrap(),
        "the streamed hit saved the stream's cost"
    );
}

#[tokio::test]
async fn metrics_count_results_and_the_cache_size() {
    let env = gateway(RC, "").await;
    for h in ["", "off", ""] {
        let mut rb = env.post_messages(&env.web_key, SMALL);
        if !h.is_empty() {
            rb = rb.header("x-sluice-cache", h);
        }
        let _ = rb.send().await.unwrap().bytes().await;
    }
    let text = sluice_telemetry::render(env.gw.as_ref().unwrap().state().unwrap());
    for (result, n) in [("hit", 1), ("miss", 1), ("bypass", 1)] {
        let line = format!(
            "sluice_response_cache_requests_total{{result=\"{result}\",tenant=\"web\"}} {n}"
        );
        assert!(text.contains(&line), "{line} not in metrics");
    }
    assert!(text.contains("sluice_response_cache_entries 1"), "entries");
    assert!(
        text.contains("sluice_cache_saved_microdollars_total{kind=\"response\",tenant=\"web\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_fails_one_follower_leads_again_and_the_rest_wait_for_it() {
    let env = env_with(Opts {
        web_extra: RC.into(),
        upstream_extra: "max_attempts = 1".into(),
        ..Opts::default()
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let rb = env
            .post_messages(&env.web_key, SMALL)
            // Only the first request the mock sees fails; it is slow, so the rest wait on it.
            .header("x-mock-fail-first", "1")
            .header("x-mock-status", "500")
            .header("x-mock-latency-ms", "300");
        tasks.push(tokio::spawn(async move {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let r = rb.send().await.unwrap();
            (r.status().as_u16(), cache_header(&r).unwrap())
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    assert_eq!(got[0], (500, "miss".to_owned()), "{got:?}");
    // Nobody else failed, and they did not all rush the failing upstream: one of them led the
    // second try and the others were answered from its reply.
    assert!(got[1..].iter().all(|(s, _)| *s == 200), "{got:?}");
    assert_eq!(
        got[1..].iter().filter(|(_, h)| h == "miss").count(),
        1,
        "{got:?}"
    );
    assert_eq!(
        upstream_calls(&env).await,
        2,
        "the failed call and one retry"
    );
}

fn prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sluice-rc-test-{}-{nanos:x}", std::process::id())
}

fn redis_keys(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("redis-cli")
        .args(["--scan", "--pattern", &format!("{prefix}:rc:*")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn cleanup(prefix: &str) {
    let out = std::process::Command::new("redis-cli")
        .args(["--scan", "--pattern", &format!("{prefix}*")])
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

async fn redis_gateway(sections: &str) -> Env {
    env_with(Opts {
        sections: sections.into(),
        web_extra: RC.into(),
        ..Opts::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_backend_shares_entries_between_gateways() {
    let p = prefix();
    let sections = format!(
        "[limits]\nbackend = \"redis\"\nredis_prefix = \"{p}\"\n[caching]\nresponse_cache_backend = \"redis\"\n"
    );
    let a = redis_gateway(&sections).await;
    let b = redis_gateway(&sections).await;
    // The first call of a replica connects in the background: it may be a miss that stores
    // nothing. Call until A's entry is in Redis.
    let mut stored = false;
    for _ in 0..20 {
        let r = a.post_messages(&a.web_key, SMALL).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !redis_keys(&p).is_empty() {
            stored = true;
            break;
        }
    }
    assert!(stored, "no entry under {p}:rc:");
    let keys = redis_keys(&p);
    assert_eq!(keys.len(), 1, "{keys:?}");
    // The key is the prefix and a hex digest: no tenant name, no secret.
    let hex = keys[0].strip_prefix(&format!("{p}:rc:")).unwrap();
    assert!(hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit()));
    let ttl = std::process::Command::new("redis-cli")
        .args(["pttl", &keys[0]])
        .output()
        .unwrap();
    let ttl: i64 = String::from_utf8_lossy(&ttl.stdout).trim().parse().unwrap();
    assert!(
        ttl > 290_000 && ttl <= 300_000,
        "PX is the tenant's ttl: {ttl}"
    );
    // The entry holds the reply, never a credential.
    let value = std::process::Command::new("redis-cli")
        .args(["get", &keys[0]])
        .output()
        .unwrap()
        .stdout;
    let value = String::from_utf8_lossy(&value);
    assert!(value.contains("\"type\":\"message\""), "{value}");
    for secret in [common::UPSTREAM_KEY, a.web_key.as_str()] {
        assert!(!value.contains(secret), "a credential in the entry");
    }

    // B answers from A's entry (retrying while its own connection comes up).
    let mut hit = None;
    for _ in 0..20 {
        let r = b
            .post_messages(&b.web_key, SMALL_REORDERED)
            .send()
            .await
            .unwrap();
        if cache_header(&r).as_deref() == Some("hit") {
            hit = Some(r.bytes().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hit = hit.expect("B never hit A's entry");
    let v: serde_json::Value = serde_json::from_slice(&hit).unwrap();
    assert_eq!(v["type"], "message");
    // B's hit never reached B's upstream... unless B's first tries were misses before it
    // connected; either way A's upstream served A and B added no call after its hit.
    let before = upstream_calls(&b).await;
    let r = b.post_messages(&b.web_key, SMALL).send().await.unwrap();
    assert_eq!(cache_header(&r).as_deref(), Some("hit"));
    assert_eq!(upstream_calls(&b).await, before);
    cleanup(&p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_is_a_miss_never_a_failure() {
    let p = prefix();
    let sections = format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\nredis_prefix = \"{p}\"\nfail_mode = \"local\"\n[caching]\nresponse_cache_backend = \"redis\"\n"
    );
    let env = redis_gateway(&sections).await;
    for _ in 0..3 {
        let r = env.post_messages(&env.web_key, SMALL).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(cache_header(&r).as_deref(), Some("miss"));
    }
    assert_eq!(upstream_calls(&env).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_streams_in_flight_do_not_wait_for_each_other() {
    let env = gateway(
        RC,
        "response_cache = { ttl_secs = 300, max_entry_bytes = 200 }",
    )
    .await;
    let body = stream_body(40);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let rb = env
            .post_messages(&env.web_key, &body)
            .header("x-mock-event-interval-ms", "20");
        tasks.push(tokio::spawn(async move {
            let t = std::time::Instant::now();
            let r = rb.send().await.unwrap();
            let h = cache_header(&r).unwrap();
            let first_byte = t.elapsed();
            (h, first_byte, r.bytes().await.unwrap(), t.elapsed())
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    // Waiting on another stream would hold each caller's first byte until that stream's end:
    // each goes upstream instead, and its headers come long before the streams end.
    assert_eq!(upstream_calls(&env).await, 10, "each stream its own");
    assert!(got.iter().all(|(h, ..)| h == "miss"), "{got:?}");
    let shortest = got.iter().map(|g| g.3).min().unwrap();
    for (_, first_byte, ..) in &got {
        assert!(
            *first_byte < shortest / 2,
            "first byte {first_byte:?}, a whole stream {shortest:?}"
        );
    }
    // Once one is stored, the next identical stream is a hit.
    let r = env.post_messages(&env.web_key, &body).send().await.unwrap();
    assert_eq!(cache_header(&r).as_deref(), Some("hit"));
    let replay = r.bytes().await.unwrap();
    assert!(
        got.iter().any(|(_, _, b, _)| *b == replay),
        "a stored stream"
    );
    assert_eq!(upstream_calls(&env).await, 10);

    // A stream past the tenant's max_entry_bytes is passed on whole but never stored.
    let r = env
        .post_messages(&env.email_key, &body)
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&r).as_deref(), Some("miss"));
    assert!(r.bytes().await.unwrap().len() > 200);
    let r = env
        .post_messages(&env.email_key, &body)
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&r).as_deref(), Some("miss"));
    let _ = r.bytes().await;
    assert_eq!(upstream_calls(&env).await, 12);
}

#[tokio::test]
async fn a_reply_from_a_fallback_model_is_not_stored_under_the_model_asked_for() {
    const KEY_A: &str = "sk-ant-AAAA-rc-fallback-primary-secret";
    const KEY_B: &str = "sk-ant-BBBB-rc-fallback-spare-secret";
    let env = env_with(Opts {
        web_extra: RC.into(),
        upstream_extra: format!(
            "max_attempts = 2\nretry_base_ms = 10\n\
             [[upstream.members]]\nname = \"primary\"\napi_key = \"{KEY_A}\"\nweight = 1\n\
             [[upstream.members]]\nname = \"spare\"\napi_key = \"{KEY_B}\"\nweight = 0\n\
             [[upstream.fallbacks]]\nmodel = \"claude-opus-4-5\"\n\
             then = [{{ model = \"claude-haiku-4-5\", member = \"spare\" }}]\n"
        ),
        mock: sluice_mock::MockOptions {
            api_keys: vec![KEY_A.into(), KEY_B.into()],
            record: true,
            ..sluice_mock::MockOptions::default()
        },
        ..Opts::default()
    })
    .await;
    let opus = SMALL.replace("claude-sonnet-4-5", "claude-opus-4-5");
    let model = |b: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(b).unwrap()["model"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Opus overloaded: Haiku answers.
    env.mock.set_key_status(KEY_A, Some(529));
    let r = env.post_messages(&env.web_key, &opus).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(cache_header(&r).as_deref(), Some("miss"));
    assert_eq!(model(&r.bytes().await.unwrap()), "claude-haiku-4-5");
    // Opus back: the same request is asked of Opus, not answered with Haiku's reply.
    env.mock.set_key_status(KEY_A, None);
    let r = env.post_messages(&env.web_key, &opus).send().await.unwrap();
    assert_eq!(
        cache_header(&r).as_deref(),
        Some("miss"),
        "Haiku's reply was stored"
    );
    assert_eq!(model(&r.bytes().await.unwrap()), "claude-opus-4-5");
    // The primary's reply is stored as usual.
    let r = env.post_messages(&env.web_key, &opus).send().await.unwrap();
    assert_eq!(cache_header(&r).as_deref(), Some("hit"));
    assert_eq!(model(&r.bytes().await.unwrap()), "claude-opus-4-5");
}

#[tokio::test]
async fn a_body_with_a_duplicate_key_is_never_cached() {
    let env = gateway(RC, "").await;
    let (a, b) = (
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"temperature":0,"temperature":1,"messages":[{"role":"user","content":"Hello"}]}"#,
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"temperature":1,"temperature":0,"messages":[{"role":"user","content":"Hello"}]}"#,
    );
    // Each order twice: none of them is answered from another's reply.
    for body in [a, b, a, b] {
        let r = env.post_messages(&env.web_key, body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(cache_header(&r).as_deref(), Some("bypass"), "{body}");
        let _ = r.bytes().await;
    }
    assert_eq!(upstream_calls(&env).await, 4);
}
