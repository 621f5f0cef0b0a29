//! The calls free upstream (token counting, model listing): limited per tenant by
//! `count_tokens_per_minute`, refused in the shape of the other tenant refusals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Opts, SMALL, env_with};
use serde_json::Value;

#[tokio::test]
async fn count_tokens_per_minute_refuses_the_call_past_the_limit_for_that_tenant_only() {
    let e = env_with(Opts {
        web_extra: "count_tokens_per_minute = 3".into(),
        ..Opts::default()
    })
    .await;
    let count = |key: &str| {
        e.http
            .post(e.url("/v1/messages/count_tokens"))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(SMALL)
            .send()
    };
    let models = |key: &str| {
        e.http
            .get(e.url("/v1/models"))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .send()
    };
    // Token counting and model listing share the one bucket: 2 + 1 calls fit.
    for _ in 0..2 {
        assert_eq!(count(&e.web_key).await.unwrap().status(), 200);
    }
    assert_eq!(models(&e.web_key).await.unwrap().status(), 200);
    for r in [
        count(&e.web_key).await.unwrap(),
        models(&e.web_key).await.unwrap(),
    ] {
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=20).contains(&retry), "retry-after {retry}");
        assert_eq!(r.headers()["x-should-retry"], "true");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("count_tokens_per_minute"),
            "{v}"
        );
    }
    // Another tenant (no such limit) is unaffected.
    for _ in 0..5 {
        assert_eq!(count(&e.email_key).await.unwrap().status(), 200);
    }
}

async fn upstream_model_calls(e: &common::Env) -> usize {
    e.upstream_requests()
        .await
        .iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with("/v1/models"))
        .count()
}

#[tokio::test]
async fn model_list_is_served_from_the_cache_per_version_and_beta() {
    let e = env_with(Opts::default()).await;
    let models = |key: &str, path: &str, beta: Option<&str>| {
        let mut r = e
            .http
            .get(e.url(path))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01");
        if let Some(b) = beta {
            r = r.header("anthropic-beta", b);
        }
        r.send()
    };
    let first = models(&e.web_key, "/v1/models", None).await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    // Another tenant's identical call: the same reply, no second upstream call.
    let again = models(&e.email_key, "/v1/models", None).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(upstream_model_calls(&e).await, 1);
    // Authentication still happens on every call.
    assert_eq!(
        models("sk-sluice-bogus", "/v1/models", None)
            .await
            .unwrap()
            .status(),
        401
    );
    // A different beta header, or a different path, is its own entry.
    assert_eq!(
        models(&e.web_key, "/v1/models", Some("b-1"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(upstream_model_calls(&e).await, 2);
    let id = first["data"][0]["id"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let path = format!("/v1/models/{id}");
        assert_eq!(models(&e.web_key, &path, None).await.unwrap().status(), 200);
    }
    assert_eq!(upstream_model_calls(&e).await, 3);
}

#[tokio::test]
async fn model_list_cache_off_with_zero_secs() {
    let e = env_with(Opts {
        upstream_extra: "models_cache_secs = 0".into(),
        ..Opts::default()
    })
    .await;
    for _ in 0..2 {
        let r = e
            .http
            .get(e.url("/v1/models"))
            .header("x-api-key", &e.web_key)
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(upstream_model_calls(&e).await, 2);
}
