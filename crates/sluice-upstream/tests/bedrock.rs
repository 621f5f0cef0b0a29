//! End to end against the mock's Bedrock routes: requests built and signed by [`Bedrock::prepare`],
//! sent over a real socket, replies read back through [`SseFromEventStream`] and
//! [`anthropic_error`].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sluice_core::SecretString;
use sluice_mock::{MockHandle, MockOptions, spawn};
use sluice_upstream::bedrock::{Bedrock, BedrockOptions, SseFromEventStream, anthropic_error};

const AKID: &str = "AKIAMOCKMEMBER1";
const SECRET: &str = "mock/secret+key";
const MODEL: &str = "anthropic.claude-sonnet-4-5-20250929-v1:0";

async fn start(credentials: bool) -> MockHandle {
    let opts = MockOptions {
        aws_credentials: credentials.then(|| (AKID.to_owned(), SECRET.to_owned())),
        record: true,
        ..MockOptions::default()
    };
    spawn("127.0.0.1:0".parse().unwrap(), opts).await.unwrap()
}

fn member(mock: &MockHandle, akid: &str, secret: &str, token: Option<&str>) -> Bedrock {
    Bedrock::new(BedrockOptions {
        region: "us-west-2".into(),
        endpoint: Some(mock.url()),
        access_key_id: akid.into(),
        secret_access_key: SecretString::new(secret),
        session_token: token.map(SecretString::new),
    })
    .unwrap()
}

fn client_headers(extra: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("anthropic-version", "2023-06-01".parse().unwrap());
    h.insert("content-type", "application/json".parse().unwrap());
    for (k, v) in extra {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn messages_body(stream: bool) -> Vec<u8> {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "stream": stream,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    })
    .to_string()
    .into_bytes()
}

async fn send(req: Request<Bytes>) -> Response<Incoming> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    client.request(req.map(Full::new)).await.unwrap()
}

async fn call(
    b: &Bedrock,
    stream: bool,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Response<Incoming> {
    let req = b
        .prepare(
            MODEL,
            stream,
            &client_headers(extra),
            body,
            SystemTime::now(),
        )
        .unwrap();
    send(req).await
}

/// The Anthropic view of an error reply.
async fn mapped_error(resp: Response<Incoming>) -> (StatusCode, Value) {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let (status, body) = anthropic_error(status, &headers, &body);
    (status, serde_json::from_slice(&body).unwrap())
}

/// Parses an SSE body into (event name, data JSON) pairs, checking each event's framing.
fn parse_sse(body: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"), "{text}");
    text.split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str(), "event name matches data.type");
            (name, data)
        })
        .collect()
}

async fn sse_of(resp: Response<Incoming>) -> Vec<(String, Value)> {
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let body = SseFromEventStream::new(resp.into_body())
        .collect()
        .await
        .unwrap()
        .to_bytes();
    parse_sse(&body)
}

#[tokio::test]
async fn invoke_returns_the_message_with_usage() {
    let mock = start(true).await;
    let b = member(&mock, AKID, SECRET, None);
    let body = messages_body(false);
    let resp = call(
        &b,
        false,
        &[
            ("anthropic-beta", "b-one, b-two"),
            ("x-mock-output-tokens", "7"),
            ("user-agent", "sluice-test"),
        ],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["usage"]["output_tokens"], 7);
    assert_eq!(
        v["content"][0]["text"].as_str().unwrap().split(' ').count(),
        7
    );

    // What the mock received: Bedrock's body (a quarter of its bytes is the input estimate).
    let rec = mock.recorded().pop().unwrap();
    assert_eq!(
        rec.path,
        "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"
    );
    let sent = rec.json().unwrap();
    assert_eq!(sent["anthropic_version"], "bedrock-2023-05-31");
    assert_eq!(sent["anthropic_beta"], json!(["b-one", "b-two"]));
    assert!(sent.get("model").is_none() && sent.get("stream").is_none());
    assert_eq!(sent["max_tokens"], 1024);
    assert_eq!(
        v["usage"]["input_tokens"],
        (rec.body.len() / 4) as u64,
        "input tokens follow the body Bedrock received"
    );
    assert_eq!(
        h["x-amzn-bedrock-input-token-count"],
        v["usage"]["input_tokens"].to_string().as_str()
    );
    assert_eq!(h["x-amzn-bedrock-output-token-count"], "7");
    assert!(h.contains_key("x-amzn-requestid"));
    assert!(rec.header("anthropic-version").is_none());
    assert!(rec.header("anthropic-beta").is_none());
    assert_eq!(rec.header("user-agent").unwrap(), "sluice-test");
    assert!(
        rec.header("authorization")
            .unwrap()
            .starts_with(&format!("AWS4-HMAC-SHA256 Credential={AKID}/"))
    );

    let stats = mock.stats();
    assert_eq!((stats.requests, stats.messages), (1, 1));
    assert_eq!(mock.key_requests(AKID), 1);
}

#[tokio::test]
async fn stream_transcodes_to_anthropic_sse() {
    let mock = start(true).await;
    let b = member(&mock, AKID, SECRET, None);
    // Paced events arrive in separate reads, so frames cross body chunk boundaries for real.
    let resp = call(
        &b,
        true,
        &[
            ("x-mock-output-tokens", "12"),
            ("x-mock-event-interval-ms", "2"),
        ],
        &messages_body(true),
    )
    .await;
    let events = sse_of(resp).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start = &events[0].1["message"];
    assert_eq!(start["model"], MODEL);
    assert!(start["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(events[6].1["usage"]["output_tokens"], 12);
    assert_eq!(events[6].1["delta"]["stop_reason"], "end_turn");
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text.split(' ').count(), 12);
    assert_eq!(
        mock.recorded().pop().unwrap().header("accept").unwrap(),
        "application/vnd.amazon.eventstream"
    );
}

#[tokio::test]
async fn session_tokens_are_signed_and_verified() {
    let mock = start(true).await;
    let b = member(&mock, AKID, SECRET, Some("FwoGZXIvYXdzEBYaDmock//token=="));
    let resp = call(&b, false, &[], &messages_body(false)).await;
    assert_eq!(resp.status(), 200);
    let rec = mock.recorded().pop().unwrap();
    assert_eq!(
        rec.header("x-amz-security-token").unwrap(),
        "FwoGZXIvYXdzEBYaDmock//token=="
    );
}

#[tokio::test]
async fn bad_signatures_are_permission_errors() {
    let mock = start(true).await;
    for b in [
        member(&mock, AKID, "wrong secret", None),
        member(&mock, "AKIAOTHER", SECRET, None),
    ] {
        let resp = call(&b, false, &[], &messages_body(false)).await;
        assert_eq!(resp.status(), 403);
        assert!(
            resp.headers()["x-amzn-errortype"]
                .to_str()
                .unwrap()
                .starts_with("InvalidSignatureException")
        );
        let (status, v) = mapped_error(resp).await;
        assert_eq!(status, 403);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "permission_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("The request signature we calculated does not match")
        );
    }

    // A body changed after signing no longer matches.
    let good = member(&mock, AKID, SECRET, None);
    let mut req = good
        .prepare(
            MODEL,
            false,
            &HeaderMap::new(),
            &messages_body(false),
            SystemTime::now(),
        )
        .unwrap();
    let mut tampered = req.body().to_vec();
    tampered.extend_from_slice(b" ");
    *req.body_mut() = Bytes::from(tampered);
    assert_eq!(send(req).await.status(), 403);

    // So does a path for another model.
    let mut req = good
        .prepare(
            MODEL,
            false,
            &HeaderMap::new(),
            &messages_body(false),
            SystemTime::now(),
        )
        .unwrap();
    *req.uri_mut() = req
        .uri()
        .to_string()
        .replace("v1%3A0", "v2%3A0")
        .parse()
        .unwrap();
    assert_eq!(send(req).await.status(), 403);

    // No credentials at all.
    let mut req = good
        .prepare(MODEL, false, &HeaderMap::new(), b"{}", SystemTime::now())
        .unwrap();
    req.headers_mut().remove("authorization");
    let (status, v) = mapped_error(send(req).await).await;
    assert_eq!(
        (status.as_u16(), v["error"]["type"].as_str()),
        (403, Some("permission_error"))
    );
}

#[tokio::test]
async fn injected_statuses_map_to_anthropic_errors() {
    let mock = start(true).await;
    let b = member(&mock, AKID, SECRET, None);
    for (knob, bedrock_status, status, kind) in [
        ("429", 429, 429, "rate_limit_error"),
        ("529", 503, 529, "overloaded_error"),
        ("503", 503, 529, "overloaded_error"),
        ("400", 400, 400, "invalid_request_error"),
        ("403", 403, 403, "permission_error"),
        ("404", 404, 404, "not_found_error"),
        ("408", 408, 408, "api_error"),
        ("500", 500, 500, "api_error"),
    ] {
        for stream in [false, true] {
            let resp = call(
                &b,
                stream,
                &[("x-mock-status", knob)],
                &messages_body(stream),
            )
            .await;
            assert_eq!(resp.status(), bedrock_status, "{knob}");
            let (s, v) = mapped_error(resp).await;
            assert_eq!(
                (s.as_u16(), v["error"]["type"].as_str().unwrap()),
                (status, kind),
                "{knob}"
            );
        }
    }
    // fail-first: the retry of the same body succeeds.
    let body = messages_body(false);
    let first = call(&b, false, &[("x-mock-fail-first", "1")], &body).await;
    assert_eq!(mapped_error(first).await.0, 529);
    let again = call(&b, false, &[("x-mock-fail-first", "1")], &body).await;
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn mid_stream_exception_becomes_an_sse_error_event() {
    let mock = start(true).await;
    let b = member(&mock, AKID, SECRET, None);
    let resp = call(
        &b,
        true,
        &[
            ("x-mock-stream-error-after", "3"),
            ("x-mock-output-tokens", "20"),
        ],
        &messages_body(true),
    )
    .await;
    let events = sse_of(resp).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(events[3].1["error"]["type"], "overloaded_error");
    assert!(events[3].1["error"]["message"].is_string());
}

#[tokio::test]
async fn a_dropped_stream_is_an_error_after_the_events_before_it() {
    let mock = start(true).await;
    let b = member(&mock, AKID, SECRET, None);
    let resp = call(
        &b,
        true,
        &[("x-mock-drop-after", "2")],
        &messages_body(true),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = SseFromEventStream::new(resp.into_body());
    let mut got = Vec::new();
    let err = loop {
        match body.frame().await {
            Some(Ok(f)) => got.extend_from_slice(&f.into_data().unwrap()),
            Some(Err(e)) => break e,
            None => panic!(
                "the stream ended cleanly: {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    };
    let names: Vec<String> = parse_sse(&got).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["message_start", "content_block_start"]);
    assert!(!err.to_string().is_empty());
}

#[tokio::test]
async fn prompt_cache_is_per_access_key() {
    // No signature check, so any access key id is accepted.
    let mock = start(false).await;
    let body = json!({
        "model": "claude",
        "max_tokens": 100,
        // Past the 1,024-token minimum below which the upstream writes nothing.
        "system": [{"type": "text", "text": "You are terse. ".repeat(400),
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string();
    let usage = |resp: Response<Incoming>| async move {
        assert_eq!(resp.status(), 200);
        let v: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        let u = &v["usage"];
        (
            u["cache_creation_input_tokens"].as_u64().unwrap(),
            u["cache_read_input_tokens"].as_u64().unwrap(),
        )
    };
    let a = member(&mock, "AKIAACCOUNTA", "s", None);
    let b = member(&mock, "AKIAACCOUNTB", "s", None);
    let (written, read) = usage(call(&a, false, &[], body.as_bytes()).await).await;
    assert!(written > 500 && read == 0, "{written} {read}");
    assert_eq!(
        usage(call(&a, false, &[], body.as_bytes()).await).await,
        (0, written),
        "same account: a cache read"
    );
    assert_eq!(
        usage(call(&b, false, &[], body.as_bytes()).await).await,
        (written, 0),
        "another account: a cache write"
    );
    assert_eq!(mock.key_requests("AKIAACCOUNTA"), 2);
    assert_eq!(mock.key_requests("AKIAACCOUNTB"), 1);
}

#[tokio::test]
async fn the_mock_rejects_what_bedrock_rejects() {
    let mock = start(false).await;
    let b = member(&mock, AKID, SECRET, None);
    for (body, needle) in [
        (
            r#"{"model":"m","anthropic_version":"bedrock-2023-05-31","max_tokens":1,"messages":[]}"#,
            "extraneous key [model]",
        ),
        (
            r#"{"stream":true,"anthropic_version":"bedrock-2023-05-31","max_tokens":1,"messages":[]}"#,
            "extraneous key [stream]",
        ),
        (r#"{"max_tokens":1,"messages":[]}"#, "[anthropic_version]"),
        (
            r#"{"anthropic_version":"2023-06-01","max_tokens":1,"messages":[]}"#,
            "Invalid API version",
        ),
        (
            r#"{"anthropic_version":"bedrock-2023-05-31","messages":[]}"#,
            "[max_tokens]",
        ),
        (
            r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":1}"#,
            "[messages]",
        ),
    ] {
        let mut req = b
            .prepare(MODEL, false, &HeaderMap::new(), b"{}", SystemTime::now())
            .unwrap();
        *req.body_mut() = Bytes::from(body);
        let resp = send(req).await;
        assert_eq!(resp.status(), 400, "{body}");
        let (status, v) = mapped_error(resp).await;
        assert_eq!(status, 400);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg}");
    }
}
