//! Unit tests of the Vertex provider: the body rewrite, URLs, the JWT assertion, the token cache
//! (against the mock's token endpoints), error mapping and redaction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use sluice_mock::{MockHandle, MockOptions, VERTEX_SA_FIXTURE, VERTEX_SA_PUBLIC_KEY_DER};

fn public_key() -> Vec<u8> {
    std::fs::read(VERTEX_SA_PUBLIC_KEY_DER).unwrap()
}

async fn mock(verify_with: Option<Vec<u8>>) -> MockHandle {
    let opts = MockOptions {
        gcp_public_key_der: verify_with,
        ..MockOptions::default()
    };
    sluice_mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
}

/// A copy of the fixture key file with `token_uri` replaced.
fn key_file(token_uri: &str) -> tempfile::NamedTempFile {
    let mut sa: Value = serde_json::from_slice(&std::fs::read(VERTEX_SA_FIXTURE).unwrap()).unwrap();
    sa["token_uri"] = token_uri.into();
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), sa.to_string()).unwrap();
    f
}

fn opts(region: &str, credentials: VertexCredentials) -> VertexOptions {
    VertexOptions {
        project: "sluice-test".into(),
        region: region.into(),
        base_url: None,
        credentials,
        timeout: Duration::from_secs(5),
    }
}

/// A Vertex client whose service-account tokens come from `token_uri`.
fn sa_vertex(token_uri: &str) -> Vertex {
    let f = key_file(token_uri);
    // The file is read by `new`; the temp file may go away afterwards.
    Vertex::new(opts(
        "us-east5",
        VertexCredentials::ServiceAccountFile(f.path().to_owned()),
    ))
    .unwrap()
}

const BODY: &[u8] = br#"{"model":"claude-sonnet-4-5","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"a \"model\": 1.50"}],"metadata":{"model":"kept"}}"#;

async fn prepare(v: &Vertex) -> Result<Request<Bytes>, UpstreamError> {
    v.prepare(
        Endpoint::Messages,
        "claude-sonnet-4-5@20250929",
        false,
        &HeaderMap::new(),
        BODY,
    )
    .await
}

fn bearer(req: &Request<Bytes>) -> String {
    req.headers()[AUTHORIZATION].to_str().unwrap().to_owned()
}

#[test]
fn messages_body_drops_model_and_adds_the_version() {
    let out = rewrite_body(BODY, None).unwrap();
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        r#"{"max_tokens":10,"stream":true,"messages":[{"role":"user","content":"a \"model\": 1.50"}],"metadata":{"model":"kept"},"anthropic_version":"vertex-2023-10-16"}"#
    );
    // Still the same request otherwise: parse and compare with serde's view of the edit.
    let mut expected: serde_json::Map<String, Value> = serde_json::from_slice(BODY).unwrap();
    expected.remove("model");
    expected.insert("anthropic_version".into(), ANTHROPIC_VERSION.into());
    let got: serde_json::Map<String, Value> = serde_json::from_slice(&out).unwrap();
    assert_eq!(got, expected);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        [
            "max_tokens",
            "stream",
            "messages",
            "metadata",
            "anthropic_version"
        ]
    );
}

#[test]
fn body_rewrite_keeps_values_verbatim_and_replaces_a_client_version() {
    let body = b" {\n  \"anthropic_version\" : \"bedrock-2023-05-31\",\n  \"n\": 1e2,\n  \"model\":\"x\",\n  \"s\": \"\\u00e9\\\\\",\n  \"a\": [ {\"b\": [\"}\"]} ]\n} ";
    let out = rewrite_body(body, None).unwrap();
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        "{\"anthropic_version\" : \"vertex-2023-10-16\",\"n\": 1e2,\"s\": \"\\u00e9\\\\\",\"a\": [ {\"b\": [\"}\"]} ]}"
    );
    assert_eq!(
        rewrite_body(b"{}", None).unwrap(),
        &br#"{"anthropic_version":"vertex-2023-10-16"}"#[..]
    );
}

#[test]
fn count_tokens_body_names_the_vertex_model() {
    let out = rewrite_body(
        br#"{"model":"claude-sonnet-4-5","messages":[]}"#,
        Some("claude-sonnet-4-5@20250929"),
    )
    .unwrap();
    assert_eq!(
        out,
        &br#"{"model":"claude-sonnet-4-5@20250929","messages":[],"anthropic_version":"vertex-2023-10-16"}"#[..]
    );
    let out = rewrite_body(br#"{"messages":[]}"#, Some("m@1")).unwrap();
    assert_eq!(
        out,
        &br#"{"messages":[],"anthropic_version":"vertex-2023-10-16","model":"m@1"}"#[..]
    );
}

#[test]
fn a_body_that_is_not_an_object_is_refused() {
    for bad in [&b"[1]"[..], b"\"x\"", b"{", b"", b"{\"a\":1} x"] {
        assert!(
            matches!(rewrite_body(bad, None), Err(UpstreamError::Config(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn urls() {
    let metadata = || VertexCredentials::Metadata { base_url: None };
    let v = Vertex::new(opts("us-east5", metadata())).unwrap();
    let base = "https://us-east5-aiplatform.googleapis.com/v1/projects/sluice-test/locations/us-east5/publishers/anthropic/models";
    assert_eq!(
        v.uri(Endpoint::Messages, "claude-sonnet-4-5@20250929", false)
            .unwrap()
            .to_string(),
        format!("{base}/claude-sonnet-4-5@20250929:rawPredict")
    );
    assert_eq!(
        v.uri(Endpoint::Messages, "claude-sonnet-4-5@20250929", true)
            .unwrap()
            .to_string(),
        format!("{base}/claude-sonnet-4-5@20250929:streamRawPredict")
    );
    assert_eq!(
        v.uri(Endpoint::CountTokens, "claude-sonnet-4-5@20250929", true)
            .unwrap()
            .to_string(),
        format!("{base}/count-tokens:rawPredict")
    );

    let g = Vertex::new(opts("global", metadata())).unwrap();
    assert_eq!(
        g.uri(Endpoint::Messages, "m@1", false).unwrap().to_string(),
        "https://aiplatform.googleapis.com/v1/projects/sluice-test/locations/global/publishers/anthropic/models/m@1:rawPredict"
    );

    let mut o = opts("europe-west1", metadata());
    o.base_url = Some("http://127.0.0.1:9/prefix/".into());
    let p = Vertex::new(o).unwrap();
    assert_eq!(
        p.uri(Endpoint::Messages, "m@1", true).unwrap().to_string(),
        "http://127.0.0.1:9/prefix/v1/projects/sluice-test/locations/europe-west1/publishers/anthropic/models/m@1:streamRawPredict"
    );

    for bad in ["", "../x", "m?x", "m/rawPredict", "m:x", "m x", "m#"] {
        assert!(
            matches!(
                v.uri(Endpoint::Messages, bad, false),
                Err(UpstreamError::Config(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn bad_options_are_config_errors() {
    let metadata = || VertexCredentials::Metadata { base_url: None };
    let mut o = opts("us-east5", metadata());
    o.project = "a/b".into();
    assert!(matches!(Vertex::new(o), Err(UpstreamError::Config(_))));
    assert!(matches!(
        Vertex::new(opts("us east", metadata())),
        Err(UpstreamError::Config(_))
    ));
    let mut o = opts("us-east5", metadata());
    o.base_url = Some("not a url".into());
    assert!(matches!(Vertex::new(o), Err(UpstreamError::Config(_))));
}

#[test]
fn bad_key_files_fail_at_startup_without_showing_the_key() {
    let fixture: Value =
        serde_json::from_slice(&std::fs::read(VERTEX_SA_FIXTURE).unwrap()).unwrap();
    let pem = fixture["private_key"].as_str().unwrap();
    let key_line = pem.lines().nth(3).unwrap();
    let try_file = |content: String| {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), content).unwrap();
        let sa = VertexCredentials::ServiceAccountFile(f.path().to_owned());
        match Vertex::new(opts("us-east5", sa)) {
            Err(UpstreamError::Config(msg)) => msg,
            other => panic!("{other:?}"),
        }
    };
    let missing = VertexCredentials::ServiceAccountFile("/nonexistent/key.json".into());
    assert!(matches!(
        Vertex::new(opts("us-east5", missing)),
        Err(UpstreamError::Config(_))
    ));
    let mut broken = fixture.clone();
    // A key with one line dropped: still PEM-looking, no longer a key.
    broken["private_key"] = pem.replace(key_line, "").into();
    let mut wrong_type = fixture.clone();
    wrong_type["private_key"] = 5.into();
    let mut user = fixture.clone();
    user["type"] = "authorized_user".into();
    let mut not_pem = fixture.clone();
    not_pem["private_key"] = format!("-----BEGIN PRIVATE KEY-----\n{key_line}").into();
    for (case, content) in [
        ("broken", broken.to_string()),
        ("wrong type", wrong_type.to_string()),
        ("authorized user", user.to_string()),
        ("not pem", not_pem.to_string()),
        ("truncated", fixture.to_string()[..900].to_owned()),
    ] {
        let msg = try_file(content);
        assert!(!msg.contains(key_line), "{case}: {msg}");
        assert!(!msg.contains("PRIVATE KEY"), "{case}: {msg}");
    }
}

#[test]
fn the_assertion_is_an_rs256_jwt_that_verifies() {
    let sa = ServiceAccount::load(Path::new(VERTEX_SA_FIXTURE)).unwrap();
    let jwt = sa.assertion(1_800_000_000).unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    for p in &parts {
        assert!(
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "not base64url: {p}"
        );
    }
    let decode =
        |p: &str| -> Value { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap() };
    let fixture: Value =
        serde_json::from_slice(&std::fs::read(VERTEX_SA_FIXTURE).unwrap()).unwrap();
    assert_eq!(
        decode(parts[0]),
        json!({"alg": "RS256", "typ": "JWT", "kid": fixture["private_key_id"]})
    );
    assert_eq!(
        decode(parts[1]),
        json!({
            "iss": "sluice-test@sluice-test.iam.gserviceaccount.com",
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "aud": "http://127.0.0.1:1/token",
            "iat": 1_800_000_000u64,
            "exp": 1_800_003_600u64,
        })
    );
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    assert_eq!(signature.len(), 256);
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key(),
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    key.verify(signed.as_bytes(), &signature).unwrap();
    assert!(key.verify(b"something else", &signature).is_err());
}

#[tokio::test]
async fn the_token_is_fetched_once_and_reused() {
    let m = mock(Some(public_key())).await;
    let v = sa_vertex(&format!("{}/token", m.url()));
    let first = prepare(&v).await.unwrap();
    let second = prepare(&v.clone()).await.unwrap();
    assert_eq!(m.stats().requests, 1);
    assert_eq!(bearer(&first), bearer(&second));
    assert!(
        bearer(&first).starts_with("Bearer ya29.mock-1."),
        "{}",
        bearer(&first)
    );
}

#[tokio::test]
async fn concurrent_callers_share_one_fetch() {
    let m = mock(Some(public_key())).await;
    let v = sa_vertex(&format!("{}/token", m.url()));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let v = v.clone();
        calls.spawn(async move { bearer(&prepare(&v).await.unwrap()) });
    }
    let tokens: Vec<String> = calls.join_all().await;
    assert_eq!(m.stats().requests, 1);
    assert!(tokens.iter().all(|t| *t == tokens[0]));
}

#[tokio::test]
async fn a_token_near_its_expiry_is_refreshed() {
    let m = mock(Some(public_key())).await;
    // Inside the five-minute margin: every call fetches.
    let v = sa_vertex(&format!("{}/token?expires_in=299", m.url()));
    let a = bearer(&prepare(&v).await.unwrap());
    let b = bearer(&prepare(&v).await.unwrap());
    assert_ne!(a, b);
    assert_eq!(m.stats().requests, 2);
    // Just outside it: cached.
    let v = sa_vertex(&format!("{}/token?expires_in=400", m.url()));
    prepare(&v).await.unwrap();
    prepare(&v).await.unwrap();
    assert_eq!(m.stats().requests, 3);
}

#[tokio::test]
async fn an_expired_token_is_refreshed() {
    let m = mock(Some(public_key())).await;
    let v = sa_vertex(&format!("{}/token?expires_in=1", m.url()));
    let a = bearer(&prepare(&v).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = bearer(&prepare(&v).await.unwrap());
    assert_ne!(a, b);
    assert_eq!(m.stats().requests, 2);
}

#[tokio::test]
async fn a_failed_early_refresh_keeps_the_current_token() {
    let m = mock(None).await;
    let v = sa_vertex(&format!("{}/token?expires_in=120", m.url()));
    let a = bearer(&prepare(&v).await.unwrap());
    m.shutdown().await.unwrap();
    // Inside the margin, the refresh fails (nobody listens), the token is still good.
    let b = bearer(&prepare(&v).await.unwrap());
    assert_eq!(a, b);
}

#[tokio::test]
async fn token_failures_are_unreachable_and_never_show_the_assertion() {
    // Nobody listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let v = sa_vertex(&format!("http://127.0.0.1:{port}/token"));
    match prepare(&v).await {
        Err(UpstreamError::Unreachable(msg)) => assert!(msg.starts_with("vertex token: "), "{msg}"),
        other => panic!("{other:?}"),
    }

    // The mock verifies against the wrong key: invalid_grant.
    let m = mock(Some(b"not a key".to_vec())).await;
    let v = sa_vertex(&format!("{}/token", m.url()));
    match prepare(&v).await {
        Err(UpstreamError::Unreachable(msg)) => {
            assert!(
                msg.contains("400") && msg.contains("invalid_grant"),
                "{msg}"
            );
            // JWTs start with the base64url of `{"`.
            assert!(!msg.contains("eyJ"), "{msg}");
        }
        other => panic!("{other:?}"),
    }

    // A silent token endpoint: the timeout applies.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let (_s, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let f = key_file(&format!("http://{addr}/token"));
    let mut o = opts(
        "us-east5",
        VertexCredentials::ServiceAccountFile(f.path().to_owned()),
    );
    o.timeout = Duration::from_millis(200);
    let v = Vertex::new(o).unwrap();
    match prepare(&v).await {
        Err(UpstreamError::Unreachable(msg)) => assert!(msg.contains("no reply within"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn metadata_server_tokens() {
    let m = mock(None).await;
    let v = Vertex::new(opts(
        "us-east5",
        VertexCredentials::Metadata {
            base_url: Some(format!("{}/", m.url())),
        },
    ))
    .unwrap();
    let a = bearer(&prepare(&v).await.unwrap());
    let b = bearer(&prepare(&v).await.unwrap());
    assert_eq!(a, b);
    assert!(a.starts_with("Bearer ya29.mock-"));
    assert_eq!(m.stats().requests, 1);
}

#[tokio::test]
async fn headers_keep_only_what_vertex_takes() {
    let m = mock(Some(public_key())).await;
    let v = sa_vertex(&format!("{}/token", m.url()));
    let mut h = HeaderMap::new();
    for (k, val) in [
        ("anthropic-beta", "a-2025-01-01"),
        ("anthropic-beta", "b-2025-02-02"),
        ("anthropic-version", "2023-06-01"),
        ("x-api-key", "sk-ant-client"),
        ("cookie", "c=1"),
        ("user-agent", "test/1"),
        ("x-mock-status", "429"),
        ("content-type", "text/plain"),
        ("x-stainless-arch", "x64"),
    ] {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(val));
    }
    let req = v
        .prepare(Endpoint::Messages, "m@1", true, &h, BODY)
        .await
        .unwrap();
    let mut names: Vec<&str> = req.headers().keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "anthropic-beta",
            "authorization",
            "content-type",
            "user-agent",
            "x-mock-status"
        ]
    );
    assert_eq!(req.headers().get_all("anthropic-beta").iter().count(), 2);
    assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
    assert!(req.headers()[AUTHORIZATION].is_sensitive());
    assert_eq!(req.method(), Method::POST);
    assert!(req.uri().path().ends_with("/models/m@1:streamRawPredict"));
    assert_eq!(req.body(), &rewrite_body(BODY, None).unwrap());
}

#[tokio::test]
async fn debug_never_shows_the_key_or_the_token() {
    let m = mock(Some(public_key())).await;
    let v = sa_vertex(&format!("{}/token", m.url()));
    let req = prepare(&v).await.unwrap();
    let token = bearer(&req);
    let token = token.strip_prefix("Bearer ").unwrap();
    let fixture: Value =
        serde_json::from_slice(&std::fs::read(VERTEX_SA_FIXTURE).unwrap()).unwrap();
    let key_line = fixture["private_key"]
        .as_str()
        .unwrap()
        .lines()
        .nth(1)
        .unwrap();
    let shown = format!("{v:?} {v:#?} {:?}", req.headers());
    assert!(!shown.contains(token), "{shown}");
    assert!(!shown.contains(key_line), "{shown}");
    assert!(!shown.contains("PRIVATE"), "{shown}");
    assert!(shown.contains("sluice-test"), "{shown}");
}

#[test]
fn google_errors_map_to_anthropic_errors() {
    let google = |code: u16, status: &str| {
        json!({"error": {"code": code, "message": "m", "status": status}}).to_string()
    };
    for (code, status, kind, client) in [
        (400, "INVALID_ARGUMENT", "invalid_request_error", 400),
        (400, "FAILED_PRECONDITION", "invalid_request_error", 400),
        (401, "UNAUTHENTICATED", "authentication_error", 401),
        (403, "PERMISSION_DENIED", "permission_error", 403),
        (404, "NOT_FOUND", "not_found_error", 404),
        (429, "RESOURCE_EXHAUSTED", "rate_limit_error", 429),
        (503, "UNAVAILABLE", "overloaded_error", 529),
        (504, "DEADLINE_EXCEEDED", "api_error", 504),
        (500, "INTERNAL", "api_error", 500),
        (409, "ABORTED", "api_error", 500),
        (501, "UNIMPLEMENTED", "api_error", 500),
    ] {
        let (s, body) = anthropic_error(
            StatusCode::from_u16(code).unwrap(),
            google(code, status).as_bytes(),
        )
        .unwrap();
        assert_eq!(s.as_u16(), client, "{status}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": kind, "message": "m"}}),
            "{status}"
        );
    }
    // The array form of streaming methods.
    let array = format!("[{}]", google(429, "RESOURCE_EXHAUSTED"));
    let (s, _) = anthropic_error(StatusCode::TOO_MANY_REQUESTS, array.as_bytes()).unwrap();
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    // No status name: the code decides; no body: the HTTP status.
    for (code, kind, client) in [
        (400, "invalid_request_error", 400),
        (401, "authentication_error", 401),
        (403, "permission_error", 403),
        (404, "not_found_error", 404),
        (429, "rate_limit_error", 429),
        (503, "overloaded_error", 529),
        (504, "api_error", 504),
        (500, "api_error", 500),
        (502, "api_error", 500),
    ] {
        let status = StatusCode::from_u16(code).unwrap();
        let (s, body) = anthropic_error(status, b"<html>Bad Gateway</html>").unwrap();
        assert_eq!(s.as_u16(), client, "{code}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], kind, "{code}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&code.to_string())
        );
        let coded = json!({"error": {"code": code, "message": "x"}}).to_string();
        let (s, _) = anthropic_error(StatusCode::BAD_REQUEST, coded.as_bytes()).unwrap();
        assert_eq!(s.as_u16(), client, "coded {code}");
    }
    // The model's own errors pass through; successes are not errors.
    let anthropic = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: field required"}}"#;
    assert!(anthropic_error(StatusCode::BAD_REQUEST, anthropic).is_none());
    assert!(
        anthropic_error(StatusCode::OK, google(429, "RESOURCE_EXHAUSTED").as_bytes()).is_none()
    );
}
