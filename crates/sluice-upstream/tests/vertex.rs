//! Claude on Vertex AI end to end against the mock: requests built by `Vertex::prepare` and sent
//! with a plain hyper client, tokens from the mock's token endpoint and metadata server, usage,
//! streams, the prompt cache per project, Google-shaped errors, and the mock's own checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sluice_mock::{MockHandle, MockOptions, VERTEX_SA_FIXTURE, VERTEX_SA_PUBLIC_KEY_DER};
use sluice_upstream::vertex::{
    Endpoint, Vertex, VertexCredentials, VertexOptions, anthropic_error,
};

const MODEL: &str = "claude-sonnet-4-5@20250929";

async fn start() -> MockHandle {
    let opts = MockOptions {
        record: true,
        gcp_public_key_der: Some(std::fs::read(VERTEX_SA_PUBLIC_KEY_DER).unwrap()),
        ..MockOptions::default()
    };
    sluice_mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
}

fn vertex_with(mock: &MockHandle, project: &str, credentials: VertexCredentials) -> Vertex {
    Vertex::new(VertexOptions {
        project: project.into(),
        region: "us-east5".into(),
        base_url: Some(mock.url()),
        credentials,
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

/// A Vertex client authenticating with the fixture service account against the mock's
/// `/token{query}`.
fn vertex(mock: &MockHandle, project: &str, query: &str) -> Vertex {
    let mut sa: Value = serde_json::from_slice(&std::fs::read(VERTEX_SA_FIXTURE).unwrap()).unwrap();
    sa["token_uri"] = format!("{}/token{query}", mock.url()).into();
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), sa.to_string()).unwrap();
    vertex_with(
        mock,
        project,
        VertexCredentials::ServiceAccountFile(f.path().to_owned()),
    )
}

fn token_fetches(mock: &MockHandle) -> usize {
    mock.recorded()
        .iter()
        .filter(|r| r.path == "/token")
        .count()
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

    /// The `data:` payloads of an SSE body.
    fn events(&self) -> Vec<Value> {
        std::str::from_utf8(&self.body)
            .unwrap()
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }
}

async fn send(req: Request<Bytes>) -> Reply {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(req.map(Full::new)).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn body(stream: bool) -> Vec<u8> {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hello, Vertex"}],
    })
    .to_string()
    .into_bytes()
}

async fn call(v: &Vertex, stream: bool, h: &HeaderMap, body: &[u8]) -> Reply {
    send(
        v.prepare(Endpoint::Messages, MODEL, stream, h, body)
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_message_round_trip() {
    let m = start().await;
    let v = vertex(&m, "sluice-test", "");
    let r = call(
        &v,
        false,
        &headers(&[("x-mock-output-tokens", "7")]),
        &body(false),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    let j = r.json();
    assert_eq!(j["type"], "message");
    assert_eq!(j["model"], MODEL);
    assert_eq!(j["usage"]["output_tokens"], 7);
    let input = j["usage"]["input_tokens"].as_u64().unwrap();
    assert!(input > 10, "{j}");
    assert_eq!(j["usage"]["cache_read_input_tokens"], 0);

    // What the mock received: a bearer token, the Vertex body.
    let sent = m
        .recorded()
        .into_iter()
        .find(|r| r.path.ends_with(":rawPredict"))
        .unwrap();
    assert_eq!(
        sent.path,
        format!(
            "/v1/projects/sluice-test/locations/us-east5/publishers/anthropic/models/{MODEL}:rawPredict"
        )
    );
    assert!(
        sent.header("authorization")
            .unwrap()
            .starts_with("Bearer ya29.mock-")
    );
    assert!(sent.header("x-api-key").is_none());
    let sent_body = sent.json().unwrap();
    assert!(sent_body.get("model").is_none());
    assert_eq!(sent_body["anthropic_version"], "vertex-2023-10-16");
    // Usage is the body size based estimate of the body Vertex received.
    assert_eq!(input, (sent.body.len() as u64 / 4).max(1));
    assert_eq!(m.stats().messages, 1);
    assert_eq!(m.key_requests("sluice-test"), 1);
}

#[tokio::test]
async fn a_stream_is_anthropic_sse() {
    let m = start().await;
    let v = vertex(&m, "sluice-test", "");
    let r = call(
        &v,
        true,
        &headers(&[("x-mock-output-tokens", "12")]),
        &body(true),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = r.events();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"message_start"));
    assert_eq!(types.last(), Some(&"message_stop"));
    assert_eq!(events[0]["message"]["model"], MODEL);
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["usage"]["output_tokens"], 12);
    let sent = m
        .recorded()
        .into_iter()
        .find(|r| r.path.ends_with(":streamRawPredict"))
        .unwrap();
    assert_eq!(sent.json().unwrap()["stream"], true);

    // A stream broken by the model carries the Anthropic error event.
    let r = call(
        &v,
        true,
        &headers(&[("x-mock-stream-error-after", "2")]),
        &body(true),
    )
    .await;
    let events = r.events();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["type"], "error");
    assert_eq!(events[2]["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn count_tokens() {
    let m = start().await;
    let v = vertex(&m, "sluice-test", "");
    let b = json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    let req = v
        .prepare(
            Endpoint::CountTokens,
            MODEL,
            false,
            &HeaderMap::new(),
            b.as_bytes(),
        )
        .await
        .unwrap();
    assert!(
        req.uri()
            .path()
            .ends_with("/models/count-tokens:rawPredict")
    );
    let r = send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.json()["input_tokens"].as_u64().unwrap() > 0);
    let sent = m.recorded().pop().unwrap();
    assert_eq!(sent.json().unwrap()["model"], MODEL);
    // Token counting is not a message call.
    assert_eq!(m.stats().messages, 0);
}

#[tokio::test]
async fn the_token_is_fetched_once_across_calls() {
    let m = start().await;
    let v = vertex(&m, "sluice-test", "");
    for stream in [false, true, false, true] {
        assert_eq!(
            call(&v, stream, &HeaderMap::new(), &body(stream))
                .await
                .status,
            StatusCode::OK
        );
    }
    assert_eq!(token_fetches(&m), 1);
    assert_eq!(m.stats().messages, 4);
}

#[tokio::test]
async fn an_expired_token_is_refreshed() {
    let m = start().await;
    let v = vertex(&m, "sluice-test", "?expires_in=1");
    let first = v
        .prepare(
            Endpoint::Messages,
            MODEL,
            false,
            &HeaderMap::new(),
            &body(false),
        )
        .await
        .unwrap();
    let old = first.clone();
    assert_eq!(send(first).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The mock no longer takes the old token…
    let r = send(old).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"]["status"], "UNAUTHENTICATED");
    let (status, mapped) = anthropic_error(r.status, &r.body).unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mapped: Value = serde_json::from_slice(&mapped).unwrap();
    assert_eq!(mapped["error"]["type"], "authentication_error");

    // …and the client fetched a new one.
    assert_eq!(
        call(&v, false, &HeaderMap::new(), &body(false))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(token_fetches(&m), 2);
}

#[tokio::test]
async fn google_errors_map_to_anthropic_errors() {
    let m = start().await;
    let v = vertex(&m, "sluice-test", "");
    let r = call(
        &v,
        false,
        &headers(&[("x-mock-status", "429")]),
        &body(false),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["error"]["status"], "RESOURCE_EXHAUSTED");
    let (status, mapped) = anthropic_error(r.status, &r.body).unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let mapped: Value = serde_json::from_slice(&mapped).unwrap();
    assert_eq!(mapped["type"], "error");
    assert_eq!(mapped["error"]["type"], "rate_limit_error");
    assert!(
        mapped["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Quota exceeded")
    );

    // Overloaded: Google says 503 UNAVAILABLE (in the array form on a streaming method); the
    // client sees the Anthropic 529.
    let r = call(&v, true, &headers(&[("x-mock-status", "529")]), &body(true)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()[0]["error"]["status"], "UNAVAILABLE");
    let (status, mapped) = anthropic_error(r.status, &r.body).unwrap();
    assert_eq!(status.as_u16(), 529);
    assert_eq!(
        serde_json::from_slice::<Value>(&mapped).unwrap()["error"]["type"],
        "overloaded_error"
    );

    // The model's own errors are Anthropic-shaped already.
    let no_max = json!({"model": "x", "messages": []}).to_string();
    let r = call(&v, false, &HeaderMap::new(), no_max.as_bytes()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(anthropic_error(r.status, &r.body).is_none());

    // fail-first: a retry of the same body succeeds.
    let h = headers(&[("x-mock-fail-first", "1"), ("x-mock-status", "500")]);
    assert_eq!(
        call(&v, false, &h, &body(false)).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        call(&v, false, &h, &body(false)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn metadata_server_credentials() {
    let m = start().await;
    let v = vertex_with(
        &m,
        "sluice-test",
        VertexCredentials::Metadata {
            base_url: Some(m.url()),
        },
    );
    for _ in 0..3 {
        let r = call(&v, false, &HeaderMap::new(), &body(false)).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let fetches: Vec<_> = m
        .recorded()
        .into_iter()
        .filter(|r| r.path.starts_with("/computeMetadata/"))
        .collect();
    assert_eq!(fetches.len(), 1);
    assert_eq!(fetches[0].header("metadata-flavor").unwrap(), "Google");
}

#[tokio::test]
async fn the_prompt_cache_is_per_project() {
    let m = start().await;
    let a = vertex(&m, "project-a", "");
    let b = vertex(&m, "project-b", "");
    let cached = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        // Past the 1,024-token minimum below which the upstream writes nothing.
        "system": [{"type": "text", "text": "You are a careful assistant. ".repeat(200),
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Hi"}],
    })
    .to_string();
    let usage = |r: &Reply| r.json()["usage"].clone();

    let first = usage(&call(&a, false, &HeaderMap::new(), cached.as_bytes()).await);
    let written = first["cache_creation_input_tokens"].as_u64().unwrap();
    assert!(written > 100, "{first}");
    assert_eq!(first["cache_read_input_tokens"], 0);

    let second = usage(&call(&a, false, &HeaderMap::new(), cached.as_bytes()).await);
    assert_eq!(second["cache_read_input_tokens"], written, "{second}");
    assert_eq!(second["cache_creation_input_tokens"], 0);

    let other = usage(&call(&b, false, &HeaderMap::new(), cached.as_bytes()).await);
    assert_eq!(other["cache_creation_input_tokens"], written, "{other}");
    assert_eq!(other["cache_read_input_tokens"], 0);

    assert_eq!(m.key_requests("project-a"), 2);
    assert_eq!(m.key_requests("project-b"), 1);
}

#[tokio::test]
async fn faults_and_latency_apply() {
    let m = start().await;
    let v = vertex(&m, "sluice-test", "");
    // Warm the token so the timing below is the call's.
    call(&v, false, &HeaderMap::new(), &body(false)).await;
    let t = std::time::Instant::now();
    let r = call(
        &v,
        false,
        &headers(&[("x-mock-latency-ms", "150")]),
        &body(false),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(150));

    // An unknown knob is a Google-shaped 400.
    let r = call(&v, false, &headers(&[("x-mock-nope", "1")]), &body(false)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["status"], "INVALID_ARGUMENT");

    // A dropped stream: the body ends with an error, after the first events.
    let req = v
        .prepare(
            Endpoint::Messages,
            MODEL,
            true,
            &headers(&[("x-mock-drop-after", "2")]),
            &body(true),
        )
        .await
        .unwrap();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(req.map(Full::new)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.into_body().collect().await.is_err());
}

/// Requests built by hand, to see what the mock refuses.
async fn raw(
    m: &MockHandle,
    method: Method,
    path: &str,
    pairs: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", m.url()));
    for (k, v) in pairs {
        req = req.header(*k, *v);
    }
    send(req.body(body.into()).unwrap()).await
}

#[tokio::test]
async fn the_mock_checks_what_vertex_checks() {
    let m = start().await;
    let v = vertex(&m, "sluice-test", "");
    let good = v
        .prepare(
            Endpoint::Messages,
            MODEL,
            false,
            &HeaderMap::new(),
            &body(false),
        )
        .await
        .unwrap();
    let auth = good.headers()["authorization"].to_str().unwrap().to_owned();
    let path = good.uri().path().to_owned();

    // No token, a token the mock never issued.
    for pairs in [
        vec![],
        vec![("authorization", "Bearer ya29.forged.99999999999999")],
    ] {
        let r = raw(&m, Method::POST, &path, &pairs, good.body().clone()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json()["error"]["code"], 401);
    }
    let with_auth = [("authorization", auth.as_str())];
    // A Messages body naming the model, a missing or wrong anthropic_version.
    for bad in [
        json!({"model": "m", "anthropic_version": "vertex-2023-10-16", "max_tokens": 5, "messages": []}),
        json!({"max_tokens": 5, "messages": []}),
        json!({"anthropic_version": "2023-06-01", "max_tokens": 5, "messages": []}),
    ] {
        let r = raw(&m, Method::POST, &path, &with_auth, bad.to_string()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.json()["error"]["status"], "INVALID_ARGUMENT", "{bad}");
    }
    // Count tokens needs the model in the body.
    let count_path = path.replace(&format!("{MODEL}:rawPredict"), "count-tokens:rawPredict");
    let no_model = json!({"anthropic_version": "vertex-2023-10-16", "messages": []});
    let r = raw(
        &m,
        Method::POST,
        &count_path,
        &with_auth,
        no_model.to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Unknown Vertex paths are Google 404s; the Anthropic routes still work.
    let r = raw(
        &m,
        Method::POST,
        "/v1/projects/p/locations/r/publishers/google/models/g:rawPredict",
        &with_auth,
        "{}",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["status"], "NOT_FOUND");
    let r = raw(&m, Method::POST, "/v1/messages", &[], body(false)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // The token endpoints.
    let r = raw(
        &m,
        Method::POST,
        "/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_grant");
    let r = raw(&m, Method::POST, "/token", &[], "grant_type=password").await;
    assert_eq!(r.json()["error"], "unsupported_grant_type");
    let metadata = "/computeMetadata/v1/instance/service-accounts/default/token";
    let r = raw(&m, Method::GET, metadata, &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = raw(
        &m,
        Method::GET,
        metadata,
        &[("metadata-flavor", "Google")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["token_type"], "Bearer");
    assert_eq!(r.json()["expires_in"], 3600);

    // A forged signature: the claims are fine, the key is not.
    let sent = m
        .recorded()
        .into_iter()
        .find(|r| r.path == "/token")
        .unwrap();
    let form = String::from_utf8(sent.body.to_vec()).unwrap();
    let (head, sig) = form.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let forged = format!("{head}.{flipped}{}", &sig[1..]);
    let r = raw(&m, Method::POST, "/token", &[], forged).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error_description"], "Invalid JWT Signature.");
}
