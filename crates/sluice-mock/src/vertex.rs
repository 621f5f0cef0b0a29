//! Claude on Google Vertex AI: `rawPredict`, `streamRawPredict` and a service-account token endpoint.
//!
//! | route | what |
//! |---|---|
//! | `POST /token` | OAuth token endpoint: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<RS256 JWT>`; the claims are always checked, the signature when [`crate::MockOptions::gcp_public_key_der`] is set |
//! | `GET /computeMetadata/v1/instance/service-accounts/default/token` | the metadata server's token, with `Metadata-Flavor: Google` |
//! | `POST /v1/projects/{p}/locations/{r}/publishers/anthropic/models/{model}:rawPredict` | Messages; SSE when the body says `"stream":true` (the model server decides, as on Vertex) |
//! | `POST …/models/{model}:streamRawPredict` | the same |
//! | `POST …/models/count-tokens:rawPredict` | token counting (`model` in the body) |
//!
//! Both token routes take `?expires_in=N` (seconds, default 3600) so tests can get short-lived
//! tokens. Tokens look like `ya29.mock-<n>.<expiry, Unix ms>`; the predict routes accept only
//! tokens this mock issued and has not seen expire, else a 401 in Google's shape.
//!
//! Errors raised by "Vertex" itself (auth, a wrong `anthropic_version`, a `model` in a Messages
//! body, `x-mock-status`) are in Google's shape (`{"error":{"code","message","status"}}`, an
//! array of that on `streamRawPredict`); errors of the "model" (missing `max_tokens`, a stream
//! cut by `x-mock-stream-error-after`) are Anthropic-shaped, as Vertex passes them through.
//! The `x-mock-*` knobs of the Anthropic routes apply (`status`, `fail-first`, `latency-ms`,
//! `event-interval-ms`, `stream-error-after`, `drop-after`, `output-tokens`, `hang`). Usage and
//! the prompt cache are as on the Anthropic route, with the project as the cache scope (a
//! project's prompt cache is its own), and `by_key` stats count requests per project.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use sluice_core::{Clock, SystemClock};

use crate::body::{DropConnection, EventStream, MockBody, StreamEnd};
use crate::messages::{
    JsonStr, input_estimate, input_usage, output_tokens, render_count, render_message,
    render_stream,
};
use crate::router::{Faults, parse_faults};
use crate::state::{PendingReply, State, lock};
use crate::wire::error_for_status;

/// A test-only Google service-account key file (RSA-2048, `project_id` `sluice-test`); it grants
/// nothing anywhere. Its `token_uri` points nowhere (`http://127.0.0.1:1/token`): tests write a
/// copy with the mock's `/token` URL.
pub const VERTEX_SA_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/vertex-service-account.json"
);

/// The public key of [`VERTEX_SA_FIXTURE`] as DER `RSAPublicKey`, for
/// [`crate::MockOptions::gcp_public_key_der`].
pub const VERTEX_SA_PUBLIC_KEY_DER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/vertex-service-account.pub.der"
);

/// The version Vertex requires in the body.
const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Clock skew tolerated on `iat` / `exp`, as Google does.
const SKEW_SECS: i64 = 60;
/// Google's maximum assertion lifetime.
const MAX_ASSERTION_SECS: i64 = 3600;

/// Answers the request when it is for a Vertex endpoint; `None` leaves it to the Anthropic routes.
pub(crate) async fn handle(
    state: &Arc<State>,
    parts: &http::request::Parts,
    body: &Bytes,
    _request_id: &str,
) -> Option<Result<Response<MockBody>, DropConnection>> {
    let path = parts.uri.path();
    if path == "/token" {
        return Some(Ok(token_endpoint(state, parts, body)));
    }
    if path == METADATA_TOKEN_PATH {
        return Some(Ok(metadata_endpoint(state, parts)));
    }
    let rest = path.strip_prefix("/v1/projects/")?;
    Some(predict(state, parts, rest, body).await)
}

fn json_response(status: u16, body: String) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response<MockBody> {
    json_response(
        status,
        json!({"error": error, "error_description": description}).to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// The value of form field `name` in an `application/x-www-form-urlencoded` body (or query).
fn form_value(form: &[u8], name: &str) -> Option<String> {
    form.split(|b| *b == b'&').find_map(|pair| {
        let (k, v) = match memchr::memchr(b'=', pair) {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        (percent_decode(k)? == name)
            .then(|| percent_decode(v))
            .flatten()
    })
}

/// Decodes `%XX` escapes and `+` (a space in forms); `None` on a malformed escape or non-UTF-8.
fn percent_decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'%' => {
                let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `?expires_in=N` of a token request, else an hour.
fn requested_ttl(parts: &http::request::Parts) -> u64 {
    parts
        .uri
        .query()
        .and_then(|q| form_value(q.as_bytes(), "expires_in"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3600)
}

/// Issues a token valid for `ttl` seconds and remembers it.
fn issue(state: &State, ttl: u64) -> Response<MockBody> {
    let ttl_ms = i64::try_from(ttl.saturating_mul(1000)).unwrap_or(i64::MAX);
    let expires_ms = SystemClock.unix_ms().saturating_add(ttl_ms);
    let token = {
        let mut tokens = lock(&state.vertex_tokens);
        // The expiry rides in the token itself, so checking it needs no other state.
        let token = format!("ya29.mock-{}.{expires_ms}", tokens.len() + 1);
        tokens.insert(token.clone());
        token
    };
    json_response(
        200,
        json!({"access_token": token, "expires_in": ttl, "token_type": "Bearer"}).to_string(),
    )
}

/// Whether `token` was issued here and has not expired.
fn token_valid(state: &State, token: &str) -> bool {
    let expires_ms = token
        .rsplit_once('.')
        .and_then(|(_, exp)| exp.parse::<i64>().ok());
    matches!(expires_ms, Some(exp) if exp > SystemClock.unix_ms())
        && lock(&state.vertex_tokens).contains(token)
}

fn token_endpoint(state: &State, parts: &http::request::Parts, body: &Bytes) -> Response<MockBody> {
    if parts.method != Method::POST {
        return oauth_error(405, "invalid_request", "The token endpoint takes POST.");
    }
    if form_value(body, "grant_type").as_deref() != Some(JWT_BEARER) {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "Invalid grant_type: expected urn:ietf:params:oauth:grant-type:jwt-bearer",
        );
    }
    let Some(assertion) = form_value(body, "assertion") else {
        return oauth_error(
            400,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    if let Err(why) = check_assertion(state, &assertion) {
        return oauth_error(400, "invalid_grant", &why);
    }
    issue(state, requested_ttl(parts))
}

fn decode_part(part: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| "Invalid JWT: a part is not base64url.".to_owned())
}

/// Checks a service-account JWT assertion as Google's token endpoint does.
fn check_assertion(state: &State, assertion: &str) -> Result<(), String> {
    let mut parts = assertion.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("Invalid JWT: expected three dot-separated parts.".into());
    };
    let header: Value = serde_json::from_slice(&decode_part(header)?)
        .map_err(|_| "Invalid JWT header.".to_owned())?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err("Invalid JWT: alg must be RS256.".into());
    }
    let claims_json: Value = serde_json::from_slice(&decode_part(claims)?)
        .map_err(|_| "Invalid JWT claims.".to_owned())?;
    let text = |k: &str| claims_json.get(k).and_then(Value::as_str).unwrap_or("");
    let number = |k: &str| claims_json.get(k).and_then(Value::as_i64);
    if text("iss").is_empty() {
        return Err("Invalid JWT: iss is required.".into());
    }
    if !text("scope").split(' ').any(|s| s == SCOPE) {
        return Err(format!("Invalid JWT: scope must include {SCOPE}."));
    }
    let aud = text("aud");
    let aud_path = aud.split('?').next().unwrap_or(aud);
    if !aud_path.ends_with("/token") {
        return Err("Invalid JWT: aud must be the token endpoint.".into());
    }
    let (Some(iat), Some(exp)) = (number("iat"), number("exp")) else {
        return Err("Invalid JWT: iat and exp are required.".into());
    };
    let now = SystemClock.unix_ms().div_euclid(1000);
    if exp <= now - SKEW_SECS {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.".into());
    }
    if iat > now + SKEW_SECS
        || iat < now - MAX_ASSERTION_SECS - SKEW_SECS
        || exp - iat > MAX_ASSERTION_SECS
    {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.".into());
    }
    if let Some(der) = &state.opts.gcp_public_key_der {
        let signature = decode_part(signature)?;
        let signed = assertion
            .rsplit_once('.')
            .map_or(assertion, |(input, _)| input);
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| "Invalid JWT Signature.".to_owned())?;
    }
    Ok(())
}

fn metadata_endpoint(state: &State, parts: &http::request::Parts) -> Response<MockBody> {
    if parts.method != Method::GET {
        return oauth_error(405, "invalid_request", "The metadata server takes GET.");
    }
    let flavor = parts
        .headers
        .get("metadata-flavor")
        .and_then(|v| v.to_str().ok());
    if flavor != Some("Google") {
        // The real server answers a plain-text 403 here.
        let mut resp = Response::new(MockBody::full("Missing Metadata-Flavor:Google header."));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return resp;
    }
    issue(state, requested_ttl(parts))
}

// ---------------------------------------------------------------------------------------------
// Predict

/// Google's error reply for HTTP status `code`: its status name and the HTTP status it goes with
/// (Google has no 529; an overloaded Vertex says 503 UNAVAILABLE).
fn google_status(code: u16) -> (u16, &'static str, &'static str) {
    match code {
        400 => (
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
        ),
        401 => (
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        ),
        403 => (
            403,
            "PERMISSION_DENIED",
            "Permission 'aiplatform.endpoints.predict' denied on resource (or it may not exist).",
        ),
        404 => (404, "NOT_FOUND", "Publisher Model was not found."),
        409 => (409, "ABORTED", "The operation was aborted."),
        429 => (
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model with base model: anthropic-claude. Please submit a quota increase request.",
        ),
        499 => (499, "CANCELLED", "The operation was cancelled."),
        501 => (501, "UNIMPLEMENTED", "Operation is not implemented."),
        503 | 529 => (503, "UNAVAILABLE", "The service is currently unavailable."),
        504 => (504, "DEADLINE_EXCEEDED", "Deadline exceeded."),
        402..=499 => (code, "FAILED_PRECONDITION", "Precondition check failed."),
        _ => (
            code.clamp(500, 599),
            "INTERNAL",
            "Internal error encountered.",
        ),
    }
}

/// A Google-shaped error reply; `message` overrides the canned one. Streaming calls get the
/// array form, as Google's streaming methods answer.
fn google_error(code: u16, message: Option<&str>, array: bool) -> Response<MockBody> {
    let (status, name, canned) = google_status(code);
    let error =
        json!({"error": {"code": status, "message": message.unwrap_or(canned), "status": name}});
    let body = if array { json!([error]) } else { error };
    json_response(status, body.to_string())
}

/// The route of a `/v1/projects/…` path.
struct Route<'a> {
    project: &'a str,
    model: &'a str,
    streaming_method: bool,
    count_tokens: bool,
}

fn parse_route(rest: &str) -> Option<Route<'_>> {
    let mut segs = rest.split('/');
    let project = segs.next().filter(|s| !s.is_empty())?;
    let ok = segs.next() == Some("locations")
        && segs.next().is_some_and(|r| !r.is_empty())
        && segs.next() == Some("publishers")
        && segs.next() == Some("anthropic")
        && segs.next() == Some("models");
    let (model, method) = segs.next()?.rsplit_once(':')?;
    if !ok || segs.next().is_some() || model.is_empty() {
        return None;
    }
    let count_tokens = model == "count-tokens";
    let streaming_method = match method {
        "rawPredict" => false,
        "streamRawPredict" if !count_tokens => true,
        _ => return None,
    };
    Some(Route {
        project,
        model,
        streaming_method,
        count_tokens,
    })
}

/// The fields of a Vertex request body the mock looks at.
#[derive(Deserialize)]
struct VertexRequest<'a> {
    #[serde(borrow, default)]
    model: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    anthropic_version: Option<JsonStr<'a>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    messages: Option<IgnoredAny>,
    #[serde(default)]
    stream: Option<bool>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

async fn predict(
    state: &Arc<State>,
    parts: &http::request::Parts,
    rest: &str,
    body: &Bytes,
) -> Result<Response<MockBody>, DropConnection> {
    let Some(route) = parse_route(rest) else {
        return Ok(google_error(
            404,
            Some(&format!(
                "The requested URL {} was not found.",
                parts.uri.path()
            )),
            false,
        ));
    };
    if parts.method != Method::POST {
        return Ok(google_error(404, Some("Method not found."), false));
    }
    if !route.count_tokens {
        state.stats.messages.fetch_add(1, Ordering::Relaxed);
    }
    state.count_key(route.project);
    let array = route.streaming_method;

    let faults = match parse_faults(&parts.headers) {
        Ok(f) => f,
        Err(e) => return Ok(google_error(400, Some(&e.message), array)),
    };
    let mut pending = PendingReply {
        state,
        armed: !route.count_tokens,
    };
    let latency = state.opts.latency + faults.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let reply = answer(state, parts, &route, body, &faults).await;
    pending.armed = false;
    reply
}

async fn answer(
    state: &Arc<State>,
    parts: &http::request::Parts,
    route: &Route<'_>,
    body: &Bytes,
    faults: &Faults,
) -> Result<Response<MockBody>, DropConnection> {
    let array = route.streaming_method;
    if !bearer(&parts.headers).is_some_and(|t| token_valid(state, t)) {
        return Ok(google_error(401, None, array));
    }
    let status = faults.injected_status(state, body);
    if let Some(status) = status {
        return Ok(google_error(status, None, array));
    }

    let req: VertexRequest<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("Invalid JSON payload received. {e}");
            return Ok(google_error(400, Some(&message), array));
        }
    };
    let version = req.anthropic_version.as_ref().map(|v| v.0.as_ref());
    if version != Some(ANTHROPIC_VERSION) {
        let message =
            format!("anthropic_version: expected \"{ANTHROPIC_VERSION}\", got {version:?}");
        return Ok(google_error(400, Some(&message), array));
    }
    if route.count_tokens {
        if req.model.is_none() {
            return Ok(google_error(400, Some("model: field required"), array));
        }
        if req.messages.is_none() {
            return Ok(anthropic_invalid("messages: field required"));
        }
        return Ok(json_response(200, render_count(input_estimate(body))));
    }
    if req.model.is_some() {
        return Ok(google_error(
            400,
            Some("model: the model is named in the URL; the body must not carry it"),
            array,
        ));
    }
    let max_tokens = match req.max_tokens {
        None => return Ok(anthropic_invalid("max_tokens: field required")),
        Some(0) => return Ok(anthropic_invalid("max_tokens: must be greater than 0")),
        Some(n) => n,
    };
    if req.messages.is_none() {
        return Ok(anthropic_invalid("messages: field required"));
    }
    let stream = req.stream.unwrap_or(false);
    if faults.hang && !stream {
        std::future::pending::<()>().await;
    }

    let mut usage = match input_usage(state, route.project, body, route.model) {
        Ok(usage) => usage,
        Err(message) => return Ok(anthropic_invalid(&message)),
    };
    let (output, capped) = output_tokens(
        faults.output_tokens.or(state.opts.output_tokens),
        body.len(),
        max_tokens,
    );
    usage.output = output;
    let msg_id = state.next_message_number();
    if !stream {
        let json = render_message(msg_id, route.model, &usage, capped, "standard");
        return match faults.drop_after {
            None => Ok(json_response(200, json)),
            Some(0) => Err(DropConnection),
            // Headers and half the body, then a cut connection.
            Some(_) => {
                let all = Bytes::from(json);
                let half = all.slice(..all.len() / 2);
                let mut resp = event_response(state, vec![half], Duration::ZERO, StreamEnd::Drop);
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp.headers_mut().remove(CACHE_CONTROL);
                Ok(resp)
            }
        };
    }
    let (fault, end) = faults.stream_plan();
    let events = render_stream(msg_id, route.model, &usage, capped, fault);
    let interval = faults.event_interval.unwrap_or(state.opts.event_interval);
    Ok(event_response(state, events, interval, end))
}

/// The model's own 400, passed through by Vertex in the Anthropic shape (without the
/// `request_id` the Anthropic API adds).
fn anthropic_invalid(message: &str) -> Response<MockBody> {
    let (kind, _) = error_for_status(400);
    json_response(
        400,
        json!({"type": "error", "error": {"type": kind, "message": message}}).to_string(),
    )
}

fn event_response(
    state: &Arc<State>,
    chunks: Vec<Bytes>,
    interval: Duration,
    end: StreamEnd,
) -> Response<MockBody> {
    let stream = EventStream::new(chunks, interval, end, Arc::clone(state));
    let mut resp = Response::new(MockBody::Events(Box::new(stream)));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn routes() {
        let r = parse_route(
            "p1/locations/us-east5/publishers/anthropic/models/claude-x@2025:rawPredict",
        )
        .unwrap();
        assert_eq!((r.project, r.model), ("p1", "claude-x@2025"));
        assert!(!r.streaming_method && !r.count_tokens);
        let r = parse_route("p/locations/global/publishers/anthropic/models/m:streamRawPredict")
            .unwrap();
        assert!(r.streaming_method);
        let r =
            parse_route("p/locations/global/publishers/anthropic/models/count-tokens:rawPredict")
                .unwrap();
        assert!(r.count_tokens);
        for bad in [
            "p/locations/global/publishers/anthropic/models/count-tokens:streamRawPredict",
            "p/locations/global/publishers/google/models/m:rawPredict",
            "p/locations/global/publishers/anthropic/models/m:predict",
            "p/locations/global/publishers/anthropic/models/m",
            "p/locations/global/publishers/anthropic/models/m:rawPredict/x",
            "/locations/global/publishers/anthropic/models/m:rawPredict",
            "p/locations//publishers/anthropic/models/m:rawPredict",
        ] {
            assert!(parse_route(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn forms_decode() {
        let form =
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c";
        assert_eq!(form_value(form, "grant_type").unwrap(), JWT_BEARER);
        assert_eq!(form_value(form, "assertion").unwrap(), "a.b.c");
        assert_eq!(form_value(b"a=x+y&b", "a").unwrap(), "x y");
        assert_eq!(form_value(b"a=x+y&b", "b").unwrap(), "");
        assert!(form_value(b"a=%zz", "a").is_none());
        assert!(form_value(b"a=1", "c").is_none());
    }

    #[test]
    fn google_statuses() {
        assert_eq!(google_status(529).0, 503);
        assert_eq!(google_status(529).1, "UNAVAILABLE");
        assert_eq!(google_status(429).1, "RESOURCE_EXHAUSTED");
        assert_eq!(
            google_status(418),
            (418, "FAILED_PRECONDITION", "Precondition check failed.")
        );
        assert_eq!(google_status(502).1, "INTERNAL");
    }
}
