//! Message Batches. The upstream sees one organisation; Sluice makes batches per tenant:
//! creating one records its owner; fetching, cancelling, deleting or reading results of a batch
//! another tenant owns is a 404, exactly as if it did not exist; the list shows only the
//! caller's batches (served from the ownership table, each fetched fresh from the upstream).
//! `results_url` in batch objects is rewritten to the gateway's own address, because the SDKs
//! fetch it verbatim and must come back through Sluice.

use crate::api::{Call, buffered, respond, step, upstream_failure};
use crate::call::Ending;
use crate::error::GatewayError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use serde_json::Value;
use sluice_upstream::Endpoint;

fn ok(status: http::StatusCode) -> Ending {
    Ending {
        status: status.as_u16(),
        outcome: "ok",
        ..Ending::default()
    }
}

/// Run a blocking store operation off the async workers.
async fn blocking<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&sluice_store::Store) -> Result<T, sluice_store::StoreError> + Send + 'static,
) -> Result<T, GatewayError> {
    let store = s.store().clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))?
        .map_err(|e| GatewayError::Internal(e.to_string()))
}

/// The gateway's address as the client sees it.
fn public_base(call: &Call, parts: &Parts) -> String {
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    base_for(&call.cfg.server, parts, peer)
}

/// `server.public_url`, else the scheme and host the client used: as a trusted proxy reports
/// them (RFC 7239 `forwarded`, else `x-forwarded-proto` / `x-forwarded-host`), else `http://`
/// and `Host`. A header from any other peer is ignored: a client must not be able to point
/// another tenant's SDK, or its own, at a host of its choosing.
fn base_for(
    server: &sluice_config::ServerConfig,
    parts: &Parts,
    peer: Option<std::net::IpAddr>,
) -> String {
    if let Some(u) = &server.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let h = &parts.headers;
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    let mut host = text("host")
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let mut proto = "http";
    if peer.is_some_and(|p| server.is_trusted_proxy(p)) {
        let (f_proto, f_host) = text("forwarded").map_or((None, None), forwarded);
        if let Some(p) = f_proto.or_else(|| text("x-forwarded-proto")) {
            match p.trim() {
                p if p.eq_ignore_ascii_case("https") => proto = "https",
                p if p.eq_ignore_ascii_case("http") => proto = "http",
                _ => {}
            }
        }
        if let Some(fh) = f_host.or_else(|| text("x-forwarded-host").map(str::trim))
            && valid_host(fh)
        {
            host = fh;
        }
    }
    if !valid_host(host) {
        host = "localhost";
    }
    format!("{proto}://{host}")
}

/// `proto=` and `host=` of the first (the client-facing) element of a `forwarded` header.
fn forwarded(v: &str) -> (Option<&str>, Option<&str>) {
    let first = v.split(',').next().unwrap_or("");
    let (mut proto, mut host) = (None, None);
    for pair in first.split(';') {
        if let Some((k, val)) = pair.split_once('=') {
            let val = val.trim().trim_matches('"');
            match k.trim() {
                k if k.eq_ignore_ascii_case("proto") => proto = Some(val),
                k if k.eq_ignore_ascii_case("host") => host = Some(val),
                _ => {}
            }
        }
    }
    (proto, host)
}

/// A host[:port] safe to put in front of a path: no user info, path, or spaces.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Point `results_url` at the gateway, keeping the path (and query) after the upstream's base.
fn rewrite_results_url(v: &mut Value, base: &str, upstream_base_path: &str) {
    if let Some(Value::String(url)) = v.get_mut("results_url") {
        let after_scheme = url.find("://").map_or(0, |i| i + 3);
        if let Some(slash) = url[after_scheme..].find('/') {
            let path = &url[after_scheme + slash..];
            let path = path.strip_prefix(upstream_base_path).unwrap_or(path);
            *url = format!("{base}{path}");
        }
    }
}

fn upstream_base_path(call: &Call) -> String {
    let b = &call.cfg.upstream.base_url;
    let after_scheme = b.find("://").map_or(0, |i| i + 3);
    b[after_scheme..]
        .find('/')
        .map(|i| b[after_scheme + i..].trim_end_matches('/').to_owned())
        .unwrap_or_default()
}

/// A successful batch-object reply, with `results_url` rewritten to `base`.
fn batch_object_body(call: &Call, base: &str, bytes: &Bytes) -> Bytes {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(mut v) => {
            rewrite_results_url(&mut v, base, &upstream_base_path(call));
            serde_json::to_vec(&v)
                .map(Bytes::from)
                .unwrap_or_else(|_| bytes.clone())
        }
        // Not JSON: pass it on untouched rather than fail a call the upstream answered.
        Err(_) => bytes.clone(),
    }
}

/// Refuse (404) unless the caller's tenant owns batch `id`.
async fn require_owner(s: &AppState, call: &Call, id: &str) -> Result<(), GatewayError> {
    let id_owned = id.to_owned();
    let owner = blocking(s, move |st| st.batch_owner(&id_owned)).await?;
    if owner.as_deref() == Some(&*call.tenant) {
        Ok(())
    } else {
        Err(GatewayError::NotFound(format!("batch {id} not found")))
    }
}

/// `POST /v1/messages/batches`.
pub async fn create(State(s): State<AppState>, req: Request) -> Response {
    object_call(s, None, req, "batches.create").await
}

/// `GET /v1/messages/batches/{id}`.
pub async fn get_one(State(s): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    object_call(s, Some(id), req, "batches.get").await
}

/// `POST /v1/messages/batches/{id}/cancel`.
pub async fn cancel(State(s): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    object_call(s, Some(id), req, "batches.cancel").await
}

/// `DELETE /v1/messages/batches/{id}`.
pub async fn delete(State(s): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    object_call(s, Some(id), req, "batches.delete").await
}

/// A call whose reply is one batch object: create (records the owner), or get, cancel and
/// delete of an existing batch `id` (caller must own it).
async fn object_call(
    s: AppState,
    id: Option<String>,
    req: Request,
    endpoint: &'static str,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let mut call = match Call::start(&s, &parts, endpoint) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if let Some(id) = &id {
        step!(call, require_owner(&s, &call, id).await);
    }
    let base = public_base(&call, &parts);
    let bytes = step!(call, call.read_body(&parts, body).await);
    // `forward` takes the headers; a create may need them again to cancel what it made.
    let create_headers = (endpoint == "batches.create").then(|| parts.headers.clone());
    let resp = step!(
        call,
        call.forward(&s, &mut parts, bytes, Endpoint::Other, None)
            .await
    );
    let status = resp.status();
    let (p, bytes) = step!(call, buffered(resp).await);
    if !status.is_success() {
        call.rec.finish(upstream_failure(status, &bytes));
        return respond(p, Body::from(bytes));
    }
    match (endpoint, id) {
        ("batches.delete", Some(id)) => {
            step!(call, blocking(&s, move |st| st.forget_batch(&id)).await);
            call.rec.finish(ok(status));
            return respond(p, Body::from(bytes));
        }
        ("batches.create", _) => {
            let created = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned));
            if let Some(id) = created {
                let (tenant, key_id, now) = (
                    call.tenant.to_string(),
                    call.key_id.to_string(),
                    s.clock().unix_ms(),
                );
                // Ownership must be on disk before the client can ask for the batch.
                step!(
                    call,
                    record_or_cancel(
                        &s,
                        &call,
                        &parts,
                        create_headers.unwrap_or_default(),
                        (id, tenant, key_id, now)
                    )
                    .await
                );
            } else {
                tracing::warn!(request_id = %call.request_id, "batch created upstream without an id in the reply");
            }
        }
        _ => {}
    }
    let out = batch_object_body(&call, &base, &bytes);
    call.rec.finish(ok(status));
    respond(p, Body::from(out))
}

/// Pauses before the 2nd and 3rd ownership write. SQLite's busy handler already waits up to
/// `busy_timeout` (5 s) inside each try; the pauses are for failures it does not absorb (a
/// Postgres connection that broke is replaced on the next call).
const RECORD_BACKOFF: [std::time::Duration; 2] = [
    std::time::Duration::from_millis(200),
    std::time::Duration::from_millis(800),
];

/// Record the owner of the batch the upstream just created, retrying; if that still fails,
/// cancel the batch upstream and fail the call. An unrecorded batch would be an orphan: it runs
/// (and bills) on the organisation's key, yet no tenant can see, cancel or delete it, and the
/// client, told of a failure, would create it again. Cancelling makes "not created" true enough
/// that the client's retry is safe (a cancelled batch bills only what already ran).
async fn record_or_cancel(
    s: &AppState,
    call: &Call,
    parts: &Parts,
    mut h: http::HeaderMap,
    (id, tenant, key_id, now): (String, String, String, i64),
) -> Result<(), GatewayError> {
    let mut tries = 0;
    let last = loop {
        let (i, t, k) = (id.clone(), tenant.clone(), key_id.clone());
        match blocking(s, move |st| st.record_batch(&i, &t, &k, now)).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(request_id = %call.request_id, batch = %id, error = %e, "batch ownership write failed");
                match RECORD_BACKOFF.get(tries) {
                    Some(d) => tokio::time::sleep(*d).await,
                    None => break e,
                }
                tries += 1;
            }
        }
    };
    crate::headers::for_upstream(&mut h);
    let beta = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "beta=true"));
    let pq = format!(
        "/v1/messages/batches/{id}/cancel{}",
        if beta { "?beta=true" } else { "" }
    );
    match s
        .upstream()
        .send(http::Method::POST, &pq, h, Bytes::new())
        .await
    {
        Ok(resp) if resp.status().is_success() => {
            tracing::error!(request_id = %call.request_id, batch = %id, "batch ownership not recorded; batch cancelled upstream");
        }
        Ok(resp) => {
            tracing::error!(request_id = %call.request_id, batch = %id, status = resp.status().as_u16(), "batch ownership not recorded and the upstream refused to cancel it: orphaned batch");
        }
        Err(e) => {
            tracing::error!(request_id = %call.request_id, batch = %id, error = %e, "batch ownership not recorded and cancelling it upstream failed: orphaned batch");
        }
    }
    let why = match last {
        GatewayError::Internal(m) => m,
        other => other.to_string(),
    };
    Err(GatewayError::BatchNotRecorded(why))
}

/// `GET /v1/messages/batches/{id}/results`: streamed through untouched (results can be large).
pub async fn results(State(s): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let mut call = match Call::start(&s, &parts, "batches.results") {
        Ok(c) => c,
        Err(r) => return *r,
    };
    step!(call, require_owner(&s, &call, &id).await);
    let resp = step!(
        call,
        call.forward(&s, &mut parts, Bytes::new(), Endpoint::Other, None)
            .await
    );
    let status = resp.status();
    if !status.is_success() {
        let (p, bytes) = step!(call, buffered(resp).await);
        call.rec.finish(upstream_failure(status, &bytes));
        return respond(p, Body::from(bytes));
    }
    call.rec.finish(ok(status));
    let (p, incoming) = resp.into_parts();
    respond(p, Body::new(incoming))
}

#[derive(serde::Deserialize)]
struct ListParams {
    limit: Option<usize>,
    before_id: Option<String>,
    after_id: Option<String>,
}

/// Most upstream GETs one listing has in flight at once.
const LIST_FETCH_CONCURRENCY: usize = 8;

/// `GET /v1/messages/batches`: the caller's batches only, newest first, with the upstream's
/// paging (`limit` 1-1000, default 20; `before_id`, `after_id`).
pub async fn list(State(s): State<AppState>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    let mut call = match Call::start(&s, &parts, "batches.list") {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let params = step!(
        call,
        serde_urlencoded_query(&parts).map_err(GatewayError::BadQuery)
    );
    let limit = params.limit.unwrap_or(20).clamp(1, 1000);
    let tenant = call.tenant.to_string();
    let (before, after) = (params.before_id.clone(), params.after_id.clone());
    let page = step!(
        call,
        blocking(&s, move |st| st.list_batches(
            &tenant,
            before.as_deref(),
            after.as_deref(),
            limit
        ))
        .await
    );
    let beta = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "beta=true"));
    // A page of up to 1,000 ids must not become 1,000 simultaneous GETs on the organisation's
    // key; order is kept by index, so bounding concurrency does not reorder the listing.
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(LIST_FETCH_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in page.ids.iter().enumerate() {
        let mut h = parts.headers.clone();
        crate::headers::for_upstream(&mut h);
        let pq = format!(
            "/v1/messages/batches/{id}{}",
            if beta { "?beta=true" } else { "" }
        );
        let up = s.upstream().clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            // The semaphore is never closed, so acquiring cannot fail.
            let _permit = permits.acquire_owned().await.ok();
            let r = up.send(http::Method::GET, &pq, h, Bytes::new()).await;
            let r = match r {
                Ok(resp) => buffered(resp).await.map(|(p, b)| (p.status, b)),
                Err(e) => Err(e.into()),
            };
            (i, r)
        });
    }
    let mut items: Vec<Option<Value>> = vec![None; page.ids.len()];
    let base = public_base(&call, &parts);
    let ubp = upstream_base_path(&call);
    while let Some(joined) = tasks.join_next().await {
        let (i, r) = step!(
            call,
            joined.map_err(|e| GatewayError::Internal(e.to_string()))
        );
        let (status, bytes) = step!(call, r);
        if status == http::StatusCode::NOT_FOUND {
            // Gone upstream (expired or deleted elsewhere): drop it from the listing.
            continue;
        }
        if !status.is_success() {
            call.rec.finish(upstream_failure(status, &bytes));
            let mut resp = Response::new(Body::from(bytes));
            *resp.status_mut() = status;
            return resp;
        }
        if let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) {
            rewrite_results_url(&mut v, &base, &ubp);
            if let Some(slot) = items.get_mut(i) {
                *slot = Some(v);
            }
        }
    }
    let data: Vec<Value> = items.into_iter().flatten().collect();
    let first_id = data.first().and_then(|v| v.get("id")).cloned();
    let last_id = data.last().and_then(|v| v.get("id")).cloned();
    let body = serde_json::json!({
        "data": data,
        "has_more": page.has_more,
        "first_id": first_id,
        "last_id": last_id,
    });
    call.rec.finish(ok(http::StatusCode::OK));
    let mut resp = Response::new(Body::from(body.to_string()));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&call.request_id) {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

fn serde_urlencoded_query(parts: &Parts) -> Result<ListParams, String> {
    axum::extract::Query::<ListParams>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .map_err(|e| format!("invalid query: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn forwarded_scheme_and_host_are_believed_only_from_a_trusted_proxy() {
        let server = sluice_config::ServerConfig {
            trusted_proxies: vec!["10.0.0.0/8".into(), "192.0.2.7".into()],
            ..Default::default()
        };
        let parts = |hs: &[(&str, &str)]| {
            let mut b = http::Request::builder().uri("/v1/messages/batches");
            for (k, v) in hs {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap().into_parts().0
        };
        let xf = parts(&[
            ("host", "10.1.2.3:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "gw.example.com"),
        ]);
        let lb: std::net::IpAddr = "10.9.9.9".parse().unwrap();
        let stranger: std::net::IpAddr = "203.0.113.5".parse().unwrap();
        assert_eq!(base_for(&server, &xf, Some(lb)), "https://gw.example.com");
        assert_eq!(
            base_for(&server, &xf, Some(stranger)),
            "http://10.1.2.3:8080"
        );
        assert_eq!(base_for(&server, &xf, None), "http://10.1.2.3:8080");
        let fw = parts(&[
            ("host", "internal:8080"),
            (
                "forwarded",
                "for=1.2.3.4;proto=https;host=\"api.example.com\", for=10.0.0.1",
            ),
        ]);
        let one: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(base_for(&server, &fw, Some(one)), "https://api.example.com");
        // A host that would smuggle user info or a path is not used.
        let evil = parts(&[("host", "gw"), ("x-forwarded-host", "evil.com/x@y")]);
        assert_eq!(base_for(&server, &evil, Some(lb)), "http://gw");
        // public_url wins over everything.
        let fixed = sluice_config::ServerConfig {
            public_url: Some("https://sluice.corp/".into()),
            ..server.clone()
        };
        assert_eq!(base_for(&fixed, &xf, Some(lb)), "https://sluice.corp");
    }

    #[test]
    fn results_url_points_back_at_the_gateway() {
        let mut v = serde_json::json!({
            "id": "b1",
            "results_url": "https://api.anthropic.com/v1/messages/batches/b1/results"
        });
        rewrite_results_url(&mut v, "http://sluice:8080", "");
        assert_eq!(
            v["results_url"],
            "http://sluice:8080/v1/messages/batches/b1/results"
        );
        let mut v =
            serde_json::json!({"results_url": "http://u/base/v1/messages/batches/b/results?x=1"});
        rewrite_results_url(&mut v, "https://gw", "/base");
        assert_eq!(
            v["results_url"],
            "https://gw/v1/messages/batches/b/results?x=1"
        );
        let mut v = serde_json::json!({"results_url": null});
        rewrite_results_url(&mut v, "https://gw", "");
        assert!(v["results_url"].is_null());
    }
}
