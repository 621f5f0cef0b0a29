//! End-to-end tests of the mock over real sockets: every endpoint, the stream shapes, the cache
//! model, each fault knob, auth, recording and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sluice_mock::{MockHandle, MockOptions, spawn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn start(opts: MockOptions) -> MockHandle {
    spawn("127.0.0.1:0".parse().unwrap(), opts).await.unwrap()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

async fn call(
    mock: &MockHandle,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", mock.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

async fn get(mock: &MockHandle, path: &str) -> Reply {
    call(mock, Method::GET, path, &[], Bytes::new()).await
}

async fn post(mock: &MockHandle, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    call(mock, Method::POST, path, headers, body.to_string()).await
}

fn simple_request() -> Value {
    json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    })
}

fn assert_upstream_error(r: &Reply, status: u16, kind: &str) {
    assert_eq!(r.status.as_u16(), status, "body: {:?}", r.body);
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], kind);
    assert!(v["error"]["message"].is_string());
    assert_eq!(v["request_id"], r.header("request-id"));
    assert!(r.header("request-id").starts_with("req_mock_"));
}

/// Parses an SSE body into (event name, data JSON) pairs.
fn parse_sse(body: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(body).unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = None;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(d).unwrap());
                }
            }
            let name = name.unwrap();
            let data: Value = data.unwrap();
            assert_eq!(data["type"], name.as_str(), "event name matches data.type");
            (name, data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

/// Sends a raw HTTP/1.1 request and reads until the server closes (or `limit` elapses).
async fn raw_exchange(mock: &MockHandle, headers: &str, body: &str, limit: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(mock.addr).await.unwrap();
    let req = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        mock.addr,
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

#[tokio::test]
async fn messages_json_reply_has_the_upstream_shape() {
    let mock = start(MockOptions::default()).await;
    let body = simple_request();
    let len = body.to_string().len() as u64;
    let r = post(&mock, "/v1/messages?beta=true", &[], &body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "application/json");
    assert!(r.header("request-id").starts_with("req_mock_"));
    assert_eq!(r.header("anthropic-ratelimit-requests-limit"), "4000");
    assert_eq!(r.header("anthropic-ratelimit-tokens-remaining"), "2397000");
    let reset = r.header("anthropic-ratelimit-input-tokens-reset");
    assert!(reset.len() == 20 && reset.ends_with('Z') && reset.as_bytes()[10] == b'T');
    assert!(!r.header("anthropic-organization-id").is_empty());

    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("msg_mock_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    let u = &v["usage"];
    assert_eq!(u["input_tokens"], len / 4);
    assert_eq!(u["cache_creation_input_tokens"], 0);
    assert_eq!(u["cache_read_input_tokens"], 0);
    assert_eq!(u["cache_creation"]["ephemeral_5m_input_tokens"], 0);
    assert_eq!(u["cache_creation"]["ephemeral_1h_input_tokens"], 0);
    assert_eq!(u["output_tokens"], 10 + len % 40);
    assert_eq!(u["service_tier"], "standard");
    let words = v["content"][0]["text"].as_str().unwrap().split(' ').count() as u64;
    assert_eq!(words, 10 + len % 40, "one word per output token");

    // Ids count up.
    let v2 = post(&mock, "/v1/messages", &[], &body).await.json();
    assert_ne!(v["id"], v2["id"]);
}

#[tokio::test]
async fn output_is_capped_by_max_tokens_and_can_be_fixed() {
    let mock = start(MockOptions {
        output_tokens: Some(100),
        ..MockOptions::default()
    })
    .await;
    let mut body = simple_request();
    body["max_tokens"] = json!(7);
    let v = post(&mock, "/v1/messages", &[], &body).await.json();
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 7);

    body["max_tokens"] = json!(1000);
    let v = post(&mock, "/v1/messages", &[], &body).await.json();
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 100);

    let v = post(
        &mock,
        "/v1/messages",
        &[("x-mock-output-tokens", "42")],
        &body,
    )
    .await
    .json();
    assert_eq!(v["usage"]["output_tokens"], 42);
}

#[tokio::test]
async fn invalid_requests_get_400_in_upstream_shape() {
    let mock = start(MockOptions::default()).await;
    let r = call(&mock, Method::POST, "/v1/messages", &[], "{not json").await;
    assert_upstream_error(&r, 400, "invalid_request_error");

    let cases = [
        (
            json!({"max_tokens": 5, "messages": []}),
            "model: field required",
        ),
        (
            json!({"model": "m", "messages": []}),
            "max_tokens: field required",
        ),
        (
            json!({"model": "m", "max_tokens": 5}),
            "messages: field required",
        ),
    ];
    for (body, message) in cases {
        let r = post(&mock, "/v1/messages", &[], &body).await;
        assert_upstream_error(&r, 400, "invalid_request_error");
        assert_eq!(r.json()["error"]["message"], message);
    }
}

#[tokio::test]
async fn stream_has_the_upstream_event_sequence_and_consistent_usage() {
    let mock = start(MockOptions::default()).await;
    let mut body = simple_request();
    body["stream"] = json!(true);
    let r = post(
        &mock,
        "/v1/messages",
        &[("x-mock-output-tokens", "23")],
        &body,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").starts_with("text/event-stream"));
    assert!(r.header("request-id").starts_with("req_mock_"));
    let events = parse_sse(&r.body);
    let n = names(&events);
    let deltas = 23_usize.div_ceil(5);
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(n, expected);

    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_mock_"));
    assert_eq!(start["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["usage"]["output_tokens"], 1);
    let input = start["usage"]["input_tokens"].as_u64().unwrap();
    assert_eq!(input, body.to_string().len() as u64 / 4);
    assert!(start["usage"]["cache_read_input_tokens"].is_u64());

    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    // Deltas concatenate into the text, as upstream.
    assert_eq!(text.split(' ').count(), 23);
    assert!(!text.contains("  "));

    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 23);
    assert_eq!(delta["usage"]["input_tokens"], input);
}

#[tokio::test]
async fn stream_capped_by_max_tokens_says_so() {
    let mock = start(MockOptions::default()).await;
    let body = json!({"model": "m", "max_tokens": 3, "stream": true, "messages": [{"role":"user","content":"hi"}]});
    let events = parse_sse(&post(&mock, "/v1/messages", &[], &body).await.body);
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta["usage"]["output_tokens"], 3);
    assert_eq!(
        names(&events)
            .iter()
            .filter(|n| **n == "content_block_delta")
            .count(),
        1
    );
}

fn cached_request(system_text: &str, ttl: Option<&str>) -> Value {
    let mut cc = json!({"type": "ephemeral"});
    if let Some(ttl) = ttl {
        cc["ttl"] = json!(ttl);
    }
    json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": system_text, "cache_control": cc}],
        "messages": [{"role": "user", "content": "Question?"}],
    })
}

/// The tokens of the cached prefix (the system block), as the mock counts them: a quarter of
/// the block's canonical bytes, its `cache_control` marker left out.
fn prefix_tokens(body: &Value) -> u64 {
    let mut block = body["system"][0].clone();
    block.as_object_mut().unwrap().remove("cache_control");
    block.to_string().len() as u64 / 4
}

#[tokio::test]
async fn cache_prefix_is_written_then_read() {
    let mock = start(MockOptions::default()).await;
    let long = "You are a careful assistant. ".repeat(200);
    let body = cached_request(&long, None);
    let total = body.to_string().len() as u64 / 4;
    let cached = prefix_tokens(&body);

    let u = post(&mock, "/v1/messages", &[], &body).await.json()["usage"].clone();
    assert_eq!(u["cache_creation_input_tokens"], cached);
    assert_eq!(u["cache_creation"]["ephemeral_5m_input_tokens"], cached);
    assert_eq!(u["cache_creation"]["ephemeral_1h_input_tokens"], 0);
    assert_eq!(u["cache_read_input_tokens"], 0);
    assert_eq!(u["input_tokens"], total - cached);

    let u = post(&mock, "/v1/messages", &[], &body).await.json()["usage"].clone();
    assert_eq!(u["cache_creation_input_tokens"], 0);
    assert_eq!(u["cache_read_input_tokens"], cached);
    assert_eq!(u["input_tokens"], total - cached);

    // Same prefix, other parameters (a stream, a different question): still a read.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["messages"][0]["content"] = json!("Another question?");
    let events = parse_sse(&post(&mock, "/v1/messages", &[], &streamed).await.body);
    let usage = &events[0].1["message"]["usage"];
    assert_eq!(usage["cache_read_input_tokens"], prefix_tokens(&streamed));
    assert_eq!(usage["cache_creation_input_tokens"], 0);

    // A different prefix is a new write, with the 1h TTL when asked.
    let other = cached_request(&"Another system prompt. ".repeat(200), Some("1h"));
    let u = post(&mock, "/v1/messages", &[], &other).await.json()["usage"].clone();
    let cached = prefix_tokens(&other);
    assert_eq!(u["cache_creation_input_tokens"], cached);
    assert_eq!(u["cache_creation"]["ephemeral_1h_input_tokens"], cached);
    assert_eq!(u["cache_creation"]["ephemeral_5m_input_tokens"], 0);
}

#[tokio::test]
async fn cache_breakpoints_beyond_the_upstream_limits_are_a_400() {
    let mock = start(MockOptions::default()).await;
    let marked = json!({"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}});
    let mut body = simple_request();
    body["messages"][0]["content"] = json!([marked, marked, marked, marked, marked]);
    let r = post(&mock, "/v1/messages", &[], &body).await;
    assert_upstream_error(&r, 400, "invalid_request_error");
    assert_eq!(
        r.json()["error"]["message"],
        "A maximum of 4 blocks with cache_control may be provided. Found 5."
    );
    // Four are fine, and the automatic breakpoint (top level) is accepted.
    body["messages"][0]["content"] = json!([marked, marked, marked, marked]);
    assert_eq!(post(&mock, "/v1/messages", &[], &body).await.status, 200);
    let mut auto = simple_request();
    auto["cache_control"] = json!({"type": "ephemeral"});
    assert_eq!(post(&mock, "/v1/messages", &[], &auto).await.status, 200);
}

#[tokio::test]
async fn count_tokens_uses_the_same_estimate() {
    let mock = start(MockOptions::default()).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "Hello there"}]});
    let r = post(&mock, "/v1/messages/count_tokens?beta=true", &[], &body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"input_tokens": body.to_string().len() / 4})
    );
    let r = post(
        &mock,
        "/v1/messages/count_tokens",
        &[],
        &json!({"model": "m"}),
    )
    .await;
    assert_upstream_error(&r, 400, "invalid_request_error");
}

#[tokio::test]
async fn models_list_pages_and_single_model() {
    let mock = start(MockOptions::default()).await;
    let v = get(&mock, "/v1/models").await.json();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids[..3],
        [
            "claude-opus-4-5-20251101",
            "claude-sonnet-4-5-20250929",
            "claude-haiku-4-5-20251001"
        ]
    );
    assert_eq!(v["first_id"], ids[0]);
    assert_eq!(v["last_id"], *ids.last().unwrap());
    assert_eq!(v["has_more"], false);
    assert_eq!(v["data"][0]["type"], "model");
    assert_eq!(v["data"][0]["display_name"], "Claude Opus 4.5");

    let p1 = get(&mock, "/v1/models?limit=2&beta=true").await.json();
    assert_eq!(p1["data"].as_array().unwrap().len(), 2);
    assert_eq!(p1["has_more"], true);
    let after = p1["last_id"].as_str().unwrap();
    let p2 = get(&mock, &format!("/v1/models?limit=2&after_id={after}"))
        .await
        .json();
    assert_eq!(p2["first_id"], ids[2]);
    let before = p2["first_id"].as_str().unwrap();
    let back = get(&mock, &format!("/v1/models?limit=2&before_id={before}"))
        .await
        .json();
    assert_eq!(back["data"], p1["data"]);
    assert_eq!(back["has_more"], false);

    let r = get(&mock, "/v1/models?limit=0").await;
    assert_upstream_error(&r, 400, "invalid_request_error");

    let m = get(&mock, "/v1/models/claude-haiku-4-5-20251001").await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.json()["id"], "claude-haiku-4-5-20251001");
    let m = get(&mock, "/v1/models/claude-haiku-4-5?beta=true").await;
    assert_eq!(m.json()["id"], "claude-haiku-4-5-20251001");
    let r = get(&mock, "/v1/models/claude-nonexistent").await;
    assert_upstream_error(&r, 404, "not_found_error");
}

/// The body of `batch_create_request.json`.
fn batch_body() -> Value {
    json!({"requests": [
        {"custom_id": "ticket-0001", "params": {"model": "claude-haiku-4-5-20251001", "max_tokens": 256, "messages": [{"role": "user", "content": "Summarise ticket 1: printer on floor 3 is jammed again."}]}},
        {"custom_id": "ticket-0002", "params": {"model": "claude-haiku-4-5-20251001", "max_tokens": 256, "messages": [{"role": "user", "content": "Summarise ticket 2: VPN drops every 20 minutes."}]}}
    ]})
}

#[tokio::test]
async fn batches_lifecycle() {
    let mock = start(MockOptions::default()).await;
    let host = [("host", "gateway.example:8080")];

    let r = post(&mock, "/v1/messages/batches?beta=true", &[], &batch_body()).await;
    assert_eq!(r.status, StatusCode::OK);
    let b = r.json();
    let id = b["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("msgbatch_mock_"));
    assert_eq!(b["type"], "message_batch");
    assert_eq!(b["processing_status"], "in_progress");
    assert_eq!(
        b["request_counts"],
        json!({"processing": 2, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0})
    );
    assert_eq!(b["ended_at"], Value::Null);
    assert_eq!(b["results_url"], Value::Null);
    assert!(b["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(b["expires_at"].as_str().unwrap().ends_with('Z'));

    // Deleting a batch that has not ended is refused.
    let r = call(
        &mock,
        Method::DELETE,
        &format!("/v1/messages/batches/{id}"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_upstream_error(&r, 400, "invalid_request_error");

    // The next fetch sees it ended, with a results URL on the caller's host.
    let r = call(
        &mock,
        Method::GET,
        &format!("/v1/messages/batches/{id}"),
        &host,
        Bytes::new(),
    )
    .await;
    let b = r.json();
    assert_eq!(b["processing_status"], "ended");
    assert!(b["ended_at"].is_string());
    assert_eq!(b["request_counts"]["succeeded"], 2);
    assert_eq!(b["request_counts"]["processing"], 0);
    assert_eq!(
        b["results_url"],
        format!("http://gateway.example:8080/v1/messages/batches/{id}/results")
    );

    let r = get(&mock, &format!("/v1/messages/batches/{id}/results")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "application/x-jsonl");
    let lines: Vec<Value> = std::str::from_utf8(&r.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let mut custom: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    custom.sort_unstable();
    assert_eq!(custom, ["ticket-0001", "ticket-0002"]);
    for l in &lines {
        assert_eq!(l["result"]["type"], "succeeded");
        let m = &l["result"]["message"];
        assert_eq!(m["type"], "message");
        assert_eq!(m["model"], "claude-haiku-4-5-20251001");
        assert!(m["usage"]["input_tokens"].as_u64().unwrap() >= 1);
        assert!(m["usage"]["output_tokens"].as_u64().unwrap() >= 1);
        assert_eq!(m["usage"]["service_tier"], "batch");
    }

    // A second batch, canceled.
    let id2 = post(&mock, "/v1/messages/batches", &[], &batch_body())
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = post(
        &mock,
        &format!("/v1/messages/batches/{id2}/cancel"),
        &[],
        &json!({}),
    )
    .await
    .json();
    assert_eq!(c["processing_status"], "canceling");
    assert!(c["cancel_initiated_at"].is_string());
    let c = get(&mock, &format!("/v1/messages/batches/{id2}"))
        .await
        .json();
    assert_eq!(c["processing_status"], "ended");
    assert_eq!(c["request_counts"]["canceled"], 2);
    assert_eq!(c["request_counts"]["succeeded"], 0);
    let res = get(&mock, &format!("/v1/messages/batches/{id2}/results")).await;
    for l in std::str::from_utf8(&res.body).unwrap().lines() {
        let l: Value = serde_json::from_str(l).unwrap();
        assert_eq!(l["result"]["type"], "canceled");
    }

    // The list is newest first and paged.
    let list = get(&mock, "/v1/messages/batches").await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(list["first_id"], id2.as_str());
    assert_eq!(list["last_id"], id.as_str());
    assert_eq!(list["has_more"], false);
    let p1 = get(&mock, "/v1/messages/batches?limit=1").await.json();
    assert_eq!(p1["first_id"], id2.as_str());
    assert_eq!(p1["has_more"], true);
    let p2 = get(
        &mock,
        &format!("/v1/messages/batches?limit=1&after_id={id2}"),
    )
    .await
    .json();
    assert_eq!(p2["first_id"], id.as_str());
    assert_eq!(p2["has_more"], false);
    let back = get(
        &mock,
        &format!("/v1/messages/batches?limit=1&before_id={id}"),
    )
    .await
    .json();
    assert_eq!(back["first_id"], id2.as_str());

    // Delete, then it is gone.
    let d = call(
        &mock,
        Method::DELETE,
        &format!("/v1/messages/batches/{id}"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.json(), json!({"id": id, "type": "message_batch_deleted"}));
    for path in [
        format!("/v1/messages/batches/{id}"),
        format!("/v1/messages/batches/{id}/results"),
        "/v1/messages/batches/msgbatch_nope".to_owned(),
    ] {
        assert_upstream_error(&get(&mock, &path).await, 404, "not_found_error");
    }
    let r = post(
        &mock,
        "/v1/messages/batches/msgbatch_mock_999/cancel",
        &[],
        &json!({}),
    )
    .await;
    assert_upstream_error(&r, 404, "not_found_error");
}

#[tokio::test]
async fn batch_processing_delay_and_invalid_requests() {
    let mock = start(MockOptions {
        batch_processing: Duration::from_millis(300),
        ..MockOptions::default()
    })
    .await;
    let body = json!({"requests": [
        {"custom_id": "ok", "params": {"model": "m", "max_tokens": 5, "messages": []}},
        {"custom_id": "bad", "params": {"model": "m", "max_tokens": 0, "messages": []}},
    ]});
    let id = post(&mock, "/v1/messages/batches", &[], &body).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = get(&mock, &format!("/v1/messages/batches/{id}"))
        .await
        .json();
    assert_eq!(b["processing_status"], "in_progress");
    let r = get(&mock, &format!("/v1/messages/batches/{id}/results")).await;
    assert_upstream_error(&r, 400, "invalid_request_error");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let b = get(&mock, &format!("/v1/messages/batches/{id}"))
        .await
        .json();
    assert_eq!(b["processing_status"], "ended");
    assert_eq!(b["request_counts"]["succeeded"], 1);
    assert_eq!(b["request_counts"]["errored"], 1);
    let res = get(&mock, &format!("/v1/messages/batches/{id}/results")).await;
    let bad = std::str::from_utf8(&res.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["custom_id"] == "bad")
        .unwrap();
    assert_eq!(bad["result"]["type"], "errored");
    assert_eq!(bad["result"]["error"]["type"], "error");
    assert_eq!(
        bad["result"]["error"]["error"]["type"],
        "invalid_request_error"
    );

    for body in [
        json!({}),
        json!({"requests": []}),
        json!({"requests": [{"custom_id": "a"}]}),
    ] {
        let r = post(&mock, "/v1/messages/batches", &[], &body).await;
        assert_upstream_error(&r, 400, "invalid_request_error");
    }
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let mock = start(MockOptions::default()).await;
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/v1/messages"),
        (Method::POST, "/v1/complete"),
        (Method::PUT, "/v1/models"),
        (Method::GET, "/_mock/nothing"),
    ] {
        let r = call(&mock, method, path, &[], Bytes::new()).await;
        assert_upstream_error(&r, 404, "not_found_error");
    }
}

#[tokio::test]
async fn runtime_fault_switches_every_call_until_cleared() {
    let mock = start(MockOptions::default()).await;
    assert_eq!(
        get(&mock, "/_mock/faults").await.json(),
        json!({"status": null})
    );
    let r = post(&mock, "/_mock/faults", &[], &json!({"status": 529})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"status": 529}));
    assert_eq!(
        get(&mock, "/_mock/faults").await.json(),
        json!({"status": 529})
    );

    // Every call, streamed or not, on any endpoint, whatever its own headers ask for.
    let mut streamed = simple_request();
    streamed["stream"] = json!(true);
    for req in [simple_request(), streamed] {
        let r = post(&mock, "/v1/messages", &[], &req).await;
        assert_upstream_error(&r, 529, "overloaded_error");
    }
    let r = post(
        &mock,
        "/v1/messages",
        &[("x-mock-status", "200")],
        &simple_request(),
    )
    .await;
    assert_upstream_error(&r, 529, "overloaded_error");
    let r = get(&mock, "/v1/models").await;
    assert_upstream_error(&r, 529, "overloaded_error");

    // Cleared: normal replies again.
    let r = post(&mock, "/_mock/faults", &[], &json!({"status": null})).await;
    assert_eq!(r.json(), json!({"status": null}));
    assert_eq!(
        post(&mock, "/v1/messages", &[], &simple_request())
            .await
            .status,
        StatusCode::OK
    );
    post(&mock, "/_mock/faults", &[], &json!({"status": 503})).await;
    post(&mock, "/_mock/faults", &[], &json!({"status": 200})).await;
    assert_eq!(
        post(&mock, "/v1/messages", &[], &simple_request())
            .await
            .status,
        StatusCode::OK
    );

    // Bad values are a 400 and change nothing.
    for bad in [
        json!({"status": 302}),
        json!({"status": "529"}),
        json!({}),
        json!([1]),
    ] {
        let r = post(&mock, "/_mock/faults", &[], &bad).await;
        assert_upstream_error(&r, 400, "invalid_request_error");
    }
    assert_eq!(
        get(&mock, "/_mock/faults").await.json(),
        json!({"status": null})
    );
    // Switching faults is not an upstream call.
    assert_eq!(mock.stats().requests, 6);
}

#[tokio::test]
async fn injected_statuses_use_the_upstream_error_bodies() {
    let mock = start(MockOptions::default()).await;
    let cases = [
        ("400", "invalid_request_error"),
        ("401", "authentication_error"),
        ("403", "permission_error"),
        ("404", "not_found_error"),
        ("413", "request_too_large"),
        ("429", "rate_limit_error"),
        ("500", "api_error"),
        ("504", "timeout_error"),
        ("529", "overloaded_error"),
    ];
    for (status, kind) in cases {
        let r = post(
            &mock,
            "/v1/messages",
            &[("x-mock-status", status)],
            &simple_request(),
        )
        .await;
        assert_upstream_error(&r, status.parse().unwrap(), kind);
        assert_eq!(r.headers.contains_key("retry-after"), status == "429");
        assert_eq!(r.header("anthropic-ratelimit-requests-limit"), "4000");
    }
    assert_eq!(
        post(
            &mock,
            "/v1/messages",
            &[("x-mock-status", "429")],
            &simple_request()
        )
        .await
        .header("retry-after"),
        "1"
    );
    // Also on other endpoints.
    let r = call(
        &mock,
        Method::GET,
        "/v1/models",
        &[("x-mock-status", "529")],
        Bytes::new(),
    )
    .await;
    assert_upstream_error(&r, 529, "overloaded_error");
    // Typos and bad values are loud.
    let r = post(
        &mock,
        "/v1/messages",
        &[("x-mock-statsu", "500")],
        &simple_request(),
    )
    .await;
    assert_upstream_error(&r, 400, "invalid_request_error");
    let r = post(
        &mock,
        "/v1/messages",
        &[("x-mock-status", "abc")],
        &simple_request(),
    )
    .await;
    assert_upstream_error(&r, 400, "invalid_request_error");
}

#[tokio::test]
async fn latency_knobs_delay_the_headers() {
    let mock = start(MockOptions {
        latency: Duration::from_millis(100),
        ..MockOptions::default()
    })
    .await;
    let t = Instant::now();
    let r = post(
        &mock,
        "/v1/messages",
        &[("x-mock-latency-ms", "150")],
        &simple_request(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn event_interval_paces_the_stream() {
    let mock = start(MockOptions::default()).await;
    let mut body = simple_request();
    body["stream"] = json!(true);
    let t = Instant::now();
    let r = post(
        &mock,
        "/v1/messages",
        &[
            ("x-mock-event-interval-ms", "20"),
            ("x-mock-output-tokens", "5"),
        ],
        &body,
    )
    .await;
    // 7 events, 6 gaps.
    assert_eq!(parse_sse(&r.body).len(), 7);
    assert!(
        t.elapsed() >= Duration::from_millis(120),
        "{:?}",
        t.elapsed()
    );

    let paced = start(MockOptions {
        event_interval: Duration::from_millis(20),
        ..MockOptions::default()
    })
    .await;
    let t = Instant::now();
    post(
        &paced,
        "/v1/messages",
        &[("x-mock-output-tokens", "5")],
        &body,
    )
    .await;
    assert!(
        t.elapsed() >= Duration::from_millis(120),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn stream_error_after_k_events() {
    let mock = start(MockOptions::default()).await;
    let mut body = simple_request();
    body["stream"] = json!(true);
    let r = post(
        &mock,
        "/v1/messages",
        &[("x-mock-stream-error-after", "4")],
        &body,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let events = parse_sse(&r.body);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(events[4].1["error"]["type"], "overloaded_error");
    // K past the end still injects the error, in place of message_stop.
    let r = post(
        &mock,
        "/v1/messages",
        &[("x-mock-stream-error-after", "1000")],
        &body,
    )
    .await;
    let events = parse_sse(&r.body);
    assert_eq!(events.last().unwrap().0, "error");
    assert!(!names(&events).contains(&"message_stop"));
}

#[tokio::test]
async fn drop_after_cuts_the_connection() {
    let mock = start(MockOptions::default()).await;
    let mut body = simple_request();
    body["stream"] = json!(true);
    let body = body.to_string();

    let raw = raw_exchange(
        &mock,
        "x-mock-drop-after: 2\r\n",
        &body,
        Duration::from_secs(5),
    )
    .await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"));
    assert!(text.contains("event: message_start"));
    assert!(text.contains("event: content_block_start"));
    assert!(!text.contains("event: ping"));
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "no chunked terminator: {text}"
    );

    // A hyper client sees an incomplete body.
    let req = Request::post(format!("{}/v1/messages", mock.url()))
        .header("x-mock-drop-after", "3")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.into_body().collect().await.is_err());

    // Non-streaming: K = 0 closes without any reply, K >= 1 cuts the JSON body.
    let plain = simple_request().to_string();
    let raw = raw_exchange(
        &mock,
        "x-mock-drop-after: 0\r\n",
        &plain,
        Duration::from_secs(5),
    )
    .await;
    assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
    let req = Request::post(format!("{}/v1/messages", mock.url()))
        .header("x-mock-drop-after", "1")
        .body(Full::new(Bytes::from(plain)))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.into_body().collect().await.is_err());
    // Intended cuts are not client cancellations.
    assert_eq!(mock.stats().streams_cancelled, 0);
}

#[tokio::test]
async fn hang_never_finishes_and_counts_a_cancel_when_the_client_leaves() {
    let mock = start(MockOptions::default()).await;
    let mut body = simple_request();
    body["stream"] = json!(true);

    // Streaming: headers arrive, the body never does.
    let req = Request::post(format!("{}/v1/messages", mock.url()))
        .header("x-mock-hang", "1")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(2), client().request(req))
        .await
        .expect("headers arrive")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body_stream = resp.into_body();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), body_stream.frame())
            .await
            .is_err()
    );
    drop(body_stream);
    wait_for(|| mock.stats().streams_cancelled == 1).await;

    // Non-streaming: not even headers.
    let raw = raw_exchange(
        &mock,
        "x-mock-hang: yes\r\n",
        &simple_request().to_string(),
        Duration::from_millis(300),
    )
    .await;
    assert!(raw.is_empty());
    wait_for(|| mock.stats().streams_cancelled == 2).await;
}

async fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached in 2 s");
}

#[tokio::test]
async fn client_disconnect_mid_stream_is_counted() {
    let mock = start(MockOptions::default()).await;
    let mut body = simple_request();
    body["stream"] = json!(true);
    let body = body.to_string();
    let mut s = TcpStream::connect(mock.addr).await.unwrap();
    let req = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nx-mock-event-interval-ms: 50\r\nx-mock-output-tokens: 100\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("HTTP/1.1 200"));
    drop(s);
    wait_for(|| mock.stats().streams_cancelled == 1).await;

    // Via the stats endpoint too; a completed stream does not count.
    post(
        &mock,
        "/v1/messages",
        &[],
        &serde_json::from_str::<Value>(&body).unwrap(),
    )
    .await;
    let stats = get(&mock, "/_mock/stats").await.json();
    assert_eq!(stats["streams_cancelled"], 1);
    assert_eq!(stats["messages"], 2);
    assert_eq!(stats["requests"], 2);
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let mock = start(MockOptions {
        api_key: Some("sk-upstream".into()),
        ..MockOptions::default()
    })
    .await;
    let r = post(&mock, "/v1/messages", &[], &simple_request()).await;
    assert_upstream_error(&r, 401, "authentication_error");
    let r = post(
        &mock,
        "/v1/messages",
        &[("x-api-key", "wrong")],
        &simple_request(),
    )
    .await;
    assert_upstream_error(&r, 401, "authentication_error");
    let r = post(
        &mock,
        "/v1/messages",
        &[("x-api-key", "sk-upstream")],
        &simple_request(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = post(
        &mock,
        "/v1/messages",
        &[("authorization", "Bearer sk-upstream")],
        &simple_request(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(&mock, Method::GET, "/v1/models", &[], Bytes::new()).await;
    assert_upstream_error(&r, 401, "authentication_error");
    // Introspection needs no key.
    assert_eq!(get(&mock, "/_mock/stats").await.status, StatusCode::OK);
    assert_eq!(get(&mock, "/_mock/requests").await.status, StatusCode::OK);
}

#[tokio::test]
async fn records_requests_for_inspection() {
    let mock = start(MockOptions {
        record: true,
        ratelimit_headers: false,
        ..MockOptions::default()
    })
    .await;
    let r = post(
        &mock,
        "/v1/messages?beta=true",
        &[("X-Api-Key", "k1"), ("anthropic-version", "2023-06-01")],
        &simple_request(),
    )
    .await;
    assert!(!r.headers.contains_key("anthropic-ratelimit-requests-limit"));
    call(
        &mock,
        Method::POST,
        "/v1/messages/count_tokens",
        &[],
        vec![0xff_u8, 0x00, 0x10],
    )
    .await;

    let list = get(&mock, "/_mock/requests").await.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let first = &list[0];
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/v1/messages");
    assert_eq!(first["query"], "beta=true");
    assert_eq!(first["headers"]["x-api-key"], "k1");
    assert_eq!(first["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(
        serde_json::from_str::<Value>(first["body"].as_str().unwrap()).unwrap(),
        simple_request()
    );
    assert_eq!(list[1]["body_b64"], "/wAQ");
    assert_eq!(list[1]["query"], Value::Null);

    let rec = mock.recorded();
    assert_eq!(rec.len(), 2);
    assert_eq!(rec[0].header("X-API-KEY").as_deref(), Some("k1"));
    assert_eq!(rec[0].json().unwrap(), simple_request());

    let r = call(&mock, Method::DELETE, "/_mock/requests", &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(get(&mock, "/_mock/requests").await.json(), json!([]));

    // Without `record`, nothing is kept.
    let quiet = start(MockOptions::default()).await;
    post(&quiet, "/v1/messages", &[], &simple_request()).await;
    assert!(quiet.recorded().is_empty());
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let mock = start(MockOptions::default()).await;
    let c = client();
    for _ in 0..50 {
        let req = Request::post(format!("{}/v1/messages", mock.url()))
            .body(Full::new(Bytes::from(simple_request().to_string())))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(mock.stats().messages, 50);
}

#[tokio::test]
async fn spawn_shuts_down_on_request_and_on_drop() {
    let mock = start(MockOptions::default()).await;
    let addr = mock.addr;
    assert_eq!(get(&mock, "/v1/models").await.status, StatusCode::OK);
    // An open, hanging stream must not hold the shutdown forever.
    let mut hanging = TcpStream::connect(addr).await.unwrap();
    let body = json!({"model":"m","max_tokens":5,"stream":true,"messages":[]}).to_string();
    hanging
        .write_all(
            format!(
                "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-mock-hang: 1\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), mock.shutdown())
        .await
        .expect("shutdown finishes")
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());

    let dropped = start(MockOptions::default()).await;
    let addr = dropped.addr;
    drop(dropped);
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener closes after the handle is dropped");
}

#[tokio::test]
async fn serve_runs_until_its_shutdown_future_completes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sluice_mock::serve(
        listener,
        MockOptions::default(),
        async move {
            let _ = rx.await;
        },
    ));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200"));
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}
