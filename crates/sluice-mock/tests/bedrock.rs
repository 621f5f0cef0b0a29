//! The mock's Bedrock routes over real sockets, with requests signed here by aws-sigv4: auth
//! shapes, routing, body validation, frames on the wire and the fault knobs. (End-to-end tests
//! with the gateway's own Bedrock client live in `sluice-upstream/tests/bedrock.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sluice_mock::{MockHandle, MockOptions, spawn};

const AKID: &str = "AKIAMOCK";
const SECRET: &str = "secret";
const PATH: &str = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke";
const STREAM_PATH: &str =
    "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke-with-response-stream";

async fn start(opts: MockOptions) -> MockHandle {
    spawn("127.0.0.1:0".parse().unwrap(), opts).await.unwrap()
}

fn verifying() -> MockOptions {
    MockOptions {
        aws_credentials: Some((AKID.into(), SECRET.into())),
        ..MockOptions::default()
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn error_type(&self) -> &str {
        self.headers["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
    }
}

/// A request for `body` to `path`, signed as `service` with (`akid`, `secret`) unless `sign_as`
/// is `None`; `extra` headers are sent unsigned.
fn request(
    mock: &MockHandle,
    method: Method,
    path: &str,
    sign_as: Option<(&str, &str, &str)>,
    extra: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let host = mock.addr.to_string();
    let uri = format!("{}{path}", mock.url());
    let mut req = Request::builder()
        .method(method.clone())
        .uri(&uri)
        .header("host", &host)
        .header("content-type", "application/json");
    if let Some((akid, secret, service)) = sign_as {
        let identity = Credentials::from_keys(akid, secret, None).into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("eu-west-1")
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(
            method.as_str(),
            uri.as_str(),
            [
                ("host", host.as_str()),
                ("content-type", "application/json"),
            ]
            .into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        for (k, v) in instructions.headers() {
            req = req.header(k, v);
        }
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn call(
    mock: &MockHandle,
    method: Method,
    path: &str,
    sign_as: Option<(&str, &str, &str)>,
    extra: &[(&str, &str)],
    body: &str,
) -> Reply {
    let req = request(mock, method, path, sign_as, extra, body);
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

const SIGNED: Option<(&str, &str, &str)> = Some((AKID, SECRET, "bedrock"));

fn body() -> String {
    json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hello"}],
    })
    .to_string()
}

/// The (headers, payload) of every frame of an event-stream body.
fn frames(body: &Bytes) -> Vec<(Vec<(String, String)>, Bytes)> {
    let mut buf = BytesMut::from(&body[..]);
    let mut decoder = MessageFrameDecoder::new();
    let mut out = Vec::new();
    while let DecodedFrame::Complete(msg) = decoder.decode_frame(&mut buf).unwrap() {
        let headers = msg
            .headers()
            .iter()
            .map(|h| {
                let v = h.value().as_string().unwrap().as_str().to_owned();
                (h.name().as_str().to_owned(), v)
            })
            .collect();
        out.push((headers, msg.payload().clone()));
    }
    assert!(buf.is_empty(), "trailing bytes");
    out
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    &headers.iter().find(|(n, _)| n == name).unwrap().1
}

/// The Anthropic event type inside a `chunk` frame.
fn chunk_type(payload: &[u8]) -> String {
    let v: Value = serde_json::from_slice(payload).unwrap();
    let data = base64::engine::general_purpose::STANDARD
        .decode(v["bytes"].as_str().unwrap())
        .unwrap();
    let event: Value = serde_json::from_slice(&data).unwrap();
    event["type"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn auth_is_required_and_checked() {
    let mock = start(verifying()).await;
    let r = call(&mock, Method::POST, PATH, None, &[], &body()).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_type(), "MissingAuthenticationTokenException");
    assert!(r.json()["message"].is_string());
    assert!(r.headers.contains_key("x-amzn-requestid"));

    let r = call(
        &mock,
        Method::POST,
        PATH,
        None,
        &[("authorization", "Bearer sk-ant-x")],
        &body(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_type()),
        (403, "IncompleteSignatureException")
    );

    let r = call(
        &mock,
        Method::POST,
        PATH,
        Some((AKID, SECRET, "s3")),
        &[],
        &body(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_type()),
        (403, "InvalidSignatureException")
    );

    let r = call(
        &mock,
        Method::POST,
        PATH,
        Some((AKID, "nope", "bedrock")),
        &[],
        &body(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_type()),
        (403, "InvalidSignatureException")
    );
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("The request signature we calculated does not match")
    );

    let r = call(&mock, Method::POST, PATH, SIGNED, &[], &body()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Counted per access key once the credential parses: the wrong secret and the good call
    // (the wrong-service scope is rejected before the key is taken).
    assert_eq!(mock.key_requests(AKID), 2);
    assert_eq!(mock.stats().messages, 5);
}

#[tokio::test]
async fn invoke_reply_is_the_anthropic_message() {
    let mock = start(verifying()).await;
    let r = call(
        &mock,
        Method::POST,
        PATH,
        SIGNED,
        &[("x-mock-output-tokens", "4")],
        &body(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["model"], "anthropic.claude-3-haiku-20240307-v1:0");
    assert_eq!(v["usage"]["output_tokens"], 4);
    let input = (body().len() / 4).to_string();
    assert_eq!(v["usage"]["input_tokens"].to_string(), input);
    assert_eq!(
        r.headers["x-amzn-bedrock-input-token-count"],
        input.as_str()
    );
    assert_eq!(r.headers["x-amzn-bedrock-output-token-count"], "4");
    // No Anthropic rate-limit headers: this is not the Anthropic API.
    assert!(!r.headers.contains_key("anthropic-ratelimit-requests-limit"));
}

#[tokio::test]
async fn stream_is_event_stream_frames_without_pings() {
    let mock = start(verifying()).await;
    let r = call(
        &mock,
        Method::POST,
        STREAM_PATH,
        SIGNED,
        &[("x-mock-output-tokens", "6")],
        &body(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let frames = frames(&r.body);
    let types: Vec<String> = frames
        .iter()
        .map(|(h, p)| {
            assert_eq!(header(h, ":message-type"), "event");
            assert_eq!(header(h, ":event-type"), "chunk");
            assert_eq!(header(h, ":content-type"), "application/json");
            chunk_type(p)
        })
        .collect();
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );

    // stream-error-after: an exception frame replaces the rest.
    let r = call(
        &mock,
        Method::POST,
        STREAM_PATH,
        SIGNED,
        &[("x-mock-stream-error-after", "2")],
        &body(),
    )
    .await;
    let frames = self::frames(&r.body);
    assert_eq!(frames.len(), 3);
    let (h, payload) = &frames[2];
    assert_eq!(header(h, ":message-type"), "exception");
    assert_eq!(header(h, ":exception-type"), "serviceUnavailableException");
    let v: Value = serde_json::from_slice(payload).unwrap();
    assert!(v["message"].is_string());
    // Clamped: the exception still replaces message_stop.
    let r = call(
        &mock,
        Method::POST,
        STREAM_PATH,
        SIGNED,
        &[("x-mock-stream-error-after", "99")],
        &body(),
    )
    .await;
    let frames = self::frames(&r.body);
    assert!(
        frames[..frames.len() - 1]
            .iter()
            .all(|(_, p)| chunk_type(p) != "message_stop")
    );
    assert_eq!(
        header(&frames.last().unwrap().0, ":message-type"),
        "exception"
    );
}

#[tokio::test]
async fn bodies_are_validated_as_bedrock_does() {
    let mock = start(MockOptions::default()).await;
    for (b, needle) in [
        ("not json", "Malformed input request"),
        (
            r#"{"anthropic_version":"bedrock-2023-05-31","model":"x","max_tokens":1,"messages":[]}"#,
            "extraneous key [model]",
        ),
        (
            r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":0,"messages":[]}"#,
            "max_tokens",
        ),
    ] {
        let r = call(&mock, Method::POST, PATH, SIGNED, &[], b).await;
        assert_eq!(
            (r.status.as_u16(), r.error_type()),
            (400, "ValidationException"),
            "{b}"
        );
        assert!(r.json()["message"].as_str().unwrap().contains(needle));
    }
    let r = call(
        &mock,
        Method::POST,
        PATH,
        SIGNED,
        &[("x-mock-nope", "1")],
        &body(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_type()),
        (400, "ValidationException")
    );
}

#[tokio::test]
async fn automatic_caching_is_refused_and_explicit_breakpoints_cache() {
    let mock = start(MockOptions::default()).await;
    let mut b: Value = serde_json::from_str(&body()).unwrap();
    b["cache_control"] = json!({"type": "ephemeral"});
    let r = call(&mock, Method::POST, PATH, SIGNED, &[], &b.to_string()).await;
    assert_eq!(
        (r.status.as_u16(), r.error_type()),
        (400, "ValidationException")
    );
    let message = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("extraneous key [cache_control]"),
        "{message}"
    );

    // Claude 3 Haiku caches from 2,048 tokens.
    let system = "You are terse. ".repeat(700);
    let b = json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 50,
        "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Hello"}],
    })
    .to_string();
    let first = call(&mock, Method::POST, PATH, SIGNED, &[], &b)
        .await
        .json();
    let written = first["usage"]["cache_creation_input_tokens"]
        .as_u64()
        .unwrap();
    assert!(written > 2048, "{first}");
    let second = call(&mock, Method::POST, PATH, SIGNED, &[], &b)
        .await
        .json();
    assert_eq!(second["usage"]["cache_read_input_tokens"], written);
}

#[tokio::test]
async fn routing_leaves_other_paths_alone() {
    let mock = start(MockOptions::default()).await;
    let r = call(&mock, Method::GET, PATH, SIGNED, &[], "").await;
    assert_eq!(r.status, 405);
    // Not a Bedrock operation: the Anthropic router's 404.
    let r = call(
        &mock,
        Method::POST,
        "/model/m/converse",
        SIGNED,
        &[],
        &body(),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["type"], "error");
    // The Anthropic API still answers.
    let anthropic = json!({"model": "m", "max_tokens": 5, "messages": []}).to_string();
    let r = call(&mock, Method::POST, "/v1/messages", None, &[], &anthropic).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["type"], "message");
}

#[tokio::test]
async fn faults_apply() {
    let mock = start(MockOptions {
        key_status: vec![("AKIADOWN".into(), 429)],
        ..MockOptions::default()
    })
    .await;
    let r = call(
        &mock,
        Method::POST,
        PATH,
        Some(("AKIADOWN", "s", "bedrock")),
        &[],
        &body(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_type()),
        (429, "ThrottlingException")
    );

    let r = call(
        &mock,
        Method::POST,
        PATH,
        SIGNED,
        &[("x-mock-status", "529")],
        &body(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_type()),
        (503, "ServiceUnavailableException")
    );
    let r = call(
        &mock,
        Method::POST,
        PATH,
        SIGNED,
        &[("x-mock-status", "408")],
        &body(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_type()),
        (408, "ModelTimeoutException")
    );

    let t = Instant::now();
    let r = call(
        &mock,
        Method::POST,
        PATH,
        SIGNED,
        &[("x-mock-latency-ms", "150")],
        &body(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));

    let t = Instant::now();
    let r = call(
        &mock,
        Method::POST,
        STREAM_PATH,
        SIGNED,
        &[
            ("x-mock-event-interval-ms", "30"),
            ("x-mock-output-tokens", "1"),
        ],
        &body(),
    )
    .await;
    // Six frames, five gaps.
    assert_eq!(frames(&r.body).len(), 6);
    assert!(t.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn drop_after_cuts_the_connection() {
    let mock = start(MockOptions::default()).await;
    let req = request(
        &mock,
        Method::POST,
        STREAM_PATH,
        SIGNED,
        &[("x-mock-drop-after", "2")],
        &body(),
    );
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut incoming = resp.into_body();
    let mut got = Vec::new();
    let failed = loop {
        match incoming.frame().await {
            Some(Ok(f)) => got.extend_from_slice(&f.into_data().unwrap()),
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    assert!(failed, "the body ended cleanly");
    assert_eq!(frames(&Bytes::from(got)).len(), 2);

    // Not streaming: K = 0 closes without a reply.
    let req = request(
        &mock,
        Method::POST,
        PATH,
        SIGNED,
        &[("x-mock-drop-after", "0")],
        &body(),
    );
    assert!(client().request(req).await.is_err());
}
