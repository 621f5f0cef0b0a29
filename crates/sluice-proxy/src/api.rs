//! The drop-in API: routes, the steps every call shares (authenticate, label, read the body,
//! forward), and the Messages, token counting and models endpoints. Batches are in
//! [`crate::batches`].

use crate::call::{CallRecorder, Ending};
use crate::error::GatewayError;
use crate::headers;
use crate::response_cache::{self, Decision};
use crate::state::AppState;
use crate::tap::TapBody;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use sluice_anthropic::{parse_message_request, parse_message_response};
use sluice_config::{Config, PromptCacheMode, ResponseCacheConfig};
use sluice_core::Provider;
use sluice_limits::limiter::{Backend, CallInfo, TenantView};
use sluice_store::LedgerRow;
use sluice_upstream::{Endpoint, UpstreamBody};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Unwrap a step's result or end the call with its error.
macro_rules! step {
    ($call:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $call.fail(e.into()),
        }
    };
}
pub(crate) use step;

/// The gateway's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(models))
        .route(
            "/v1/messages/batches",
            post(crate::batches::create).get(crate::batches::list),
        )
        .route(
            "/v1/messages/batches/{id}",
            get(crate::batches::get_one).delete(crate::batches::delete),
        )
        .route(
            "/v1/messages/batches/{id}/cancel",
            post(crate::batches::cancel),
        )
        .route(
            "/v1/messages/batches/{id}/results",
            get(crate::batches::results),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

/// An authenticated call in progress.
pub(crate) struct Call {
    pub rec: CallRecorder,
    /// Retries were made and the last attempt still failed.
    pub exhausted: bool,
    /// The provider and fallback step of the member that answered.
    pub served: Option<(Provider, u8)>,
    pub request_id: String,
    pub cfg: Arc<Config>,
    pub tenant: Arc<str>,
    pub key_id: Arc<str>,
    /// The tenant's response cache, read when the tenant was resolved (no second lookup).
    pub response_cache: Option<ResponseCacheConfig>,
    /// The tenant may use automatic prompt caching (for some class), read with the tenant.
    pub prompt_cache_maybe: bool,
    /// This call gets prompt-cache markers: decided before admission (which predicts the
    /// reads they earn), used by [`Call::forward`].
    pub prompt_cache: Option<crate::prompt_cache::Auto>,
}

impl Call {
    /// Authenticate and label a call. On failure the response is ready to return; an
    /// unauthenticated call has no tenant to charge, so it is logged but not on the ledger.
    pub fn start(
        s: &AppState,
        parts: &Parts,
        endpoint: &'static str,
    ) -> Result<Self, Box<Response>> {
        let start = Instant::now();
        let request_id = s.next_request_id();
        let cfg = s.config();
        let now_ms = s.clock().unix_ms();
        let refuse = |e: GatewayError| {
            // The control plane audits refused keys (rate-limited; never blocks).
            s.auth_failed(parts, &e);
            tracing::warn!(
                target: "sluice::auth",
                request_id = %request_id,
                endpoint,
                status = e.status().as_u16(),
                reason = %e,
                "call refused before authentication completed"
            );
            Box::new(e.to_response(&request_id))
        };
        let key = crate::auth::presented_key(&parts.headers)
            .and_then(|k| s.keys().authenticate(k, now_ms))
            .map_err(refuse)?;
        let (log_bodies, response_cache, prompt_cache_maybe) = match cfg.tenant(&key.tenant) {
            None => return Err(refuse(GatewayError::TenantUnknown(key.tenant.clone()))),
            Some(t) if !t.enabled => {
                return Err(refuse(GatewayError::TenantDisabled(key.tenant.clone())));
            }
            Some(t) => (
                t.log_bodies,
                t.response_cache,
                t.prompt_cache == PromptCacheMode::Auto || !t.class_prompt_cache.is_empty(),
            ),
        };
        let row = LedgerRow {
            ts_ms: now_ms,
            request_id: request_id.clone(),
            tenant: key.tenant.to_string(),
            key_id: key.id.to_string(),
            endpoint,
            upstream: Some(s.upstream().name().to_owned()),
            ..LedgerRow::default()
        };
        let mut rec = CallRecorder::new(s.clone(), row, start, log_bodies);
        // The prompt-cache opt-out is checked here, with the other x-sluice-* headers, so a
        // misspelt one is refused before any admission or cache lookup, on every path.
        let checked = crate::prompt_cache::check_header(&parts.headers)
            .and_then(|()| feature(&parts.headers));
        match checked {
            Ok(f) => rec.set_feature(f),
            Err(e) => {
                let resp = e.to_response(&request_id);
                rec.finish(Ending {
                    status: e.status().as_u16(),
                    outcome: e.outcome(),
                    error_type: Some(e.kind().as_str().to_owned()),
                    ..Ending::default()
                });
                return Err(Box::new(resp));
            }
        }
        Ok(Self {
            rec,
            exhausted: false,
            served: None,
            request_id,
            cfg,
            tenant: key.tenant,
            key_id: key.id,
            response_cache,
            prompt_cache_maybe,
            prompt_cache: None,
        })
    }

    /// End the call with a gateway error.
    pub fn fail(&mut self, e: GatewayError) -> Response {
        match &e {
            GatewayError::Internal(_) | GatewayError::Upstream(_) | GatewayError::UpstreamBody => {
                tracing::warn!(request_id = %self.request_id, error = %e, "call failed");
            }
            _ => {}
        }
        self.rec.finish(Ending {
            status: e.status().as_u16(),
            outcome: e.outcome(),
            error_type: Some(e.kind().as_str().to_owned()),
            ..Ending::default()
        });
        let mut resp = e.to_response(&self.request_id);
        if self.exhausted {
            resp.headers_mut()
                .insert(SHOULD_RETRY.clone(), HeaderValue::from_static("false"));
        }
        resp
    }

    /// Read the whole request body, refusing it past the configured limit.
    pub async fn read_body(&mut self, parts: &Parts, body: Body) -> Result<Bytes, GatewayError> {
        let max = self.cfg.server.max_body_bytes;
        // Refuse a declared oversize body before reading a byte of it.
        if let Some(len) = declared_len(&parts.headers)
            && len > max as u64
        {
            return Err(GatewayError::TooLarge(max));
        }
        // A total time, not an idle one: a body dribbled a byte at a time stays "active" forever.
        let limit = Duration::from_millis(self.cfg.server.body_read_timeout_ms);
        let collected = match tokio::time::timeout(limit, Limited::new(body, max).collect()).await {
            Ok(c) => c,
            Err(_) => {
                tracing::warn!(
                    request_id = %self.request_id,
                    tenant = %self.tenant,
                    timeout_ms = self.cfg.server.body_read_timeout_ms,
                    "request body not received in time; refused with 408"
                );
                return Err(GatewayError::BodyTimeout(limit));
            }
        };
        match collected {
            Ok(c) => {
                let b = c.to_bytes();
                self.rec.keep_request_body(&b);
                Ok(b)
            }
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(GatewayError::TooLarge(max))
            }
            Err(e) => Err(GatewayError::BodyRead(e.to_string())),
        }
    }
}

/// `false` on a reply whose retries are spent, so the client's SDK does not retry in vain.
pub(crate) static SHOULD_RETRY: http::HeaderName = http::HeaderName::from_static("x-should-retry");

/// `x-sluice-feature`: optional, bounded, and of a charset safe for logs and labels.
fn feature(h: &http::HeaderMap) -> Result<Option<String>, GatewayError> {
    let Some(v) = h.get("x-sluice-feature") else {
        return Ok(None);
    };
    let b = v.as_bytes();
    let ok = (1..=64).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'/' | b'-'));
    if !ok {
        return Err(GatewayError::BadFeature);
    }
    Ok(Some(String::from_utf8_lossy(b).into_owned()))
}

/// The path and query as the client sent them (forwarded as is, `?beta=true` included).
pub(crate) fn path_and_query(uri: &http::Uri) -> &str {
    uri.path_and_query().map_or(uri.path(), |p| p.as_str())
}

/// Read a non-streaming upstream reply whole.
pub(crate) async fn buffered(
    resp: http::Response<UpstreamBody>,
) -> Result<(http::response::Parts, Bytes), GatewayError> {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|_| GatewayError::UpstreamBody)?
        .to_bytes();
    Ok((parts, bytes))
}

/// The client's response: the upstream's status and (filtered) headers, with `body`.
pub(crate) fn respond(parts: http::response::Parts, body: Body) -> Response {
    respond_with(parts, body, None)
}

/// [`respond`], adding the tenant's own rate-limit headers (after the upstream's were removed).
pub(crate) fn respond_with(
    mut parts: http::response::Parts,
    body: Body,
    view: Option<&TenantView>,
) -> Response {
    match view {
        Some(v) => headers::for_client_with_limits(&mut parts.headers, v),
        None => headers::for_client(&mut parts.headers),
    }
    Response::from_parts(parts, body)
}

/// The ending of a buffered upstream reply that is not a success.
pub(crate) fn upstream_failure(status: StatusCode, body: &[u8]) -> Ending {
    Ending {
        status: status.as_u16(),
        outcome: "upstream_error",
        error_type: sluice_anthropic::error_type(body),
        ..Ending::default()
    }
}

fn is_event_stream(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

async fn messages(State(s): State<AppState>, req: Request) -> Response {
    message_call(s, req, "messages").await
}

async fn count_tokens(State(s): State<AppState>, req: Request) -> Response {
    message_call(s, req, "count_tokens").await
}

/// Declared bodies up to this size are read before admission is looked at (see
/// [`Limiter::precheck`](sluice_limits::limiter::Limiter::precheck)).
const PRECHECK_FROM: u64 = 64 * 1024;

/// The body length the client declared in `content-length`, if any.
fn declared_len(h: &http::HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// `POST /v1/messages` and `POST /v1/messages/count_tokens`.
async fn message_call(s: AppState, req: Request, endpoint: &'static str) -> Response {
    let (mut parts, body) = req.into_parts();
    let mut call = match Call::start(&s, &parts, endpoint) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if endpoint == "messages" && declared_len(&parts.headers).is_none_or(|n| n > PRECHECK_FROM) {
        // Refuse a tenant that is certain to be refused before buffering its (large or
        // unannounced) body. A small body is read at once, and admission refuses it just the
        // same, so it does not pay for the limiter's locks twice.
        step!(
            call,
            s.limiter()
                .precheck(&call.cfg, &call.tenant, s.clock().unix_ms())
                .map_err(GatewayError::Limited)
        );
    }
    let bytes = step!(call, call.read_body(&parts, body).await);
    let info = step!(call, parse_message_request(&bytes));
    call.rec.set_model(&info.model);
    // The response cache, for tenants that have one (the others pay nothing: no hashing).
    let rc = match call.response_cache {
        Some(rc) if endpoint == "messages" => {
            let wait = Duration::from_millis(call.cfg.upstream.retry_deadline_ms.max(1000));
            let d = response_cache::decide(
                &s,
                &call.tenant,
                &rc,
                &parts.headers,
                &bytes,
                info.stream,
                wait,
            )
            .await;
            match d {
                // Counted once admitted: a would-be hit refused with 429 was not answered.
                Decision::Hit(e) => return cache_hit(&s, call, &info.model, &e).await,
                d => {
                    s.metrics().record_response_cache(&call.tenant, d.result());
                    Some(d)
                }
            }
        }
        _ => None,
    };
    // Token counting is free upstream and limited separately there; only Messages calls are
    // charged to buckets and budgets.
    let mut view = None;
    if endpoint == "count_tokens" {
        step!(call, free_call(&s, &call));
    }
    if endpoint == "messages" {
        if call.prompt_cache_maybe {
            // Decided before admission, with the class admission will use, so the limiter
            // predicts the cache reads of the markers Sluice is about to add.
            let class = s.limiter().policy(&call.cfg).class_of(&info.model).clone();
            let auto = step!(
                call,
                crate::prompt_cache::decide(
                    &call.cfg,
                    &call.tenant,
                    Some(&class),
                    &parts.headers,
                    &bytes,
                    Some(&info),
                    Endpoint::Messages,
                )
            );
            call.prompt_cache = auto;
        }
        let info = CallInfo {
            tenant: &call.tenant,
            model: &info.model,
            // Required upstream; without it the upstream answers 400 and nothing is spent.
            max_tokens: info.max_tokens.unwrap_or(0),
            body: &bytes,
            unix_ms: s.clock().unix_ms(),
            auto_prompt_cache: call.prompt_cache.is_some(),
        };
        let permit = step!(
            call,
            s.limiter()
                .acquire(&call.cfg, info)
                .await
                .map_err(GatewayError::Limited)
        );
        view = Some(*permit.view());
        call.rec.set_permit(permit);
    }
    let kind = if endpoint == "messages" {
        Endpoint::Messages
    } else {
        Endpoint::CountTokens
    };
    let mut resp = step!(
        call,
        call.forward(&s, &mut parts, bytes, kind, Some(&info)).await
    );
    // Only the Anthropic API's own headers, for the model asked for, describe the org pool.
    if call.served == Some((Provider::Anthropic, 0))
        && let Some(p) = call.rec.permit()
    {
        p.observe_upstream(|| headers::upstream_remaining(resp.headers()));
    }
    let status = resp.status();
    // Only a complete 200 from the primary step is stored (a fallback step's reply, maybe of
    // another model, must not answer for the model asked for); anything else lets the waiting
    // callers go at once.
    let storing = match rc {
        Some(d) => {
            resp.headers_mut()
                .insert(response_cache::X_SLUICE_CACHE.clone(), d.header());
            match d {
                Decision::Miss(st)
                    if status == StatusCode::OK && matches!(call.served, Some((_, 0))) =>
                {
                    Some(st)
                }
                _ => None,
            }
        }
        None => None,
    };
    if status.is_success() && is_event_stream(resp.headers()) {
        call.rec.set_streamed();
        let (p, incoming) = resp.into_parts();
        let idle = call.cfg.upstream.stream_idle_timeout_ms;
        let idle = (idle > 0).then(|| Duration::from_millis(idle));
        let body = TapBody::new(incoming, call.rec, status.as_u16(), idle)
            .capturing(storing.map(response_cache::Capture::new));
        return respond_with(p, Body::new(body), view.as_ref());
    }
    let (p, bytes) = step!(call, buffered(resp).await);
    call.rec.keep_response_body(&bytes);
    let ending = if !status.is_success() {
        upstream_failure(status, &bytes)
    } else if endpoint == "messages" {
        let summary = parse_message_response(&bytes).unwrap_or_default();
        Ending {
            status: status.as_u16(),
            outcome: "ok",
            usage: summary.usage,
            stop_reason: summary.stop_reason,
            model_served: summary.model,
            ..Ending::default()
        }
    } else {
        // Token counting is free upstream; its count is not usage.
        Ending {
            status: status.as_u16(),
            outcome: "ok",
            ..Ending::default()
        }
    };
    // The model is copied only for an entry: most replies are not stored.
    let model = storing.as_ref().and_then(|_| ending.model_served.clone());
    let cost = call.rec.finish(ending);
    if let Some(st) = storing {
        st.store(false, bytes.clone(), cost, model);
    }
    respond_with(p, Body::from(bytes), view.as_ref())
}

/// Answer a call from the response cache: one request from the tenant's request buckets (no
/// tokens: nothing is generated), then the stored reply, counted as a hit (a refused one is not
/// a hit, nor any other response-cache result: its 429 is counted as any). The ledger row has
/// outcome `cache_hit`, cost 0, zero tokens (the token columns stay what was billed) and, as
/// `saved_micros`, what the stored reply cost.
async fn cache_hit(
    s: &AppState,
    mut call: Call,
    model: &str,
    e: &response_cache::Entry,
) -> Response {
    let view = step!(
        call,
        s.limiter()
            .admit_request_only(&call.cfg, &call.tenant, model, s.clock().unix_ms())
            .await
            .map_err(GatewayError::Limited)
    );
    s.metrics()
        .record_response_cache(&call.tenant, sluice_telemetry::CacheResult::Hit);
    if e.stream {
        call.rec.set_streamed();
    }
    call.rec.set_saved_micros(e.cost_micros);
    call.rec.mark_first_byte();
    call.rec.finish(Ending {
        status: 200,
        outcome: "cache_hit",
        model_served: e.model.clone(),
        ..Ending::default()
    });
    response_cache::hit_response(e, &call.request_id, &view, s.clock().unix_ms())
}

/// `GET /v1/models` and `GET /v1/models/{id}`: authenticated pass-through, repeats served from
/// a short cache (`upstream.models_cache_secs`).
async fn models(State(s): State<AppState>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let mut call = match Call::start(&s, &parts, "models") {
        Ok(c) => c,
        Err(r) => return *r,
    };
    step!(call, free_call(&s, &call));
    let ttl = Duration::from_secs(call.cfg.upstream.models_cache_secs);
    let key = (!ttl.is_zero())
        .then(|| crate::models_cache::ModelsCache::key(path_and_query(&parts.uri), &parts.headers));
    if let Some(c) = key.as_deref().and_then(|k| s.models_cache().get(k, ttl)) {
        call.rec.finish(Ending {
            status: c.status.as_u16(),
            outcome: "ok",
            ..Ending::default()
        });
        let mut r = http::Response::new(());
        *r.status_mut() = c.status;
        *r.headers_mut() = c.headers;
        // No upstream request was made for this call: its id is the gateway's.
        if let Ok(v) = http::HeaderValue::from_str(&call.request_id) {
            r.headers_mut().insert("request-id", v);
        }
        let (p, ()) = r.into_parts();
        return respond(p, Body::from(c.body));
    }
    let resp = step!(
        call,
        call.forward(&s, &mut parts, Bytes::new(), Endpoint::Other, None)
            .await
    );
    let status = resp.status();
    let (p, bytes) = step!(call, buffered(resp).await);
    // Only successes: an error (a 429, a 5xx) must not be replayed after it has cleared.
    if let Some(k) = key.filter(|_| status == StatusCode::OK) {
        let reply = crate::models_cache::Cached {
            status,
            headers: p.headers.clone(),
            body: bytes.clone(),
        };
        s.models_cache().put(k, reply, ttl);
    }
    call.rec.finish(if status.is_success() {
        Ending {
            status: status.as_u16(),
            outcome: "ok",
            ..Ending::default()
        }
    } else {
        upstream_failure(status, &bytes)
    });
    respond(p, Body::from(bytes))
}

/// The tenant's `count_tokens_per_minute`, for calls no other bucket charges.
fn free_call(s: &AppState, call: &Call) -> Result<(), GatewayError> {
    s.limiter()
        .admit_free_call(&call.cfg, &call.tenant)
        .map_err(GatewayError::Limited)
}

async fn healthz() -> Response {
    json_status(StatusCode::OK, r#"{"status":"ok"}"#)
}

/// Ready when keys are loaded and the ledger writer runs: before that, calls would be refused
/// or go unrecorded. The route is public (load balancers probe it), so it says only whether and,
/// in one word, why not; member names, loads and the limiter's state are on the admin listener
/// (`GET /admin/v1/upstream`).
async fn readyz(State(s): State<AppState>) -> Response {
    match readiness(&s) {
        None => json_status(StatusCode::OK, r#"{"status":"ready"}"#),
        Some(reason) => json_status(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(r#"{{"status":"not_ready","reason":"{reason}"}}"#),
        ),
    }
}

/// Why the gateway cannot serve yet (`None`: it can). The shared limiter being away does not
/// make it unready: it serves on under its `fail_mode`.
fn readiness(s: &AppState) -> Option<&'static str> {
    if !s.keys().is_loaded() {
        return Some("keys");
    }
    let ledger = s
        .ledger()
        .stats()
        .alive
        .load(std::sync::atomic::Ordering::Relaxed);
    (!ledger).then_some("ledger")
}

/// Each upstream member's health as the admin API shows it: names and states, never keys.
pub fn member_status(s: &AppState) -> Vec<serde_json::Value> {
    let up = s.upstream();
    up.health()
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            serde_json::json!({
                "name": h.name,
                "provider": up.provider(i).as_str(),
                "weight": h.weight,
                "state": h.state,
                "cooling_down_ms": h.cooling_down_ms,
                "consecutive_failures": h.consecutive_failures,
                "requests": h.requests,
                "failures": h.failures,
                "in_flight": h.in_flight,
            })
        })
        .collect()
}

/// The limiter's state as the admin API shows it.
pub fn limiter_status(s: &AppState) -> serde_json::Value {
    match s.limiter().backend() {
        Backend::Local(_) => serde_json::json!({ "backend": "local" }),
        Backend::Redis(r) => {
            let st = r.status();
            serde_json::json!({
                "backend": "redis",
                "redis_up": st.up,
                "fallbacks_total": st.fallbacks_total,
                "outages_total": st.outages_total,
            })
        }
    }
}

async fn not_found(s: State<AppState>, req: Request) -> Response {
    let e = GatewayError::NotFound(format!(
        "Sluice does not serve {} {}",
        req.method(),
        req.uri().path()
    ));
    e.to_response(&s.next_request_id())
}

fn json_status(status: StatusCode, body: &str) -> Response {
    let mut r = (status, body.to_owned()).into_response();
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn feature_labels_are_bounded() {
        let mut h = http::HeaderMap::new();
        assert_eq!(feature(&h).unwrap(), None);
        h.insert("x-sluice-feature", "checkout-summary/v2".parse().unwrap());
        assert_eq!(feature(&h).unwrap().as_deref(), Some("checkout-summary/v2"));
        for bad in ["", "has space", "ünï", &"x".repeat(65), "a\"b"] {
            if let Ok(v) = HeaderValue::from_bytes(bad.as_bytes()) {
                h.insert("x-sluice-feature", v);
                assert!(feature(&h).is_err(), "{bad:?} accepted");
            }
        }
    }
}
