//! Automatic prompt caching through the real gateway against the fake upstream's prompt-cache
//! model: a tenant on `auto` reads a growing conversation and a shared system prompt from
//! cache, its ledger rows cost what the price table says, and what the upstream receives is
//! the client's body (byte for byte) whenever Sluice adds nothing: `off`, the per-call opt-out,
//! the client's own markers. A fallback to Bedrock gets Bedrock's form.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Env, Opts, env_with};
use sluice_mock::MockOptions;

const MODEL: &str = "claude-sonnet-4-5";
/// Output tokens of every reply (fixed, so costs depend on the prompt only).
const OUTPUT: i64 = 10;

/// About 3,000 of the mock's tokens (a quarter of the canonical bytes): well over Sonnet 4.5's
/// minimum of 1,024.
fn system_prompt() -> String {
    "You are a careful assistant for the Sluice test suite; answer briefly. ".repeat(170)
}

/// A conversation's body at turn `turns` (1-based): alternating user and assistant messages
/// ending with the user's, after `system`.
fn conversation(system: &str, topic: &str, turns: usize) -> String {
    let mut messages = Vec::new();
    for t in 1..=turns {
        if t > 1 {
            messages.push(serde_json::json!({
                "role": "assistant",
                "content": format!("Answer {} about {topic}: {}", t - 1, "details ".repeat(60)),
            }));
        }
        messages.push(serde_json::json!({
            "role": "user",
            "content": format!("Question {t} about {topic}: {}", "more words ".repeat(60)),
        }));
    }
    serde_json::json!({
        "model": MODEL,
        "max_tokens": 50,
        "system": system,
        "messages": messages,
    })
    .to_string()
}

fn opts(web_extra: &str) -> Opts {
    Opts {
        web_extra: web_extra.into(),
        mock: MockOptions {
            api_key: Some(common::UPSTREAM_KEY.into()),
            record: true,
            output_tokens: Some(OUTPUT as u64),
            ..MockOptions::default()
        },
        ..Opts::default()
    }
}

/// What one ledger row says about the prompt and its price.
#[derive(Debug, Clone, Copy)]
struct Priced {
    input: i64,
    write_5m: i64,
    write_1h: i64,
    read: i64,
    output: i64,
    cost: i64,
    saved: i64,
    added: bool,
}

fn priced(env: &Env) -> Vec<Priced> {
    let c = rusqlite::Connection::open(&env.db).unwrap();
    let mut s = c
        .prepare(
            "SELECT input_tokens, cache_creation_5m_input_tokens, cache_creation_1h_input_tokens,
             cache_read_input_tokens, output_tokens, cost_micros, saved_micros,
             prompt_cache_added FROM ledger ORDER BY id",
        )
        .unwrap();
    s.query_map([], |r| {
        Ok(Priced {
            input: r.get(0)?,
            write_5m: r.get(1)?,
            write_1h: r.get(2)?,
            read: r.get(3)?,
            output: r.get(4)?,
            cost: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
            saved: r.get(6)?,
            added: r.get(7)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Sonnet 4.5's prices in hundredths of a micro-dollar per token (`$/MTok × 100`): input $3,
/// 5-minute write $3.75, 1-hour write $6, read $0.30, output $15.
const INPUT: i64 = 300;
const WRITE_5M: i64 = 375;
const WRITE_1H: i64 = 600;
const READ: i64 = 30;
const OUT: i64 = 1500;

/// Hundredths of a micro-dollar to micro-dollars, halves up (the billing rounding).
fn micros(centi: i64) -> i64 {
    (centi + 50) / 100
}

/// The row's cost, by hand from the prices.
fn cost_by_hand(p: &Priced) -> i64 {
    micros(
        p.input * INPUT
            + p.write_5m * WRITE_5M
            + p.write_1h * WRITE_1H
            + p.read * READ
            + p.output * OUT,
    )
}

/// What the row would have cost with every prompt token uncached, by hand.
fn uncached_by_hand(p: &Priced) -> i64 {
    micros((p.input + p.write_5m + p.write_1h + p.read) * INPUT + p.output * OUT)
}

async fn post(env: &Env, key: &str, body: &str) -> serde_json::Value {
    let r = env.post_messages(key, body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The bodies the mock received on `/v1/messages`, oldest first.
fn received(env: &Env) -> Vec<Vec<u8>> {
    env.mock
        .recorded()
        .into_iter()
        .filter(|r| r.path == "/v1/messages")
        .map(|r| r.body.to_vec())
        .collect()
}

#[tokio::test]
async fn a_conversation_and_a_shared_system_prompt_read_from_cache_and_cost_less() {
    let mut env = env_with(opts("prompt_cache = \"auto\"")).await;
    let system = system_prompt();
    let mut reads = Vec::new();
    for turn in 1..=6 {
        let v = post(&env, &env.web_key, &conversation(&system, "rivers", turn)).await;
        let u = &v["usage"];
        let (write, read) = (
            u["cache_creation_input_tokens"].as_i64().unwrap(),
            u["cache_read_input_tokens"].as_i64().unwrap(),
        );
        if turn == 1 {
            assert!(write > 2_500 && read == 0, "turn 1 writes: {u}");
        } else {
            // The tail cached automatically on the last turn is read, so reads grow.
            assert!(
                read > *reads.last().unwrap(),
                "turn {turn}: {u} after {reads:?}"
            );
            assert!(write > 0, "turn {turn} writes its new tail: {u}");
        }
        reads.push(read);
    }
    assert!(
        reads[1] > 2_500,
        "turn 2 reads at least the system prompt: {reads:?}"
    );

    // Another conversation on the same system prompt reads it on its first turn, from the
    // breakpoint Sluice put at the end of `system`.
    let v = post(&env, &env.web_key, &conversation(&system, "mountains", 1)).await;
    let first_read = v["usage"]["cache_read_input_tokens"].as_i64().unwrap();
    assert!(
        first_read > 2_500 && first_read < reads[1],
        "the system prompt only: {first_read} vs {reads:?}"
    );

    // The same seven calls on a tenant that is `off`, for comparison.
    for turn in 1..=6 {
        post(&env, &env.email_key, &conversation(&system, "rivers", turn)).await;
    }
    post(&env, &env.email_key, &conversation(&system, "mountains", 1)).await;

    env.finish().await;
    let rows = priced(&env);
    assert_eq!(rows.len(), 14);
    let (auto, off) = rows.split_at(7);
    for p in &rows {
        assert_eq!(p.output, OUTPUT);
        assert_eq!(p.cost, cost_by_hand(p), "{p:?}");
        assert_eq!(p.saved, uncached_by_hand(p) - p.cost, "{p:?}");
    }
    for p in auto {
        assert!(p.added, "{p:?}");
        assert_eq!(p.write_1h, 0);
    }
    for p in off {
        assert!(
            !p.added && p.read == 0 && p.write_5m == 0 && p.saved == 0,
            "{p:?}"
        );
    }
    // Turn 1 only paid the write premium: a quarter of the input price on what it wrote.
    assert_eq!(
        auto[0].saved,
        -micros(auto[0].write_5m * (WRITE_5M - INPUT))
    );
    // Every later call saves nine tenths of the input price on what it read, less the premium.
    for p in &auto[1..] {
        assert!(p.saved > 0, "{p:?}");
        let by_hand = micros(p.read * (INPUT - READ)) - micros(p.write_5m * (WRITE_5M - INPUT));
        assert!((p.saved - by_hand).abs() <= 1, "{p:?}: {by_hand}");
    }
    // Against the tenant that is off, the same calls cost less by what the ledger says was
    // saved, less the few tokens of the markers themselves (the mock counts them as input).
    let total = |rs: &[Priced]| rs.iter().map(|p| p.cost).sum::<i64>();
    let saved: i64 = auto.iter().map(|p| p.saved).sum();
    let prompt = |rs: &[Priced]| {
        rs.iter()
            .map(|p| p.input + p.write_5m + p.write_1h + p.read)
            .sum::<i64>()
    };
    let marker_tokens = prompt(auto) - prompt(off);
    assert!(
        (0..=7 * 30).contains(&marker_tokens),
        "markers cost {marker_tokens} tokens"
    );
    let fell = total(off) - total(auto);
    let expected = saved - micros(marker_tokens * INPUT);
    assert!(
        (fell - expected).abs() <= 7,
        "cost fell by {fell}, expected {expected} (saved {saved})"
    );
    // Seven calls of ~3,000+ tokens: well over half the input cost is gone.
    assert!(fell * 2 > total(off) - 7 * micros(OUTPUT * OUT), "{fell}");
}

#[tokio::test]
async fn off_the_opt_out_and_the_clients_own_markers_reach_the_upstream_byte_for_byte() {
    let mut env = env_with(opts("prompt_cache = \"auto\"")).await;
    let system = system_prompt();
    // A body with odd spacing and key order, which any re-serialisation would change.
    let plain = conversation(&system, "tides", 2).replacen("{", "{ ", 1);
    // `off` (the email tenant), twice, so a cache could have been read the second time.
    for _ in 0..2 {
        let v = post(&env, &env.email_key, &plain).await;
        assert_eq!(v["usage"]["cache_read_input_tokens"], 0);
        assert_eq!(v["usage"]["cache_creation_input_tokens"], 0);
    }
    // The per-call opt-out on the `auto` tenant; the header itself stays with Sluice.
    let r = env
        .post_messages(&env.web_key, &plain)
        .header("x-sluice-prompt-cache", "off")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["cache_creation_input_tokens"], 0);
    let last = env.mock.recorded().pop().unwrap();
    assert!(last.header("x-sluice-prompt-cache").is_none());
    // Any other value is refused in the upstream's error shape, and never forwarded.
    let r = env
        .post_messages(&env.web_key, &plain)
        .header("x-sluice-prompt-cache", "false")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-sluice-prompt-cache")
    );
    // The client's own marker (one, on the last message only): left exactly as sent.
    let mut own: serde_json::Value =
        serde_json::from_str(&conversation(&system, "tides", 2)).unwrap();
    let last = own["messages"].as_array_mut().unwrap().last_mut().unwrap();
    last["content"] = serde_json::json!([{
        "type": "text",
        "text": last["content"].clone(),
        "cache_control": {"type": "ephemeral"},
    }]);
    let own = own.to_string().replacen("{", "{  ", 1);
    assert!(own.contains("cache_control"), "{own}");
    let v = post(&env, &env.web_key, &own).await;
    // Only the client's breakpoint, on the last message: the whole prompt is written once.
    assert!(v["usage"]["cache_creation_input_tokens"].as_i64().unwrap() > 2_500);

    let bodies = received(&env);
    assert_eq!(bodies.len(), 4);
    for b in &bodies[..3] {
        assert_eq!(b.as_slice(), plain.as_bytes());
    }
    assert_eq!(bodies[3].as_slice(), own.as_bytes());

    // A short call on `auto` (under the minimum): nothing to cache, so nothing is added.
    let short = r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    post(&env, &env.web_key, short).await;
    assert_eq!(received(&env).pop().unwrap(), short.as_bytes());

    env.finish().await;
    let added: Vec<bool> = priced(&env).iter().map(|p| p.added).collect();
    // The refused call is on the ledger too (rejected), with nothing added.
    assert_eq!(added, [false; 6]);
}

#[tokio::test]
async fn a_one_hour_ttl_marks_every_breakpoint_and_a_class_override_applies() {
    // The tenant is off except for the Sonnet 4 class, which is on with 1h.
    let mut env = env_with(opts(
        "[tenants.class_prompt_cache.sonnet-4]\nprompt_cache = \"auto\"\nprompt_cache_ttl = \"1h\"",
    ))
    .await;
    let system = system_prompt();
    let v = post(&env, &env.web_key, &conversation(&system, "clouds", 1)).await;
    let u = &v["usage"];
    assert!(
        u["cache_creation"]["ephemeral_1h_input_tokens"]
            .as_i64()
            .unwrap()
            > 2_500
    );
    assert_eq!(u["cache_creation"]["ephemeral_5m_input_tokens"], 0);
    // Another class (Opus 4.1, minimum 1,024 too) takes the tenant's `off`.
    let opus = conversation(&system, "clouds", 1).replace(MODEL, "claude-opus-4-1");
    post(&env, &env.web_key, &opus).await;

    let bodies = received(&env);
    let sent = String::from_utf8(bodies[0].clone()).unwrap();
    let markers = sent.matches("\"cache_control\"").count();
    // The end of `system` and the top-level (automatic) one.
    assert_eq!(markers, 2, "{sent}");
    assert_eq!(
        sent.matches(r#""cache_control":{"type":"ephemeral","ttl":"1h"}"#)
            .count(),
        markers
    );
    let v: serde_json::Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(v["system"][0]["text"], system.as_str());
    assert_eq!(bodies[1].as_slice(), opus.as_bytes());

    env.finish().await;
    let rows = priced(&env);
    assert!(rows[0].added && !rows[1].added);
    assert_eq!(rows[0].cost, cost_by_hand(&rows[0]));
    // A 1-hour write costs twice the input price: the premium is the whole input price.
    assert_eq!(
        rows[0].saved,
        -micros(rows[0].write_1h * (WRITE_1H - INPUT))
    );
}

const KEY_A: &str = "sk-ant-AAAA-prompt-cache-primary-secret";
const AKID: &str = "AKIAPROMPTCACHETEST1";
const AWS_SECRET: &str = "prompt/cache+secret";

/// A primary Anthropic API member, then Bedrock, then Vertex for claude-sonnet-4-5.
fn fallback_upstream() -> String {
    format!(
        r#"max_attempts = 1

[[upstream.members]]
name = "primary"
api_key = "{KEY_A}"
weight = 1

[[upstream.members]]
name = "bedrock-east"
provider = "bedrock"
weight = 0
region = "us-east-1"
base_url = "{{MOCK}}"
aws_access_key_id = "{AKID}"
aws_secret_access_key = "{AWS_SECRET}"
models = {{ "claude-sonnet-4-5" = "anthropic.claude-sonnet-4-5-20250929-v1:0" }}

[[upstream.members]]
name = "vertex-east"
provider = "vertex"
weight = 0
project = "sluice-test"
region = "us-east5"
base_url = "{{MOCK}}"
credentials_file = "{{VERTEX_SA}}"
models = {{ "claude-sonnet-4-5" = "claude-sonnet-4-5@20250929" }}

[[upstream.fallbacks]]
model = "claude-sonnet-4-5"
then = [{{ provider = "bedrock" }}, {{ provider = "vertex" }}]
"#
    )
}

/// A client's own top-level marker (automatic caching) cannot go to Bedrock, which refuses the
/// field: on a fallback there it is moved onto the last user turn, value and TTL kept; the
/// Anthropic API still gets the client's bytes exactly.
#[tokio::test]
async fn a_clients_top_level_marker_is_moved_for_bedrock_and_kept_for_the_anthropic_api() {
    let env = env_with(Opts {
        upstream_extra: fallback_upstream(),
        mock: MockOptions {
            api_keys: vec![KEY_A.into()],
            aws_credentials: Some((AKID.into(), AWS_SECRET.into())),
            gcp_public_key_der: Some(std::fs::read(sluice_mock::VERTEX_SA_PUBLIC_KEY_DER).unwrap()),
            record: true,
            output_tokens: Some(OUTPUT as u64),
            ..MockOptions::default()
        },
        ..Opts::default()
    })
    .await;
    env.mock.set_key_status(KEY_A, Some(529));
    let mut body: serde_json::Value =
        serde_json::from_str(&conversation(&system_prompt(), "rivers", 2)).unwrap();
    body["cache_control"] = serde_json::json!({"type": "ephemeral", "ttl": "1h"});
    let body = body.to_string();
    for _ in 0..2 {
        let r = env.post_messages(&env.web_key, &body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let served = r.headers()["x-sluice-served-by"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(served.starts_with("provider=bedrock;"), "{served}");
    }
    let recorded = env.mock.recorded();
    let primary: Vec<_> = recorded
        .iter()
        .filter(|r| r.path == "/v1/messages")
        .collect();
    assert!(!primary.is_empty());
    for r in &primary {
        assert_eq!(r.body, body.as_bytes());
    }
    let bedrock: Vec<serde_json::Value> = recorded
        .iter()
        .filter(|r| r.path.contains("/model/"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(bedrock.len(), 2);
    for v in &bedrock {
        assert!(v.get("cache_control").is_none(), "{v}");
        let last = v["messages"].as_array().unwrap().last().unwrap();
        assert_eq!(last["role"], "user");
        let blocks = last["content"].as_array().unwrap();
        assert_eq!(blocks.last().unwrap()["cache_control"]["ttl"], "1h");
    }
}

#[tokio::test]
async fn a_fallback_to_bedrock_gets_explicit_breakpoints_and_vertex_the_automatic_form() {
    let upstream = fallback_upstream();
    let mut env = env_with(Opts {
        upstream_extra: upstream,
        web_extra: "prompt_cache = \"auto\"".into(),
        mock: MockOptions {
            api_keys: vec![KEY_A.into()],
            aws_credentials: Some((AKID.into(), AWS_SECRET.into())),
            gcp_public_key_der: Some(std::fs::read(sluice_mock::VERTEX_SA_PUBLIC_KEY_DER).unwrap()),
            record: true,
            output_tokens: Some(OUTPUT as u64),
            ..MockOptions::default()
        },
        ..Opts::default()
    })
    .await;
    env.mock.set_key_status(KEY_A, Some(529));
    let system = system_prompt();
    let mut reads = Vec::new();
    for (topic, turns) in [("lakes", 1), ("lakes", 2), ("seas", 1)] {
        let r = env
            .post_messages(&env.web_key, &conversation(&system, topic, turns))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let served = r.headers()["x-sluice-served-by"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(served.starts_with("provider=bedrock;"), "{served}");
        let v: serde_json::Value = r.json().await.unwrap();
        reads.push(v["usage"]["cache_read_input_tokens"].as_i64().unwrap());
    }
    // Turn 2 reads turn 1's whole prompt from the last-user-turn breakpoint; a new
    // conversation reads the system prompt.
    assert_eq!(reads[0], 0);
    assert!(reads[1] > reads[2] && reads[2] > 2_500, "{reads:?}");

    let recorded = env.mock.recorded();
    let to = |anthropic: bool| {
        recorded
            .iter()
            .filter(|r| r.path.contains("/model/") || r.path == "/v1/messages")
            .filter(|r| (r.path == "/v1/messages") == anthropic)
            .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap())
            .collect::<Vec<_>>()
    };
    let (primary, bedrock) = (to(true), to(false));
    // The primary was tried first (until its breaker opens, if it does).
    assert!(!primary.is_empty());
    assert_eq!(bedrock.len(), 3);
    // The same call in two forms: automatic on the Anthropic API, explicit on Bedrock.
    for v in &primary {
        assert_eq!(v["cache_control"]["type"], "ephemeral");
        assert!(v["system"][0]["cache_control"].is_object());
    }
    for v in &bedrock {
        assert!(v.get("cache_control").is_none(), "{v}");
        assert!(v["system"][0]["cache_control"].is_object());
        let last = v["messages"].as_array().unwrap().last().unwrap();
        assert_eq!(last["role"], "user");
        assert_eq!(last["content"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(v["anthropic_version"], "bedrock-2023-05-31");
    }

    // Bedrock failing too: Vertex, which takes the automatic form again (its own cache).
    env.mock.set_key_status(AKID, Some(503));
    let mut vertex_reads = Vec::new();
    for turns in [1, 2] {
        let r = env
            .post_messages(&env.web_key, &conversation(&system, "lakes", turns))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let served = r.headers()["x-sluice-served-by"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(served.starts_with("provider=vertex;"), "{served}");
        let v: serde_json::Value = r.json().await.unwrap();
        vertex_reads.push(v["usage"]["cache_read_input_tokens"].as_i64().unwrap());
    }
    assert_eq!(vertex_reads[0], 0);
    assert!(vertex_reads[1] > 2_500, "{vertex_reads:?}");
    let vertex: Vec<serde_json::Value> = env
        .mock
        .recorded()
        .iter()
        .filter(|r| r.path.ends_with(":rawPredict"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(vertex.len(), 2);
    for v in &vertex {
        assert_eq!(v["cache_control"]["type"], "ephemeral");
        assert!(v["system"][0]["cache_control"].is_object());
        assert!(v.get("model").is_none());
    }

    env.finish().await;
    let rows = priced(&env);
    assert_eq!(rows.len(), 5);
    for p in &rows {
        assert!(p.added);
        assert_eq!(p.cost, cost_by_hand(p), "{p:?}");
    }
    assert!(rows[1].saved > 0 && rows[2].saved > 0 && rows[4].saved > 0);
}

const KEY_B: &str = "sk-ant-BBBB-prompt-cache-second-secret";

#[tokio::test]
async fn conversations_sharing_a_system_prompt_keep_to_the_member_that_cached_it() {
    // Two keys: the upstream's cache is per key, so a new conversation reads the shared
    // system prompt only if it goes where it was written.
    let upstream = format!(
        "\n[[upstream.members]]\nname = \"a\"\napi_key = \"{KEY_A}\"\nweight = 1\n\n[[upstream.members]]\nname = \"b\"\napi_key = \"{KEY_B}\"\nweight = 1\n"
    );
    let env = env_with(Opts {
        upstream_extra: upstream,
        web_extra: "prompt_cache = \"auto\"".into(),
        mock: MockOptions {
            api_keys: vec![KEY_A.into(), KEY_B.into()],
            record: true,
            output_tokens: Some(OUTPUT as u64),
            ..MockOptions::default()
        },
        ..Opts::default()
    })
    .await;
    let system = system_prompt();
    post(&env, &env.web_key, &conversation(&system, "topic 0", 1)).await;
    // Spread by weight, seven more conversations would all find the first one's key with a
    // chance of 1 in 128.
    for i in 1..8 {
        let v = post(
            &env,
            &env.web_key,
            &conversation(&system, &format!("topic {i}"), 1),
        )
        .await;
        assert!(
            v["usage"]["cache_read_input_tokens"].as_i64().unwrap() > 2_500,
            "conversation {i}: {v}"
        );
    }
    assert_eq!(
        env.mock
            .key_requests(KEY_A)
            .min(env.mock.key_requests(KEY_B)),
        0
    );
}

#[tokio::test]
async fn a_model_fallback_takes_its_own_models_minimum_and_keeps_the_markers_through_the_swap() {
    // Haiku 4.5 (minimum 4,096) overloaded on the primary; the chain goes to Sonnet 4.5
    // (minimum 1,024) on a standby that knows it under a dated id.
    let upstream = format!(
        "max_attempts = 1\n\n[[upstream.members]]\nname = \"primary\"\napi_key = \"{KEY_A}\"\nweight = 1\n\n[[upstream.members]]\nname = \"spare\"\napi_key = \"{KEY_B}\"\nweight = 0\nmodels = {{ \"claude-sonnet-4-5\" = \"claude-sonnet-4-5-20250929\" }}\n\n[[upstream.fallbacks]]\nmodel = \"claude-haiku-4-5\"\nthen = [{{ model = \"claude-sonnet-4-5\", member = \"spare\" }}]\n"
    );
    let mut env = env_with(Opts {
        upstream_extra: upstream,
        web_extra: "prompt_cache = \"auto\"".into(),
        mock: MockOptions {
            api_keys: vec![KEY_A.into(), KEY_B.into()],
            record: true,
            output_tokens: Some(OUTPUT as u64),
            ..MockOptions::default()
        },
        ..Opts::default()
    })
    .await;
    env.mock.set_key_status(KEY_A, Some(529));
    // About 1,800 tokens: under Haiku's minimum, over Sonnet's.
    let system =
        "You are a careful assistant for the Sluice test suite; answer briefly. ".repeat(100);
    let haiku = |topic: &str| conversation(&system, topic, 1).replace(MODEL, "claude-haiku-4-5");
    let mut reads = Vec::new();
    for topic in ["ponds", "brooks"] {
        let v = post(&env, &env.web_key, &haiku(topic)).await;
        reads.push(v["usage"]["cache_read_input_tokens"].as_i64().unwrap());
    }
    // The second conversation read the system prompt the first wrote on the spare.
    assert_eq!(reads[0], 0);
    assert!(reads[1] > 1_500, "{reads:?}");

    let recorded = env.mock.recorded();
    assert_eq!(recorded.len(), 4);
    for (i, topic) in ["ponds", "brooks"].into_iter().enumerate() {
        // Haiku's attempt: nothing could be cached at its minimum, so the body went as sent.
        assert_eq!(recorded[2 * i].body.as_ref(), haiku(topic).as_bytes());
        // Sonnet's: marked, then named by the member's id, nothing else changed.
        let sent = String::from_utf8(recorded[2 * i + 1].body.to_vec()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&sent).unwrap();
        assert_eq!(v["model"], "claude-sonnet-4-5-20250929");
        assert_eq!(v["cache_control"]["type"], "ephemeral");
        assert_eq!(v["system"][0]["text"], system.as_str());
        assert!(v["system"][0]["cache_control"].is_object());
        let unmarked = sent
            .replace(r#","cache_control":{"type":"ephemeral"}"#, "")
            .replace(r#"[{"type":"text","text":"#, "")
            .replace(r#""}],"#, r#"","#)
            .replace("claude-sonnet-4-5-20250929", "claude-haiku-4-5");
        assert_eq!(unmarked, haiku(topic));
    }

    env.finish().await;
    let rows = priced(&env);
    assert_eq!(
        rows.iter().map(|p| p.added).collect::<Vec<_>>(),
        [true, true]
    );
}

/// Admission knows about the markers Sluice adds: a tenant whose input-token limit has room
/// for one uncached system prompt but not two makes three conversations sharing it back to
/// back, and each later one is admitted on the read its system breakpoint will earn (cache
/// reads do not count toward input limits), not refused as if its whole prompt were new input.
#[tokio::test]
async fn admission_predicts_the_reads_of_the_breakpoints_sluice_adds() {
    let env = env_with(opts(
        "prompt_cache = \"auto\"\nlimits = { input_tokens_per_minute = 4500 }",
    ))
    .await;
    let system = system_prompt();
    let mut reads = Vec::new();
    for topic in ["tides", "rivers", "lakes"] {
        let r = env
            .post_messages(&env.web_key, &conversation(&system, topic, 1))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{topic}: {}", r.text().await.unwrap());
        let v: serde_json::Value = r.json().await.unwrap();
        reads.push(v["usage"]["cache_read_input_tokens"].as_i64().unwrap());
    }
    assert_eq!(reads[0], 0);
    assert!(reads[1] > 2_500 && reads[2] > 2_500, "{reads:?}");
}
