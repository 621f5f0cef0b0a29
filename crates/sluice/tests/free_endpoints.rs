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
