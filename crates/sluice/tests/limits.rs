//! Limits and budgets through the real router, against the fake upstream: the tenant's own
//! rate-limit headers on every reply, 429s in the upstream's shape that name the tenant, the
//! dimension and the limit, refusals that say not to retry, waiting for room, the org pool
//! tightened by the upstream's headers, costs on the ledger, and a budget that holds under 200
//! concurrent calls.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Opts, env_with};
use serde_json::Value;
use sluice_billing::PriceTable;
use sluice_limits::estimate::estimate_input;
use sluice_mock::MockOptions;

const MODEL: &str = "claude-sonnet-4-5";

fn body(max_tokens: u64, text: &str) -> String {
    format!(
        r#"{{"model":"{MODEL}","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"{text}"}}]}}"#
    )
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn every_reply_carries_the_tenants_own_rate_limit_headers_never_the_orgs() {
    let env = env_with(Opts {
        web_extra: "limits = { requests_per_minute = 100, input_tokens_per_minute = 100000, output_tokens_per_minute = 20000 }".into(),
        ..Opts::default()
    })
    .await;
    let r = env
        .post_messages(&env.web_key, &body(50, "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-limit").as_deref(),
        Some("100")
    );
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-remaining").as_deref(),
        Some("99")
    );
    assert_eq!(
        header(&r, "anthropic-ratelimit-input-tokens-limit").as_deref(),
        Some("100000")
    );
    let remaining: u64 = header(&r, "anthropic-ratelimit-input-tokens-remaining")
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 100_000 && remaining > 99_000, "{remaining}");
    assert_eq!(
        header(&r, "anthropic-ratelimit-output-tokens-remaining").as_deref(),
        Some("19950"),
        "output reserved: min(max_tokens, learned) = 50"
    );
    let reset = header(&r, "anthropic-ratelimit-requests-reset").unwrap();
    humantime::parse_rfc3339(&reset).unwrap();
    // The mock sends the organisation's numbers (4000 requests, 2000000 input tokens): none
    // of them reach the tenant.
    for (name, v) in r.headers() {
        let v = v.to_str().unwrap();
        assert!(
            !v.contains("4000") || !name.as_str().contains("ratelimit"),
            "{name}: {v}"
        );
        assert_ne!(name.as_str(), "anthropic-ratelimit-tokens-limit");
    }
    // A streamed reply carries them too.
    let r = env
        .post_messages(
            &env.web_key,
            &body(50, "hello").replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\""),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-remaining").as_deref(),
        Some("98")
    );
    r.bytes().await.unwrap();
    // A tenant without limits gets no rate-limit headers at all (none of the org's either).
    let r = env
        .post_messages(&env.email_key, &body(50, "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()
            .keys()
            .all(|k| !k.as_str().starts_with("anthropic-ratelimit-")),
        "{:?}",
        r.headers()
    );
}

#[tokio::test]
async fn a_refusal_is_a_429_in_the_upstreams_shape_that_names_tenant_dimension_and_limit() {
    let mut env = env_with(Opts {
        web_extra: "limits = { requests_per_minute = 2 }".into(),
        ..Opts::default()
    })
    .await;
    for _ in 0..2 {
        let r = env
            .post_messages(&env.web_key, &body(5, "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = env
        .post_messages(&env.web_key, &body(5, "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-should-retry").as_deref(), Some("true"));
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-remaining").as_deref(),
        Some("0")
    );
    assert!(header(&r, "request-id").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("tenant 'web' exhausted its requests per minute (2/min); retry in "),
        "{msg}"
    );
    // Another tenant is not affected.
    let r = env
        .post_messages(&env.email_key, &body(5, "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rows = env.finish().await;
    let limited: Vec<_> = rows.iter().filter(|r| r.status == 429).collect();
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0].outcome, "limited_tenant");
    assert_eq!(limited[0].error_type.as_deref(), Some("rate_limit_error"));
    assert_eq!(
        env.mock.stats().messages,
        3,
        "the refused call never went upstream"
    );
}

#[tokio::test]
async fn a_call_that_can_never_fit_says_not_to_retry() {
    let env = env_with(Opts {
        web_extra: "limits = { output_tokens_per_minute = 1000 }".into(),
        ..Opts::default()
    })
    .await;
    // No history yet: the output reservation is min(max_tokens, 1024) = 1024 > 1000.
    let r = env
        .post_messages(&env.web_key, &body(4000, "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-should-retry").as_deref(), Some("false"));
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("tenant 'web'") && msg.contains("cannot be admitted"),
        "{msg}"
    );
    // A smaller max_tokens fits.
    let r = env
        .post_messages(&env.web_key, &body(500, "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_call_waits_for_room_up_to_max_wait_then_succeeds() {
    let mut env = env_with(Opts {
        // One request per second, no burst beyond one.
        web_extra: "max_wait_ms = 3000\nlimits = { requests_per_minute = 60, requests_burst = 1 }"
            .into(),
        ..Opts::default()
    })
    .await;
    let t = std::time::Instant::now();
    for _ in 0..3 {
        let r = env
            .post_messages(&env.web_key, &body(5, "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let took = t.elapsed();
    assert!(took >= std::time::Duration::from_millis(1900), "{took:?}");
    let rows = env.finish().await;
    let waited: Vec<i64> = rows.iter().map(|r| r.waited_ms).collect();
    assert_eq!(waited[0], 0);
    assert!(waited[1] >= 900 && waited[2] >= 900, "{waited:?}");
}

#[tokio::test]
async fn the_org_pool_is_tightened_by_the_upstreams_own_headers() {
    let env = env_with(Opts {
        mock: MockOptions {
            api_key: Some(common::UPSTREAM_KEY.into()),
            input_tokens_remaining: Some(3),
            ..MockOptions::default()
        },
        sections: "[org.classes.other]\ninput_tokens_per_minute = 1000000\n[limits]\nclasses = [{ name = \"sonnet\", models = [\"claude-sonnet-*\"] }]\n[org.classes.sonnet]\ninput_tokens_per_minute = 1000000\n".into(),
        ..Opts::default()
    })
    .await;
    let r = env
        .post_messages(&env.web_key, &body(5, "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The upstream said only 3 input tokens are left: the next call is held back here.
    let r = env
        .post_messages(&env.web_key, &body(5, "hi there, a longer prompt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("organisation's shared sonnet capacity"),
        "{msg}"
    );
    assert!(
        !msg.contains("1000000"),
        "the org's numbers are never shown: {msg}"
    );
    assert!(!msg.contains("email"), "{msg}");
}

#[tokio::test]
async fn costs_are_on_the_ledger_and_a_budget_holds_under_200_concurrent_calls() {
    let text = "Write a haiku about rivers.";
    let max_tokens = 1000;
    let prices = PriceTable::builtin();
    let est_in = estimate_input(body(max_tokens, text).as_bytes()).total;
    let per_call = prices
        .estimate_micros(MODEL, est_in, max_tokens, false)
        .unwrap();
    // Room for 10 calls and a half.
    let budget_micros = per_call * 21 / 2;
    let mut env = env_with(Opts {
        mock: MockOptions {
            api_key: Some(common::UPSTREAM_KEY.into()),
            output_tokens: Some(max_tokens),
            ..MockOptions::default()
        },
        web_extra: format!(
            "max_wait_ms = 0\nbudget_daily_usd = {}",
            budget_micros as f64 / 1e6
        ),
        ..Opts::default()
    })
    .await;
    let b = body(max_tokens, text);
    let calls = (0..200).map(|_| {
        let req = env.post_messages(&env.web_key, &b);
        async move { req.send().await.unwrap() }
    });
    let replies = futures_join_all(calls).await;
    let ok = replies.iter().filter(|r| r.status() == 200).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.status() == 429).collect();
    assert_eq!(ok + refused.len(), 200);
    assert_eq!(
        header(refused[0], "x-should-retry").as_deref(),
        Some("false")
    );
    let rows = env.finish().await;
    let spent: i64 = rows.iter().filter_map(|r| r.cost_micros).sum();
    let one = rows.iter().find_map(|r| r.cost_micros).unwrap();
    assert!(
        spent <= budget_micros as i64 + one,
        "spent {spent} µ$ against a budget of {budget_micros} (one call {one}); {ok} admitted"
    );
    assert!((9..=11).contains(&ok), "{ok} admitted");
    // Every admitted call's cost is the price of what the upstream reported.
    for r in rows.iter().filter(|r| r.status == 200) {
        let usage = sluice_core::Usage {
            input_tokens: r.input_tokens as u64,
            output_tokens: r.output_tokens as u64,
            cache_creation_input_tokens: r.cache_creation_input_tokens as u64,
            cache_read_input_tokens: r.cache_read_input_tokens as u64,
            ..Default::default()
        };
        assert_eq!(
            r.cost_micros,
            prices.cost_micros(MODEL, &usage, false).map(|c| c as i64)
        );
    }
    let budget_rows = rows
        .iter()
        .filter(|r| r.outcome == "limited_budget")
        .count();
    assert_eq!(budget_rows, 200 - ok);
}

async fn futures_join_all<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// A client that reads part of each stream and hangs up must still be charged the output it
/// caused: with an output-tokens-per-minute limit, repeated early disconnects run the bucket
/// dry like complete calls would, instead of being refunded to nothing.
#[tokio::test]
async fn repeated_disconnects_cannot_get_past_an_output_token_limit() {
    let mut env = env_with(Opts {
        web_extra: "limits = { output_tokens_per_minute = 2000 }".into(),
        ..Opts::default()
    })
    .await;
    let stream = format!(
        r#"{{"model":"{MODEL}","max_tokens":3000,"stream":true,"messages":[{{"role":"user","content":"write at length"}}]}}"#
    );
    let (mut admitted, mut refused, mut seen_tokens) = (0u64, 0u64, 0u64);
    for _ in 0..20 {
        let mut r = env
            .post_messages(&env.web_key, &stream)
            // 5 tokens per delta, paced so the client hangs up mid-generation.
            .header("x-mock-output-tokens", "3000")
            .header("x-mock-event-interval-ms", "2")
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            refused += 1;
            let v: Value = r.json().await.unwrap();
            assert!(
                v["error"]["message"].as_str().unwrap().contains("output"),
                "{v}"
            );
            continue;
        }
        assert_eq!(r.status(), 200);
        admitted += 1;
        let mut text = String::new();
        while text.matches("event: content_block_delta").count() < 100 {
            let chunk = r.chunk().await.unwrap().unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        seen_tokens += 5 * text.matches("event: content_block_delta").count() as u64;
        drop(r);
        // Let the gateway notice the hang-up and settle before the next call.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    let rows = env.finish().await;
    assert!(
        refused > 0,
        "{admitted} disconnecting calls admitted, none refused"
    );
    // The bucket holds 2,000 and refills ~33/s; each admitted call generated ≥ 500 tokens.
    assert!(
        admitted <= 6,
        "{admitted} calls admitted past a 2,000 OTPM limit"
    );
    let charged: i64 = rows
        .iter()
        .filter(|r| r.outcome == "client_closed")
        .map(|r| r.output_tokens)
        .sum();
    assert!(
        charged as u64 >= seen_tokens,
        "charged {charged} output tokens, the client alone saw {seen_tokens}"
    );
    assert!(
        rows.iter()
            .filter(|r| r.outcome == "client_closed")
            .all(|r| r.usage_estimated)
    );
}
