//! Routing through the real gateway against the fake upstream: fallback chains across providers
//! and models (who served is said in `x-sluice-served-by` and on the ledger), Claude on Bedrock
//! and Vertex behind the Anthropic wire, cache-affinity routing measured by the prompt-cache hit
//! rate, and a 529 storm that must not become a retry storm.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Env, Opts, env_with};
use sluice_mock::MockOptions;
use std::time::{Duration, Instant};

const KEY_A: &str = "sk-ant-AAAA-routing-member-a-secret";
const KEY_B: &str = "sk-ant-BBBB-routing-member-b-secret";
const KEY_C: &str = "sk-ant-CCCC-routing-member-c-secret";
const KEY_D: &str = "sk-ant-DDDD-routing-member-d-secret";
const AKID: &str = "AKIAROUTINGTEST01";
const AWS_SECRET: &str = "routing/test+secret";
const PROJECT: &str = "sluice-test";

fn body(model: &str, marker: &str) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":20,"messages":[{{"role":"user","content":"{marker}"}}]}}"#
    )
}

fn stream_body(model: &str, marker: &str) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":20,"stream":true,"messages":[{{"role":"user","content":"{marker}"}}]}}"#
    )
}

fn mock_options(keys: &[&str]) -> MockOptions {
    MockOptions {
        api_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        aws_credentials: Some((AKID.into(), AWS_SECRET.into())),
        gcp_public_key_der: Some(std::fs::read(sluice_mock::VERTEX_SA_PUBLIC_KEY_DER).unwrap()),
        record: true,
        ..MockOptions::default()
    }
}

/// A Bedrock member at the mock (the mock's address is known only once it runs, so members are
/// written with a placeholder the env fills in).
fn bedrock_member(name: &str, weight: u32) -> String {
    format!(
        r#"
[[upstream.members]]
name = "{name}"
provider = "bedrock"
weight = {weight}
region = "us-east-1"
base_url = "{{MOCK}}"
aws_access_key_id = "{AKID}"
aws_secret_access_key = "{AWS_SECRET}"
models = {{ "claude-sonnet-4-5" = "anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-haiku-4-5" = "anthropic.claude-haiku-4-5-20251001-v1:0" }}
"#
    )
}

fn vertex_member(name: &str, weight: u32) -> String {
    format!(
        r#"
[[upstream.members]]
name = "{name}"
provider = "vertex"
weight = {weight}
project = "{PROJECT}"
region = "us-east5"
base_url = "{{MOCK}}"
credentials_file = "{{VERTEX_SA}}"
models = {{ "claude-sonnet-4-5" = "claude-sonnet-4-5@20250929" }}
"#
    )
}

fn anthropic_member(name: &str, key: &str, weight: u32) -> String {
    format!("\n[[upstream.members]]\nname = \"{name}\"\napi_key = \"{key}\"\nweight = {weight}\n")
}

/// An env whose `[upstream]` has `head` (knobs) and `tail` (members, fallbacks).
async fn routing_env(head: &str, tail: &str, keys: &[&str]) -> Env {
    env_with(Opts {
        upstream_extra: format!("{head}\n{tail}"),
        mock: mock_options(keys),
        ..Opts::default()
    })
    .await
}

fn served_by(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-sluice-served-by")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// `(upstream, provider, fallback, model_served, cost_micros)` of a ledger row.
type Served = (String, String, i64, Option<String>, Option<i64>);

/// [`Served`] of every ledger row.
fn served_rows(env: &Env) -> Vec<Served> {
    let c = rusqlite::Connection::open(&env.db).unwrap();
    let mut s = c
        .prepare(
            "SELECT upstream, provider, fallback, model_served, cost_micros FROM ledger ORDER BY id",
        )
        .unwrap();
    s.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[tokio::test]
async fn a_failing_primary_falls_back_along_the_chain_across_providers() {
    let tail = format!(
        "{}{}{}\n[[upstream.fallbacks]]\nmodel = \"claude-sonnet-4-5\"\nthen = [{{ provider = \"bedrock\" }}, {{ provider = \"vertex\" }}]\n",
        anthropic_member("primary", KEY_A, 1),
        bedrock_member("bedrock-east", 0),
        vertex_member("vertex-east", 0),
    );
    let mut env = routing_env("max_attempts = 2\nretry_base_ms = 10", &tail, &[KEY_A]).await;

    // Healthy primary: the standbys take nothing.
    let r = env
        .post_messages(&env.web_key, &body("claude-sonnet-4-5", "healthy"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        served_by(&r),
        "provider=anthropic; member=primary; model=claude-sonnet-4-5; fallback=0"
    );
    r.bytes().await.unwrap();

    // The primary overloaded: two attempts there, then Bedrock answers, in the Anthropic wire.
    env.mock.set_key_status(KEY_A, Some(529));
    let r = env
        .post_messages(&env.web_key, &body("claude-sonnet-4-5", "to bedrock"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        served_by(&r),
        "provider=bedrock; member=bedrock-east; model=claude-sonnet-4-5; fallback=1"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(env.mock.key_requests(KEY_A), 3, "1 healthy + 2 attempts");

    // A stream too: Bedrock's event stream reaches the client as Anthropic SSE.
    let r = env
        .post_messages(
            &env.web_key,
            &stream_body("claude-sonnet-4-5", "stream to bedrock"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(served_by(&r).starts_with("provider=bedrock;"));
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let sse = r.text().await.unwrap();
    assert!(sse.starts_with("event: message_start\ndata: {"), "{sse}");
    assert!(sse.contains("event: message_stop\n"), "{sse}");

    // Bedrock overloaded as well: Vertex, the chain's second step.
    env.mock.set_key_status(AKID, Some(503));
    let r = env
        .post_messages(&env.web_key, &body("claude-sonnet-4-5", "to vertex"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        served_by(&r),
        "provider=vertex; member=vertex-east; model=claude-sonnet-4-5; fallback=2"
    );
    r.bytes().await.unwrap();

    let rows_full = env.finish().await;
    let rows = served_rows(&env);
    assert_eq!(rows.len(), 4);
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str(), rows[1].2),
        ("bedrock-east", "bedrock", 1)
    );
    // The client's model name is what was served (Bedrock's id is an alias), and it is priced.
    assert_eq!(rows[1].3.as_deref(), Some("claude-sonnet-4-5"));
    assert!(rows[1].4.unwrap() > 0);
    assert_eq!(rows_full[1].retries, 2);
    assert!(rows_full[2].streamed && rows_full[2].output_tokens > 0);
    assert_eq!(
        (rows[3].0.as_str(), rows[3].1.as_str(), rows[3].2),
        ("vertex-east", "vertex", 2)
    );
}

#[tokio::test]
async fn a_model_fallback_asks_for_the_other_model_and_says_so() {
    // Opus overloaded on the primary key; the chain goes to Haiku on a standby key.
    let tail = format!(
        "{}{}\n[[upstream.fallbacks]]\nmodel = \"claude-opus-4-5\"\nthen = [{{ model = \"claude-haiku-4-5\", member = \"spare\" }}]\n",
        anthropic_member("primary", KEY_A, 1),
        anthropic_member("spare", KEY_B, 0),
    );
    let mut env = routing_env(
        "max_attempts = 2\nretry_base_ms = 10",
        &tail,
        &[KEY_A, KEY_B],
    )
    .await;
    env.mock.set_key_status(KEY_A, Some(529));
    let r = env
        .post_messages(&env.web_key, &body("claude-opus-4-5", "big"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        served_by(&r),
        "provider=anthropic; member=spare; model=claude-haiku-4-5; fallback=1"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["model"], "claude-haiku-4-5");
    let models: Vec<String> = env
        .mock
        .recorded()
        .iter()
        .map(|r| r.json().unwrap()["model"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        models,
        ["claude-opus-4-5", "claude-opus-4-5", "claude-haiku-4-5"]
    );
    // Without a chain, nothing changes: the last error, with do-not-retry; the standby is
    // not used.
    let r = env
        .post_messages(&env.web_key, &body("claude-sonnet-4-5", "no chain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 529);
    assert_eq!(r.headers()["x-should-retry"], "false");
    env.finish().await;
    let rows = served_rows(&env);
    assert_eq!(rows[0].2, 1);
    assert_eq!(rows[0].3.as_deref(), Some("claude-haiku-4-5"));
}

#[tokio::test]
async fn bedrock_and_vertex_members_speak_the_anthropic_wire_errors_included() {
    let tail = format!("{}{}", bedrock_member("br", 1), vertex_member("vx", 1));
    let mut env = routing_env("max_attempts = 1", &tail, &[]).await;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..12 {
        let r = env
            .post_messages(
                &env.web_key,
                &body("claude-sonnet-4-5", &format!("call {i}")),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", served_by(&r));
        seen.insert(served_by(&r).split(';').next().unwrap().to_owned());
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["type"], "message");
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["provider=bedrock", "provider=vertex"],
        "both members take traffic"
    );
    // A provider's own error arrives in the Anthropic shape.
    for status in ["400", "429"] {
        let r = env
            .post_messages(&env.web_key, &body("claude-sonnet-4-5", "bad"))
            .header("x-mock-status", status)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_str(), status);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        let want = if status == "400" {
            "invalid_request_error"
        } else {
            "rate_limit_error"
        };
        assert_eq!(v["error"]["type"], want, "{v}");
    }
    // A model no member serves: no route, a clear 503 rather than a wrong model.
    let r = env
        .post_messages(&env.web_key, &body("claude-opus-4-5", "unmapped"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let rows = env.finish().await;
    assert!(rows.iter().take(12).all(|r| r.outcome == "ok"));
}

/// Twelve applications, each with its own long cached system prompt, calling eight times each
/// over four keys: the share of prefix tokens read from the cache, as the ledger records it.
async fn cache_hit_rate(affinity: bool) -> f64 {
    let tail = format!(
        "affinity = {affinity}\n{}{}{}{}",
        anthropic_member("a", KEY_A, 1),
        anthropic_member("b", KEY_B, 1),
        anthropic_member("c", KEY_C, 1),
        anthropic_member("d", KEY_D, 1),
    );
    let mut env = routing_env("", &tail, &[KEY_A, KEY_B, KEY_C, KEY_D]).await;
    for round in 0..8 {
        for app in 0..12 {
            let system = format!(
                "You are assistant number {app}. {}",
                "Be precise. ".repeat(400)
            );
            let body = format!(
                r#"{{"model":"claude-sonnet-4-5","max_tokens":20,"system":[{{"type":"text","text":"{system}","cache_control":{{"type":"ephemeral"}}}}],"messages":[{{"role":"user","content":"question {round}"}}]}}"#
            );
            let r = env.post_messages(&env.web_key, &body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
    }
    let rows = env.finish().await;
    assert_eq!(rows.len(), 96);
    let read: i64 = rows.iter().map(|r| r.cache_read_input_tokens).sum();
    let written: i64 = rows.iter().map(|r| r.cache_creation_input_tokens).sum();
    read as f64 / (read + written) as f64
}

#[tokio::test]
async fn cache_affinity_keeps_prefixes_on_their_key_and_raises_the_hit_rate() {
    let with = cache_hit_rate(true).await;
    let without = cache_hit_rate(false).await;
    println!("prompt-cache hit rate over 4 keys: affinity {with:.3}, weight only {without:.3}");
    // With affinity only each application's first call writes: 84 of 96 read.
    assert!((with - 84.0 / 96.0).abs() < 0.01, "{with}");
    // Spread by weight, each application writes on most of the four keys.
    assert!(without < 0.75, "{without}");
}

#[tokio::test]
async fn a_529_storm_is_bounded_opens_the_breakers_and_never_becomes_a_retry_storm() {
    let head =
        "max_attempts = 3\nretry_base_ms = 20\nbreaker_failures = 3\nbreaker_open_ms = 60000";
    let tail = format!(
        "{}{}",
        anthropic_member("a", KEY_A, 1),
        anthropic_member("b", KEY_B, 1)
    );
    let env = routing_env(head, &tail, &[KEY_A, KEY_B]).await;
    env.mock.set_key_status(KEY_A, Some(529));
    env.mock.set_key_status(KEY_B, Some(529));
    let calls = 100;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let req = env.post_messages(
            &env.web_key,
            &body("claude-sonnet-4-5", &format!("storm {i}")),
        );
        tasks.spawn(async move {
            let t = Instant::now();
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("x-should-retry").is_some();
            r.bytes().await.unwrap();
            (status, retry, t.elapsed())
        });
    }
    let mut latencies = Vec::new();
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(j) = tasks.join_next().await {
        let (status, do_not_retry, took) = j.unwrap();
        assert!(status == 529 || status == 503, "{status}");
        // A call that was retried says so; one cut short by the breakers may not have been.
        let _ = do_not_retry;
        *statuses.entry(status).or_insert(0) += 1;
        latencies.push(took);
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    let attempts = env.mock.key_requests(KEY_A) + env.mock.key_requests(KEY_B);
    println!("529 storm: {calls} calls, {attempts} upstream attempts, {statuses:?}, p99 {p99:?}");
    // Never more than max_attempts per call, and far fewer: the breakers open after 3
    // consecutive failures each, and then calls are refused without an attempt.
    assert!(attempts <= 3 * calls as u64, "{attempts}");
    assert!(p99 < Duration::from_secs(3), "p99 {p99:?}");
    // Once open, a call is a fast 503 with no upstream attempt at all.
    let before = attempts;
    let t = Instant::now();
    let r = env
        .post_messages(&env.web_key, &body("claude-sonnet-4-5", "after"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        env.mock.key_requests(KEY_A) + env.mock.key_requests(KEY_B),
        before
    );
}
