//! End-to-end behaviour of the gateway in front of the fake upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn json_message_is_forwarded_byte_for_byte_with_headers_and_recorded() {
    let mut e = env().await;
    // Odd spacing, key order, unicode escapes and an unknown field: all must arrive unchanged.
    let body = "{ \"max_tokens\" : 64,\n \"model\":\"claude-sonnet-4-5\", \"unknown_field\": {\"x\": [1,2,3]},\n\"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9llo \u{1F600}\"}] }";
    let resp = e
        .post_messages(&e.web_key, body)
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .header("x-custom-header", "kept")
        .header("x-sluice-feature", "checkout-summary")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["request-id"].to_str().unwrap().to_owned();
    assert!(request_id.starts_with("req_"), "{request_id}");
    assert!(
        !resp
            .headers()
            .keys()
            .any(|k| k.as_str().starts_with("anthropic-ratelimit-")),
        "organisation rate-limit headers leaked to a tenant"
    );
    let reply: Value = resp.json().await.unwrap();

    let seen = e.upstream_requests().await;
    let last = seen.last().unwrap();
    assert_eq!(last["path"], "/v1/messages");
    assert_eq!(
        last["body"].as_str().unwrap(),
        body,
        "body was re-serialised"
    );
    let h = &last["headers"];
    assert_eq!(h["x-api-key"], UPSTREAM_KEY);
    assert_eq!(h["anthropic-version"], "2023-06-01");
    assert_eq!(h["anthropic-beta"], "prompt-caching-2024-07-31");
    assert_eq!(h["x-custom-header"], "kept");
    assert!(h.get("authorization").is_none());
    assert!(h.get("x-sluice-feature").is_none());

    let rows = e.finish().await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.tenant, "web");
    assert_eq!(r.key_id, e.web_key_id);
    assert_eq!(r.feature.as_deref(), Some("checkout-summary"));
    assert_eq!(r.endpoint, "messages");
    assert_eq!(r.request_id, request_id);
    assert_eq!(r.status, 200);
    assert_eq!(r.outcome, "ok");
    assert!(!r.streamed);
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(r.model_served.as_deref(), reply["model"].as_str());
    assert_eq!(
        r.input_tokens,
        reply["usage"]["input_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        r.output_tokens,
        reply["usage"]["output_tokens"].as_i64().unwrap()
    );
    assert_eq!(r.stop_reason.as_deref(), reply["stop_reason"].as_str());
}

#[tokio::test]
async fn bearer_auth_and_beta_query_are_accepted() {
    let e = env().await;
    let resp = e
        .http
        .post(e.url("/v1/messages?beta=true"))
        .header("authorization", format!("Bearer {}", e.web_key))
        .header("anthropic-version", "2026-10-21")
        .body(SMALL)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = e.upstream_requests().await;
    let last = seen.last().unwrap();
    assert_eq!(last["query"], "beta=true");
    assert_eq!(last["headers"]["anthropic-version"], "2026-10-21");
    assert_eq!(last["headers"]["x-api-key"], UPSTREAM_KEY);
    assert!(
        last["headers"].get("authorization").is_none(),
        "the client's gateway key went upstream"
    );
}

#[tokio::test]
async fn stream_passes_through_and_usage_is_tapped() {
    let mut e = env().await;
    let resp = e
        .post_messages(&e.web_key, &stream_body(200))
        .header("x-mock-output-tokens", "120")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = resp.text().await.unwrap();
    let events = sse_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(!names.contains(&"error"));
    let start_usage = &events[0].1["message"]["usage"];
    let delta = events
        .iter()
        .rev()
        .find(|(n, _)| n == "message_delta")
        .unwrap();

    let rows = e.finish().await;
    let r = &rows[0];
    assert!(r.streamed);
    assert_eq!(r.outcome, "ok");
    assert_eq!(r.output_tokens, 120);
    assert_eq!(
        r.output_tokens,
        delta.1["usage"]["output_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        r.input_tokens,
        start_usage["input_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        r.stop_reason.as_deref(),
        delta.1["delta"]["stop_reason"].as_str()
    );
}

#[tokio::test]
async fn stream_is_not_buffered() {
    let e = env().await;
    let mut resp = e
        .post_messages(&e.web_key, &stream_body(400))
        .header("x-mock-output-tokens", "300")
        .header("x-mock-event-interval-ms", "40")
        .send()
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let first = resp.chunk().await.unwrap().unwrap();
    // The whole stream takes seconds; the first event must arrive long before that.
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
}

#[tokio::test]
async fn prompt_cache_usage_is_recorded() {
    let mut e = env().await;
    // Past the 1,024-token minimum below which the upstream writes nothing.
    let system =
        "You are a careful assistant. Long shared instructions go here and are cached. ".repeat(60);
    let body = format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":32,"system":[{{"type":"text","text":"{system}","cache_control":{{"type":"ephemeral"}}}}],"messages":[{{"role":"user","content":"Hi"}}]}}"#
    );
    for _ in 0..2 {
        let r = e.post_messages(&e.web_key, &body).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let rows = e.finish().await;
    assert!(rows[0].cache_creation_input_tokens > 0);
    assert_eq!(rows[0].cache_read_input_tokens, 0);
    assert_eq!(rows[1].cache_creation_input_tokens, 0);
    assert_eq!(
        rows[1].cache_read_input_tokens,
        rows[0].cache_creation_input_tokens
    );
}

fn assert_error_shape(v: &Value, kind: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn authentication_failures_are_401_or_403_in_the_wire_shape() {
    let e = env().await;
    let none = e
        .http
        .post(e.url("/v1/messages"))
        .body(SMALL)
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["x-should-retry"], "false");
    assert_error_shape(&none.json().await.unwrap(), "authentication_error");

    let bad = e
        .post_messages("sk-sluice-not-a-key", SMALL)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let v: Value = bad.json().await.unwrap();
    assert_error_shape(&v, "authentication_error");
    assert!(!v.to_string().contains("sk-sluice-not-a-key"), "key echoed");

    let disabled = e.post_messages(&e.legacy_key, SMALL).send().await.unwrap();
    assert_eq!(disabled.status(), 403);
    assert_error_shape(&disabled.json().await.unwrap(), "permission_error");

    // Nothing unauthenticated reached the upstream.
    assert!(e.upstream_requests().await.is_empty());
}

#[tokio::test]
async fn revoked_key_stops_working_within_the_refresh_interval() {
    let e = env().await;
    assert_eq!(
        e.post_messages(&e.web_key, SMALL)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let store = sluice_store::Store::open(&e.db).unwrap();
    store.revoke_key(&e.web_key_id, 1).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        e.post_messages(&e.web_key, SMALL)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // A key created while the gateway runs works without a restart.
    let k = store.create_key("web", "late", None, 2).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        e.post_messages(&k.secret, SMALL)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn bad_requests_get_400_and_are_recorded_without_reaching_upstream() {
    let mut e = env().await;
    let cases: &[(&str, Option<&str>)] = &[
        ("{not json", None),
        (r#"{"max_tokens":10,"messages":[]}"#, None),
        (r#"[1,2]"#, None),
        (r#"{"model":7,"max_tokens":1,"messages":[]}"#, None),
        (SMALL, Some("bad feature!")),
    ];
    for (body, feature) in cases {
        let mut req = e.post_messages(&e.web_key, body);
        if let Some(f) = feature {
            req = req.header("x-sluice-feature", *f);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        assert!(resp.headers().contains_key("request-id"));
        assert_error_shape(&resp.json().await.unwrap(), "invalid_request_error");
    }
    assert!(e.upstream_requests().await.is_empty());
    let rows = e.finish().await;
    assert_eq!(rows.len(), cases.len());
    assert!(
        rows.iter()
            .all(|r| r.outcome == "rejected" && r.status == 400)
    );
}

#[tokio::test]
async fn oversize_body_is_413() {
    let e = env_with(Opts {
        extra_config: "max_body_bytes = 1024".into(),
        ..Opts::default()
    })
    .await;
    let big = format!(
        r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4096)
    );
    let resp = e.post_messages(&e.web_key, &big).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_error_shape(&resp.json().await.unwrap(), "request_too_large");
    // Without a content-length (chunked), the limit holds while reading.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(e.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ntransfer-encoding: chunked\r\n\r\n",
        e.web_key
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    for chunk in big.as_bytes().chunks(512) {
        let c = format!("{:x}\r\n", chunk.len());
        tcp.write_all(c.as_bytes()).await.unwrap();
        tcp.write_all(chunk).await.unwrap();
        tcp.write_all(b"\r\n").await.unwrap();
    }
    tcp.write_all(b"0\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    // A 429 cools the (only) upstream member down and repeated 5xx would open its breaker
    // (docs/resilience.md): the 429 comes last and the breaker is kept out of the way.
    let mut e = env_with(Opts {
        upstream_extra: "breaker_failures = 100".into(),
        ..Opts::default()
    })
    .await;
    for status in [400u16, 500, 529, 429] {
        let resp = e
            .post_messages(&e.web_key, SMALL)
            .header("x-mock-status", status.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status);
        if status == 429 {
            assert!(resp.headers().contains_key("retry-after"));
        }
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert!(
            v["request_id"].as_str().unwrap().starts_with("req_mock"),
            "{v}"
        );
    }
    let rows = e.finish().await;
    let types: Vec<_> = rows.iter().map(|r| r.error_type.clone().unwrap()).collect();
    assert_eq!(
        types,
        [
            "invalid_request_error",
            "api_error",
            "overloaded_error",
            "rate_limit_error"
        ]
    );
    assert!(rows.iter().all(|r| r.outcome == "upstream_error"));
}

#[tokio::test]
async fn error_event_mid_stream_reaches_client_and_is_recorded() {
    let mut e = env().await;
    let text = e
        .post_messages(&e.web_key, &stream_body(200))
        .header("x-mock-stream-error-after", "4")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
    let rows = e.finish().await;
    assert_eq!(rows[0].outcome, "stream_error");
    assert_eq!(rows[0].error_type.as_deref(), Some("overloaded_error"));
    assert!(rows[0].input_tokens > 0, "partial usage lost");
}

#[tokio::test]
async fn dropped_upstream_connection_becomes_an_error_event_not_a_silent_truncation() {
    let mut e = env().await;
    let resp = e
        .post_messages(&e.web_key, &stream_body(200))
        .header("x-mock-drop-after", "4")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp
        .text()
        .await
        .expect("the gateway ends the stream cleanly");
    let events = sse_events(&text);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "error", "{text}");
    assert_eq!(data["error"]["type"], "api_error");
    assert!(!events.iter().any(|(n, _)| n == "message_stop"));
    let rows = e.finish().await;
    assert_eq!(rows[0].outcome, "upstream_disconnected");
    assert!(rows[0].input_tokens > 0);
}

#[tokio::test]
async fn client_disconnect_cancels_upstream_and_records_partial_usage() {
    let mut e = env().await;
    let mut resp = e
        .post_messages(&e.web_key, &stream_body(4000))
        .header("x-mock-output-tokens", "3000")
        .header("x-mock-event-interval-ms", "20")
        .send()
        .await
        .unwrap();
    // Read ten text deltas (50 output tokens of the mock's), then go away.
    let mut seen = String::new();
    while seen.matches("event: content_block_delta").count() < 10 {
        let chunk = resp.chunk().await.unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("message_start"));
    drop(resp);
    let mut cancelled = 0;
    for _ in 0..100 {
        cancelled = e.mock_stats().await["streams_cancelled"].as_u64().unwrap();
        if cancelled > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cancelled, 1, "the upstream stream kept running");
    let rows = e.finish().await;
    assert_eq!(rows[0].outcome, "client_closed");
    assert!(rows[0].input_tokens > 0);
    // Charged for what was generated before the cut (the gateway may have read one delta
    // more than the client did), within the estimate's band, and marked as an estimate.
    let out = rows[0].output_tokens as f64;
    assert!((50.0 * 0.85..=55.0 * 1.15).contains(&out), "{out}");
    assert!(rows[0].usage_estimated);
}

#[tokio::test]
async fn streams_cut_at_several_points_are_charged_what_was_generated() {
    let mut e = env().await;
    // The mock sends message_start, content_block_start and ping, then 5 tokens per delta.
    let cuts = [1u64, 10, 50, 200];
    for n in cuts {
        let text = e
            .post_messages(&e.web_key, &stream_body(4000))
            .header("x-mock-output-tokens", "3000")
            .header("x-mock-drop-after", (3 + n).to_string())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(text.matches("event: content_block_delta").count() as u64, n);
    }
    let rows = e.finish().await;
    assert_eq!(rows.len(), cuts.len());
    for (row, n) in rows.iter().zip(cuts) {
        assert_eq!(row.outcome, "upstream_disconnected");
        let truth = (5 * n) as f64;
        let out = row.output_tokens as f64;
        assert!(
            (truth * 0.85..=truth * 1.15).contains(&out),
            "{n} deltas: charged {out}, generated {truth}"
        );
        assert!(row.usage_estimated);
        assert!(row.cost_micros.unwrap_or(0) > 0);
    }
    // A complete stream is charged what it reported, not an estimate.
    let mut e = env().await;
    e.post_messages(&e.web_key, &stream_body(4000))
        .header("x-mock-output-tokens", "333")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rows = e.finish().await;
    assert_eq!(rows[0].output_tokens, 333);
    assert!(!rows[0].usage_estimated);
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_is_504() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut e = env_with(Opts {
        upstream_override: Some(format!("http://127.0.0.1:{port}")),
        ..Opts::default()
    })
    .await;
    let resp = e.post_messages(&e.web_key, SMALL).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_error_shape(&v, "api_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("upstream"));
    assert!(!v.to_string().contains(UPSTREAM_KEY));
    let rows = e.finish().await;
    assert_eq!(rows[0].outcome, "upstream_unreachable");

    let mut e = env_with(Opts {
        upstream_extra: "first_byte_timeout_ms = 200".into(),
        ..Opts::default()
    })
    .await;
    let resp = e
        .post_messages(&e.web_key, SMALL)
        .header("x-mock-latency-ms", "2000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let v: Value = resp.json().await.unwrap();
    assert_error_shape(&v, "timeout_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("upstream"));
    let rows = e.finish().await;
    assert_eq!(rows[0].outcome, "upstream_timeout");
}

#[tokio::test]
async fn count_tokens_and_models_pass_through() {
    let mut e = env().await;
    let r = e
        .http
        .post(e.url("/v1/messages/count_tokens?beta=true"))
        .header("x-api-key", &e.web_key)
        .body(SMALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["input_tokens"].as_u64().unwrap() > 0);

    let r = e
        .http
        .get(e.url("/v1/models?limit=2"))
        .header("x-api-key", &e.web_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(!v["data"].as_array().unwrap().is_empty());
    let id = v["data"][0]["id"].as_str().unwrap().to_owned();
    let r = e
        .http
        .get(e.url(&format!("/v1/models/{id}")))
        .header("x-api-key", &e.web_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = e
        .http
        .get(e.url("/v1/models/claude-nonexistent"))
        .header("x-api-key", &e.web_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let rows = e.finish().await;
    let endpoints: Vec<_> = rows.iter().map(|r| r.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["count_tokens", "models", "models", "models"]);
    assert_eq!(rows[0].input_tokens, 0, "token counting is not usage");
}

#[tokio::test]
async fn batches_belong_to_their_tenant_and_results_come_back_through_the_gateway() {
    let mut e = env().await;
    let create = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/batch_create_request.json"
    ))
    .unwrap();
    let auth = |k: &str| ("x-api-key", k.to_owned());
    let (h, k) = auth(&e.web_key);
    let r = e
        .http
        .post(e.url("/v1/messages/batches"))
        .header(h, k)
        .body(create)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    let id = b["id"].as_str().unwrap().to_owned();

    // The owner sees it, ended, with results_url pointing at the gateway.
    let get = |key: String, path: String| {
        let http = e.http.clone();
        let url = e.url(&path);
        async move { http.get(url).header("x-api-key", key).send().await.unwrap() }
    };
    let mut got: Value = Value::Null;
    for _ in 0..50 {
        got = get(e.web_key.clone(), format!("/v1/messages/batches/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if got["processing_status"] == "ended" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got["processing_status"], "ended", "{got}");
    let results_url = got["results_url"].as_str().unwrap().to_owned();
    assert!(
        results_url.starts_with(&e.base),
        "{results_url} not rewritten to {}",
        e.base
    );

    let results = e
        .http
        .get(&results_url)
        .header("x-api-key", &e.web_key)
        .send()
        .await
        .unwrap();
    assert_eq!(results.status(), 200);
    let lines = results.text().await.unwrap();
    assert_eq!(lines.lines().count(), 2);
    for l in lines.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["custom_id"].as_str().unwrap().starts_with("ticket-"));
    }

    // Another tenant cannot see, read, cancel or delete it: 404 as if it did not exist.
    for path in [
        format!("/v1/messages/batches/{id}"),
        format!("/v1/messages/batches/{id}/results"),
    ] {
        let r = get(e.email_key.clone(), path).await;
        assert_eq!(r.status(), 404);
        assert_error_shape(&r.json().await.unwrap(), "not_found_error");
    }
    let r = e
        .http
        .post(e.url(&format!("/v1/messages/batches/{id}/cancel")))
        .header("x-api-key", &e.email_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = e
        .http
        .delete(e.url(&format!("/v1/messages/batches/{id}")))
        .header("x-api-key", &e.email_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Lists are per tenant.
    let web_list: Value = get(e.web_key.clone(), "/v1/messages/batches".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(web_list["data"].as_array().unwrap().len(), 1);
    assert_eq!(web_list["data"][0]["id"], id.as_str());
    assert_eq!(web_list["first_id"], id.as_str());
    let email_list: Value = get(e.email_key.clone(), "/v1/messages/batches".into())
        .await
        .json()
        .await
        .unwrap();
    assert!(email_list["data"].as_array().unwrap().is_empty());
    assert_eq!(email_list["has_more"], false);

    // The owner deletes it; then it is gone for the owner too.
    let r = e
        .http
        .delete(e.url(&format!("/v1/messages/batches/{id}")))
        .header("x-api-key", &e.web_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = get(e.web_key.clone(), format!("/v1/messages/batches/{id}")).await;
    assert_eq!(r.status(), 404);
    let rows = e.finish().await;
    assert!(
        rows.iter()
            .any(|r| r.endpoint == "batches.create" && r.tenant == "web")
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_streams_and_flushes_the_ledger() {
    let mut e = env().await;
    let mut handles = Vec::new();
    for _ in 0..20 {
        let req = e
            .post_messages(&e.web_key, &stream_body(100))
            .header("x-mock-output-tokens", "50")
            .header("x-mock-event-interval-ms", "10");
        handles.push(tokio::spawn(async move {
            req.send().await.unwrap().text().await.unwrap()
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rows_fut = e.finish();
    let rows = rows_fut.await;
    for h in handles {
        let text = h.await.unwrap();
        assert!(text.contains("message_stop"), "stream cut by shutdown");
    }
    assert_eq!(rows.len(), 20);
    assert!(
        rows.iter()
            .all(|r| r.outcome == "ok" && r.output_tokens == 50)
    );
}

#[tokio::test]
async fn health_endpoints_answer() {
    let e = env().await;
    assert_eq!(
        e.http.get(e.url("/healthz")).send().await.unwrap().status(),
        200
    );
    // Public readiness is a status only: no member name, load or limiter detail.
    let r = e.http.get(e.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert_eq!(body, r#"{"status":"ready"}"#);
    let r = e.http.get(e.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_error_shape(&r.json().await.unwrap(), "not_found_error");
}

#[tokio::test]
async fn client_giving_up_on_a_json_call_cancels_upstream_and_is_recorded() {
    let mut e = env().await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let r = impatient
        .post(e.url("/v1/messages"))
        .header("x-api-key", &e.web_key)
        .header("x-mock-latency-ms", "3000")
        .body(SMALL)
        .send()
        .await;
    assert!(r.is_err(), "the client should have timed out");
    let mut cancelled = 0;
    for _ in 0..100 {
        cancelled = e.mock_stats().await["streams_cancelled"].as_u64().unwrap();
        if cancelled > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cancelled, 1, "the upstream call kept running");
    let rows = e.finish().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, "client_closed");
    assert_eq!(rows[0].status, 499);
}

#[tokio::test]
async fn malformed_batch_list_query_is_a_400() {
    let e = env().await;
    let r = e
        .http
        .get(e.url("/v1/messages/batches?limit=abc"))
        .header("x-api-key", &e.web_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_error_shape(&r.json().await.unwrap(), "invalid_request_error");
}
