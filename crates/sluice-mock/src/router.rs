//! Per-request handling: routing, the `x-mock-*` fault headers, auth, recording, and the headers
//! every reply carries (`request-id`, the rate-limit set).

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::batches;
use crate::body::{DropConnection, EventStream, MockBody, StreamEnd};
use crate::messages::{
    StreamFault, input_estimate, input_usage, output_tokens, render_count, render_message,
    render_stream, validate,
};
use crate::models::{self, PageQuery};
use crate::state::{PendingReply, RecordedRequest, State};
use crate::wire::{ApiError, error_body, error_for_status, rfc3339, unix_now};

/// The upstream's body limit for Messages calls.
const MESSAGES_BODY_LIMIT: usize = 32 * 1024 * 1024;
/// The upstream's body limit for batch creation (and a ceiling for everything else).
const OTHER_BODY_LIMIT: usize = 256 * 1024 * 1024;
/// `POST /_mock/faults` takes a few bytes of JSON.
const FAULTS_BODY_LIMIT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Messages,
    CountTokens,
    Models,
    Model(&'a str),
    BatchList,
    BatchCreate,
    BatchGet(&'a str),
    BatchDelete(&'a str),
    BatchCancel(&'a str),
    BatchResults(&'a str),
    NotFound,
}

fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Route::NotFound;
    };
    let mut it = rest.split('/');
    let segs = (it.next(), it.next(), it.next(), it.next(), it.next());
    let m = method;
    match segs {
        (Some("messages"), None, ..) if m == Method::POST => Route::Messages,
        (Some("messages"), Some("count_tokens"), None, ..) if m == Method::POST => {
            Route::CountTokens
        }
        (Some("models"), None, ..) if m == Method::GET => Route::Models,
        (Some("models"), Some(id), None, ..) if m == Method::GET && !id.is_empty() => {
            Route::Model(id)
        }
        (Some("messages"), Some("batches"), None, ..) if m == Method::GET => Route::BatchList,
        (Some("messages"), Some("batches"), None, ..) if m == Method::POST => Route::BatchCreate,
        (Some("messages"), Some("batches"), Some(id), None, _) if !id.is_empty() => match *m {
            Method::GET => Route::BatchGet(id),
            Method::DELETE => Route::BatchDelete(id),
            _ => Route::NotFound,
        },
        (Some("messages"), Some("batches"), Some(id), Some("cancel"), None)
            if m == Method::POST =>
        {
            Route::BatchCancel(id)
        }
        (Some("messages"), Some("batches"), Some(id), Some("results"), None)
            if m == Method::GET =>
        {
            Route::BatchResults(id)
        }
        _ => Route::NotFound,
    }
}

/// The `x-mock-*` request headers.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) status: Option<u16>,
    pub(crate) latency: Duration,
    pub(crate) event_interval: Option<Duration>,
    pub(crate) error_after: Option<usize>,
    pub(crate) drop_after: Option<usize>,
    pub(crate) output_tokens: Option<u64>,
    /// Apply `status` (default 529) only to the first N requests with this body.
    pub(crate) fail_first: Option<u64>,
    pub(crate) hang: bool,
}

impl Faults {
    /// The error status these faults inject for `body`, if any: `x-mock-status`, or with
    /// `x-mock-fail-first: N` that status (default 529) for the first N requests with this
    /// body only, so a retry of the same body succeeds once N attempts have failed. The
    /// Anthropic, Bedrock and Vertex routes share the count.
    pub(crate) fn injected_status(&self, state: &State, body: &[u8]) -> Option<u16> {
        let Some(n) = self.fail_first else {
            return self.status;
        };
        let key = BuildHasherDefault::<DefaultHasher>::default().hash_one(body);
        let mut failed = crate::state::lock(&state.failed);
        let seen = failed.entry(key).or_insert(0);
        if *seen < n {
            *seen += 1;
            Some(self.status.unwrap_or(529))
        } else {
            None
        }
    }

    /// How a streamed message reply plays these faults out: the events it renders, and how the
    /// stream ends (on the Anthropic and the Vertex route alike).
    pub(crate) fn stream_plan(&self) -> (StreamFault, StreamEnd) {
        if self.hang {
            (StreamFault::Empty, StreamEnd::Hang)
        } else if let Some(k) = self.drop_after {
            (StreamFault::Truncate(k), StreamEnd::Drop)
        } else if let Some(k) = self.error_after {
            (StreamFault::ErrorAfter(k), StreamEnd::Finish)
        } else {
            (StreamFault::None, StreamEnd::Finish)
        }
    }
}

pub(crate) fn parse_faults(headers: &HeaderMap) -> Result<Faults, ApiError> {
    let mut f = Faults::default();
    for (name, value) in headers {
        let Some(knob) = name.as_str().strip_prefix("x-mock-") else {
            continue;
        };
        if knob == "hang" {
            f.hang = true;
            continue;
        }
        let n: u64 = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ApiError::invalid(format!("{name}: expected a non-negative integer")))?;
        let as_usize = || usize::try_from(n).unwrap_or(usize::MAX);
        match knob {
            "status" => {
                let status = u16::try_from(n)
                    .ok()
                    .filter(|s| *s == 200 || (400..=599).contains(s))
                    .ok_or_else(|| {
                        ApiError::invalid(format!("{name}: expected 200 or 400..=599"))
                    })?;
                f.status = (status != 200).then_some(status);
            }
            "latency-ms" => f.latency = Duration::from_millis(n),
            "event-interval-ms" => f.event_interval = Some(Duration::from_millis(n)),
            "stream-error-after" => f.error_after = Some(as_usize()),
            "drop-after" => f.drop_after = Some(as_usize()),
            "output-tokens" => f.output_tokens = Some(n),
            "fail-first" => f.fail_first = Some(n),
            // Rejecting unknown knobs catches typos in tests that would otherwise pass silently.
            _ => return Err(ApiError::invalid(format!("{name}: unknown mock header"))),
        }
    }
    Ok(f)
}

/// What a handler produced, before the common headers are added.
enum Reply {
    Json(u16, String),
    Jsonl(String),
    Stream(Vec<Bytes>, Duration, StreamEnd),
    /// A non-streaming reply cut short: its headers, part of its body, then a dropped connection.
    Cut(u16, &'static str, Bytes),
    /// Never answer.
    Hang,
}

/// Counts a batch GET as in flight while it lives (dropped on every way out, including a
/// client that goes away during the latency).
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn start(state: &'a State) -> Self {
        let now = state
            .stats
            .batch_gets_in_flight
            .fetch_add(1, Ordering::SeqCst)
            + 1;
        state.stats.batch_gets_peak.fetch_max(now, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .stats
            .batch_gets_in_flight
            .fetch_sub(1, Ordering::SeqCst);
    }
}

/// The hyper service.
pub(crate) async fn handle(
    state: Arc<State>,
    peer: Option<SocketAddr>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, DropConnection> {
    let request_id = state.next_request_id();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();

    if path == "/_mock/faults" {
        let Ok(body) = Limited::new(body, FAULTS_BODY_LIMIT).collect().await else {
            return Err(DropConnection);
        };
        let reply = runtime_faults(&state, &parts.method, peer, &body.to_bytes(), &request_id);
        return Ok(respond(&state, reply, &request_id, false));
    }
    if let Some(what) = path.strip_prefix("/_mock/") {
        let reply = introspect(&state, &parts.method, what, &request_id);
        return Ok(respond(&state, reply, &request_id, false));
    }

    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let route = route(&parts.method, path);
    if route == Route::Messages {
        state.stats.messages.fetch_add(1, Ordering::Relaxed);
    }

    let limit = match route {
        Route::Messages | Route::CountTokens => MESSAGES_BODY_LIMIT,
        _ => OTHER_BODY_LIMIT,
    };
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            let (kind, message) = error_for_status(413);
            let reply = Reply::Json(413, error_body(kind, message, &request_id));
            return Ok(respond(&state, reply, &request_id, true));
        }
        // The client broke off its own request; there is nobody to answer.
        Err(_) => return Err(DropConnection),
    };

    let presented = presented_key(&parts.headers);
    if let Some(k) = presented {
        state.count_key(k);
    }

    if state.opts.record {
        state.record(RecordedRequest {
            method: parts.method.as_str().to_owned(),
            path: path.to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    // Recorded verbatim, credentials included: tests must be able to check that
                    // the gateway sent exactly the right upstream key. The mock's keys are test
                    // fixtures, and recording is off unless asked for.
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (n.as_str().to_owned(), v)
                })
                .collect(),
            body: body.clone(),
        });
    }

    // Claude on other clouds: the same model behind AWS Bedrock's and Google Vertex AI's wire.
    if let Some(reply) = crate::bedrock::handle(&state, &parts, &body, &request_id).await {
        return reply;
    }
    if let Some(reply) = crate::vertex::handle(&state, &parts, &body, &request_id).await {
        return reply;
    }

    let mut guard = PendingReply {
        state: &state,
        armed: route == Route::Messages,
    };

    let _in_flight = matches!(route, Route::BatchGet(_)).then(|| InFlight::start(&state));
    let faults = parse_faults(&parts.headers);
    let latency = state.opts.latency + faults.as_ref().map_or(Duration::ZERO, |f| f.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let reply = match faults {
        Err(e) => error_reply(&e, &request_id),
        Ok(faults) => {
            let reply = dispatch(
                &state,
                route,
                &parts.headers,
                parts.uri.query(),
                &body,
                &faults,
                &request_id,
            );
            if matches!(reply, Reply::Hang) {
                std::future::pending::<()>().await;
            }
            guard.armed = false;
            return finish(&state, reply, &request_id, &faults);
        }
    };
    guard.armed = false;
    Ok(respond(&state, reply, &request_id, true))
}

fn dispatch(
    state: &Arc<State>,
    route: Route<'_>,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &Bytes,
    faults: &Faults,
    request_id: &str,
) -> Reply {
    let keys_set = state.opts.api_key.is_some() || !state.opts.api_keys.is_empty();
    if keys_set
        && !state
            .opts
            .api_key
            .iter()
            .chain(&state.opts.api_keys)
            .any(|k| authorized(headers, k))
    {
        let (kind, message) = error_for_status(401);
        return Reply::Json(401, error_body(kind, message, request_id));
    }
    if let Some(status) = presented_key(headers).and_then(|k| state.key_status(k))
        && status != 200
    {
        let (kind, message) = error_for_status(status);
        return Reply::Json(status, error_body(kind, message, request_id));
    }
    if let Some(status) = state.global_status() {
        let (kind, message) = error_for_status(status);
        return Reply::Json(status, error_body(kind, message, request_id));
    }
    let status = faults.injected_status(state, body);
    if let Some(status) = status {
        let (kind, message) = error_for_status(status);
        return Reply::Json(status, error_body(kind, message, request_id));
    }
    if faults.hang && route != Route::Messages {
        return Reply::Hang;
    }
    let host = || {
        headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map_or_else(|| state.local_addr.to_string(), str::to_owned)
    };
    let result = match route {
        Route::Messages => {
            let scope = presented_key(headers).unwrap_or_default();
            return messages(state, scope, body, faults, request_id);
        }
        Route::CountTokens => validate(body, false)
            .map(|_| Reply::Json(200, render_count(input_estimate(body))))
            .map_err(ApiError::invalid),
        Route::Models => PageQuery::parse(query)
            .map(|q| json_reply(&models::list(&q)))
            .map_err(ApiError::invalid),
        Route::Model(id) => models::get(id)
            .map(|m| json_reply(&m))
            .ok_or_else(|| ApiError::not_found(format!("model: {id}"))),
        Route::BatchList => PageQuery::parse(query)
            .map(|q| json_reply(&batches::list(state, &q, &host())))
            .map_err(ApiError::invalid),
        Route::BatchCreate => batches::create(state, body, request_id).map(|v| json_reply(&v)),
        Route::BatchGet(id) => batches::get(state, id, &host()).map(|v| json_reply(&v)),
        Route::BatchDelete(id) => batches::delete(state, id).map(|v| json_reply(&v)),
        Route::BatchCancel(id) => batches::cancel(state, id, &host()).map(|v| json_reply(&v)),
        Route::BatchResults(id) => batches::results(state, id).map(Reply::Jsonl),
        Route::NotFound => Err(ApiError::not_found("Not found")),
    };
    result.unwrap_or_else(|e| error_reply(&e, request_id))
}

/// The key a request presents, as `x-api-key` or `Authorization: Bearer`.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
}

/// Accepts the key as `x-api-key` or as `Authorization: Bearer`, as the upstream does.
fn authorized(headers: &HeaderMap, expected: &str) -> bool {
    let api_key = headers.get("x-api-key").map(HeaderValue::as_bytes);
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    api_key == Some(expected.as_bytes()) || bearer == Some(expected.as_bytes())
}

fn messages(
    state: &Arc<State>,
    scope: &str,
    body: &Bytes,
    faults: &Faults,
    request_id: &str,
) -> Reply {
    let req = match validate(body, true) {
        Ok(req) => req,
        Err(message) => return error_reply(&ApiError::invalid(message), request_id),
    };
    if faults.hang && !req.stream {
        return Reply::Hang;
    }
    let mut usage = match input_usage(state, scope, body, &req.model) {
        Ok(usage) => usage,
        Err(message) => return error_reply(&ApiError::invalid(message), request_id),
    };
    let (output, capped) = output_tokens(
        faults.output_tokens.or(state.opts.output_tokens),
        body.len(),
        req.max_tokens,
    );
    usage.output = output;
    let msg_id = state.next_message_number();
    if !req.stream {
        return Reply::Json(
            200,
            render_message(msg_id, &req.model, &usage, capped, "standard"),
        );
    }
    let (fault, end) = faults.stream_plan();
    let events = render_stream(msg_id, &req.model, &usage, capped, fault);
    let interval = faults.event_interval.unwrap_or(state.opts.event_interval);
    Reply::Stream(events, interval, end)
}

fn json_reply(v: &Value) -> Reply {
    Reply::Json(200, v.to_string())
}

fn error_reply(e: &ApiError, request_id: &str) -> Reply {
    Reply::Json(e.status, error_body(e.kind, &e.message, request_id))
}

/// Applies `x-mock-drop-after` to a non-streaming reply, then builds the response.
fn finish(
    state: &Arc<State>,
    reply: Reply,
    request_id: &str,
    faults: &Faults,
) -> Result<Response<MockBody>, DropConnection> {
    let half = |s: String| {
        let all = Bytes::from(s.into_bytes());
        all.slice(..all.len() / 2)
    };
    let reply = match (faults.drop_after, reply) {
        // A stream already carries its own cut.
        (None, reply) | (_, reply @ (Reply::Stream(..) | Reply::Cut(..) | Reply::Hang)) => reply,
        (Some(0), _) => return Err(DropConnection),
        (Some(_), Reply::Json(status, s)) => Reply::Cut(status, "application/json", half(s)),
        (Some(_), Reply::Jsonl(s)) => Reply::Cut(200, JSONL, half(s)),
    };
    Ok(respond(state, reply, request_id, true))
}

const ORG_ID: &str = "2d4c0b5e-8c1a-4f1e-9d4e-0a1b2c3d4e5f";

const JSONL: &str = "application/x-jsonl";

/// Static limits, as `ratelimit_headers.txt`; only the reset time moves.
/// (limit header, limit, remaining header, remaining, reset header)
const RATE_LIMITS: [(&str, &str, &str, &str, &str); 4] = [
    (
        "anthropic-ratelimit-requests-limit",
        "4000",
        "anthropic-ratelimit-requests-remaining",
        "3999",
        "anthropic-ratelimit-requests-reset",
    ),
    (
        "anthropic-ratelimit-input-tokens-limit",
        "2000000",
        "anthropic-ratelimit-input-tokens-remaining",
        "1998000",
        "anthropic-ratelimit-input-tokens-reset",
    ),
    (
        "anthropic-ratelimit-output-tokens-limit",
        "400000",
        "anthropic-ratelimit-output-tokens-remaining",
        "399000",
        "anthropic-ratelimit-output-tokens-reset",
    ),
    (
        "anthropic-ratelimit-tokens-limit",
        "2400000",
        "anthropic-ratelimit-tokens-remaining",
        "2397000",
        "anthropic-ratelimit-tokens-reset",
    ),
];

/// Builds the response with the headers every reply carries; `upstream_headers` adds the
/// organisation and rate-limit headers of the real API (not on introspection replies).
fn respond(
    state: &Arc<State>,
    reply: Reply,
    request_id: &str,
    upstream_headers: bool,
) -> Response<MockBody> {
    let stream = |chunks, interval, end| {
        let s = EventStream::new(chunks, interval, end, Arc::clone(state));
        MockBody::Events(Box::new(s))
    };
    let (status, content_type, body, is_stream) = match reply {
        Reply::Json(status, s) => (status, "application/json", MockBody::full(s), false),
        Reply::Jsonl(s) => (200, JSONL, MockBody::full(s), false),
        Reply::Stream(events, interval, end) => (
            200,
            "text/event-stream; charset=utf-8",
            stream(events, interval, end),
            true,
        ),
        Reply::Cut(status, content_type, partial) => (
            status,
            content_type,
            stream(vec![partial], Duration::ZERO, StreamEnd::Drop),
            false,
        ),
        // Unreachable in practice: hangs are awaited before responding.
        Reply::Hang => (200, "application/json", MockBody::full(Bytes::new()), false),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if is_stream {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static("request-id"), v);
    }
    if status == 429 {
        h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if upstream_headers && state.opts.ratelimit_headers {
        h.insert(
            HeaderName::from_static("anthropic-organization-id"),
            HeaderValue::from_static(ORG_ID),
        );
        let reset = HeaderValue::from_str(&rfc3339(unix_now() + 1)).ok();
        for (limit, limit_v, remaining, remaining_v, reset_name) in RATE_LIMITS {
            h.insert(
                HeaderName::from_static(limit),
                HeaderValue::from_static(limit_v),
            );
            let value = match state.opts.input_tokens_remaining {
                Some(n) if remaining == "anthropic-ratelimit-input-tokens-remaining" => {
                    HeaderValue::from(n)
                }
                _ => HeaderValue::from_static(remaining_v),
            };
            h.insert(HeaderName::from_static(remaining), value);
            if let Some(reset) = &reset {
                h.insert(HeaderName::from_static(reset_name), reset.clone());
            }
        }
    }
    resp
}

fn introspect(state: &Arc<State>, method: &Method, what: &str, request_id: &str) -> Reply {
    match (method, what) {
        (&Method::GET, "requests") => {
            let list: Vec<Value> = state
                .recorded()
                .iter()
                .map(RecordedRequest::to_json)
                .collect();
            Reply::Json(200, Value::from(list).to_string())
        }
        (&Method::DELETE, "requests") => {
            state.clear_recorded();
            Reply::Json(200, "{}".to_owned())
        }
        (&Method::GET, "stats") => {
            let s = state.stats.snapshot();
            Reply::Json(
                200,
                json!({
                    "requests": s.requests,
                    "messages": s.messages,
                    "streams_cancelled": s.streams_cancelled,
                    "batch_gets_peak": s.batch_gets_peak,
                    "by_key": state.by_key(),
                })
                .to_string(),
            )
        }
        _ => error_reply(&ApiError::not_found("Not found"), request_id),
    }
}

/// `GET /_mock/faults` shows, and `POST /_mock/faults` with `{"status": N}` sets, the status
/// every `/v1/…` call gets from then on (after auth, before any `x-mock-*` header);
/// `{"status": null}` (or 200) ends it. It changes the mock for every client, so only a
/// loopback peer may use it.
fn runtime_faults(
    state: &State,
    method: &Method,
    peer: Option<SocketAddr>,
    body: &Bytes,
    request_id: &str,
) -> Reply {
    if !peer.is_some_and(|p| p.ip().is_loopback()) {
        let (kind, _) = error_for_status(403);
        return Reply::Json(
            403,
            error_body(kind, "/_mock/faults is loopback only", request_id),
        );
    }
    let current = |state: &State| json!({ "status": state.global_status() }).to_string();
    match *method {
        Method::GET => Reply::Json(200, current(state)),
        Method::POST => {
            let status =
                serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| match v.get("status") {
                        Some(Value::Null) => Some(None),
                        Some(n) => n
                            .as_u64()
                            .and_then(|n| u16::try_from(n).ok())
                            .filter(|s| *s == 200 || (400..=599).contains(s))
                            .map(|s| (s != 200).then_some(s)),
                        None => None,
                    });
            match status {
                Some(status) => {
                    state.set_global_status(status);
                    Reply::Json(200, current(state))
                }
                None => error_reply(
                    &ApiError::invalid(
                        r#"expected {"status": N} with N 200 or 400..=599, or {"status": null}"#,
                    ),
                    request_id,
                ),
            }
        }
        _ => error_reply(&ApiError::not_found("Not found"), request_id),
    }
}
