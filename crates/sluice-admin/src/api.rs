//! The admin API's routes, under `/admin/v1/`, JSON in and out, every error in the one shape of
//! [`crate::error`]. `GET /metrics` and `GET /admin/openapi.json` need no token; everything else
//! takes `Authorization: Bearer` with one of `[[admin.tokens]]`. The document served at
//! `/admin/openapi.json` lists exactly these routes (a test walks both).

use crate::Admin;
use crate::auth::Actor;
use crate::error::{AdminError, parse_json};
use crate::tenants::{self, Change};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_store::{AuditEvent, GroupBy, KeyRecord, NewEvent, UsageQuery};

type Res = Result<Response, AdminError>;

/// The admin router (serve it on the admin listener).
pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/openapi.json", get(openapi))
        .route("/admin/v1/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/admin/v1/tenants/{name}",
            get(get_tenant).patch(update_tenant).delete(delete_tenant),
        )
        .route("/admin/v1/keys", get(list_keys).post(create_key))
        .route("/admin/v1/keys/{id}", get(get_key))
        .route("/admin/v1/keys/{id}/revoke", post(revoke_key))
        .route("/admin/v1/keys/{id}/rotate", post(rotate_key))
        .route("/admin/v1/usage", get(usage))
        .route("/admin/v1/upstream", get(upstream))
        .route("/admin/v1/reload", post(reload))
        .route("/admin/v1/audit", get(audit_list))
        .route("/admin/v1/audit/verify", get(audit_verify))
        .fallback(|| async { AdminError::NotFound("no such admin route".into()) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(json!({"error": {"type": "invalid_request_error", "message": "method not allowed on this route"}})),
            )
        })
        .with_state(admin)
}

/// Run blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AdminError::Internal(format!("admin task failed: {e}")))?
}

fn ok(status: StatusCode, v: Value) -> Res {
    Ok((status, axum::Json(v)).into_response())
}

async fn metrics(State(a): State<Admin>) -> Response {
    let body = sluice_telemetry::render(a.reloader().app());
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}

// ---- tenants ------------------------------------------------------------------------------

async fn list_tenants(State(a): State<Admin>, _actor: Actor) -> Res {
    let r = a.reloader().clone();
    let (file, rows) = blocking(move || r.sources()).await?;
    let cfg = a.reloader().app().config();
    let data: Vec<Value> = cfg
        .tenants
        .iter()
        .map(|t| {
            with_source(
                tenants::tenant_json(t),
                tenants::source(&file, &rows, &t.name),
            )
        })
        .collect();
    ok(StatusCode::OK, json!({ "data": data }))
}

fn with_source(mut v: Value, source: &str) -> Value {
    if let Value::Object(m) = &mut v {
        m.insert("source".into(), source.into());
    }
    v
}

async fn get_tenant(State(a): State<Admin>, _actor: Actor, Path(name): Path<String>) -> Res {
    let r = a.reloader().clone();
    let (file, rows) = blocking(move || r.sources()).await?;
    let cfg = a.reloader().app().config();
    let t = cfg
        .tenant(&name)
        .ok_or_else(|| AdminError::NotFound(format!("tenant {name:?} not found")))?;
    ok(
        StatusCode::OK,
        with_source(
            tenants::tenant_json(t),
            tenants::source(&file, &rows, &name),
        ),
    )
}

async fn change(a: &Admin, actor: &Actor, c: Change, status: StatusCode) -> Res {
    actor.may_write()?;
    let (r, who) = (a.reloader().clone(), actor.name.clone());
    let (planned, event) = blocking(move || r.change_tenant(&who, &c)).await?;
    tracing::info!(target: "sluice::admin", actor = %actor.name, action = planned.action, tenant = %planned.name, "tenant changed");
    ok(
        status,
        json!({"tenant": planned.after, "before": planned.before, "audit_id": event.id}),
    )
}

async fn create_tenant(State(a): State<Admin>, actor: Actor, body: Bytes) -> Res {
    let v: Value = parse_json(&body)?;
    change(&a, &actor, Change::Create(v), StatusCode::CREATED).await
}

async fn update_tenant(
    State(a): State<Admin>,
    actor: Actor,
    Path(name): Path<String>,
    body: Bytes,
) -> Res {
    let v: Value = parse_json(&body)?;
    change(&a, &actor, Change::Update(name, v), StatusCode::OK).await
}

async fn delete_tenant(State(a): State<Admin>, actor: Actor, Path(name): Path<String>) -> Res {
    change(&a, &actor, Change::Delete(name), StatusCode::OK).await
}

// ---- keys ---------------------------------------------------------------------------------

/// A key's record and whether it works now (never the key or its hash).
pub fn key_json(k: &KeyRecord, now_ms: i64) -> Value {
    let status = if k.revoked_ms.is_some() {
        "revoked"
    } else if k.expires_ms.is_some_and(|e| e <= now_ms) {
        "expired"
    } else {
        "active"
    };
    json!({
        "id": k.id,
        "tenant": k.tenant,
        "prefix": k.prefix,
        "label": k.label,
        "created_ms": k.created_ms,
        "expires_ms": k.expires_ms,
        "revoked_ms": k.revoked_ms,
        "status": status,
    })
}

#[derive(Debug, Deserialize)]
struct KeysQuery {
    tenant: Option<String>,
}

async fn list_keys(
    State(a): State<Admin>,
    _actor: Actor,
    q: Result<Query<KeysQuery>, axum::extract::rejection::QueryRejection>,
) -> Res {
    let Query(q) = q.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let store = a.reloader().store().clone();
    let keys = blocking(move || Ok(store.list_keys()?)).await?;
    let now = a.reloader().app().clock().unix_ms();
    let data: Vec<Value> = keys
        .iter()
        .filter(|k| q.tenant.as_ref().is_none_or(|t| &k.tenant == t))
        .map(|k| key_json(k, now))
        .collect();
    ok(StatusCode::OK, json!({ "data": data }))
}

async fn get_key(State(a): State<Admin>, _actor: Actor, Path(id): Path<String>) -> Res {
    let store = a.reloader().store().clone();
    let k = blocking(move || Ok(store.get_key(&id)?)).await?;
    ok(
        StatusCode::OK,
        key_json(&k, a.reloader().app().clock().unix_ms()),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    tenant: String,
    #[serde(default)]
    label: String,
    /// Expire this many seconds after creation.
    expires_in_secs: Option<u64>,
    /// Or at this time (Unix ms).
    expires_at_ms: Option<i64>,
}

fn audit(
    a: &Admin,
    actor: &str,
    action: &str,
    target: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> NewEvent {
    NewEvent {
        ts_ms: a.reloader().app().clock().unix_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        before: before.map(|v| v.to_string()),
        after: after.map(|v| v.to_string()),
    }
}

async fn create_key(State(a): State<Admin>, actor: Actor, body: Bytes) -> Res {
    actor.may_write()?;
    let req: CreateKey = parse_json(&body)?;
    if a.reloader().app().config().tenant(&req.tenant).is_none() {
        return Err(AdminError::Invalid(format!(
            "tenant {:?} does not exist; create it first",
            req.tenant
        )));
    }
    let now = a.reloader().app().clock().unix_ms();
    let expires = match (req.expires_in_secs, req.expires_at_ms) {
        (Some(_), Some(_)) => {
            return Err(AdminError::Invalid(
                "give expires_in_secs or expires_at_ms, not both".into(),
            ));
        }
        (Some(s), None) => {
            Some(now.saturating_add(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)))
        }
        (None, Some(t)) if t <= now => {
            return Err(AdminError::Invalid("expires_at_ms is in the past".into()));
        }
        (None, t) => t,
    };
    let r = a.reloader().clone();
    let (who, a2) = (actor.name.clone(), a.clone());
    let (k, ev) = blocking(move || {
        let k = r
            .store()
            .create_key(&req.tenant, &req.label, expires, now)?;
        let after = key_json(&k.record, now);
        let ev = r.store().append_audit(&audit(
            &a2,
            &who,
            "key.create",
            &k.record.id,
            None,
            Some(after),
        ))?;
        Ok((k, ev))
    })
    .await?;
    ok(
        StatusCode::CREATED,
        json!({
            "key": key_json(&k.record, now),
            "secret": k.secret,
            "note": "the secret is shown once; only its hash is kept",
            "audit_id": ev.id,
        }),
    )
}

async fn revoke_key(State(a): State<Admin>, actor: Actor, Path(id): Path<String>) -> Res {
    actor.may_write()?;
    let now = a.reloader().app().clock().unix_ms();
    let (r, who, a2) = (a.reloader().clone(), actor.name.clone(), a.clone());
    let (k, ev) = blocking(move || {
        let before = r.store().get_key(&id)?;
        if before.revoked_ms.is_some() {
            return Err(AdminError::Conflict(format!("key {id} is already revoked")));
        }
        let k = r.store().revoke_key(&id, now)?;
        let ev = r.store().append_audit(&audit(
            &a2,
            &who,
            "key.revoke",
            &id,
            Some(key_json(&before, now)),
            Some(key_json(&k, now)),
        ))?;
        Ok((k, ev))
    })
    .await?;
    let mut v = key_json(&k, now);
    if let Value::Object(m) = &mut v {
        m.insert("audit_id".into(), ev.id.into());
    }
    ok(StatusCode::OK, v)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// How long the old key keeps working.
    overlap_secs: u64,
}

async fn rotate_key(
    State(a): State<Admin>,
    actor: Actor,
    Path(id): Path<String>,
    body: Bytes,
) -> Res {
    actor.may_write()?;
    let req: Rotate = parse_json(&body)?;
    let now = a.reloader().app().clock().unix_ms();
    let overlap = i64::try_from(req.overlap_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let (r, who, a2) = (a.reloader().clone(), actor.name.clone(), a.clone());
    let (old, new, ev) = blocking(move || {
        let before = r.store().get_key(&id)?;
        if before.revoked_ms.is_some() {
            return Err(AdminError::Conflict(format!(
                "key {id} is revoked; create a new key"
            )));
        }
        if before.expires_ms.is_some_and(|e| e <= now) {
            return Err(AdminError::Conflict(format!(
                "key {id} has expired; create a new key"
            )));
        }
        let (old, new) = r.store().rotate_key(&id, overlap, now)?;
        let ev = r.store().append_audit(&audit(
            &a2,
            &who,
            "key.rotate",
            &id,
            Some(key_json(&before, now)),
            Some(json!({"old": key_json(&old, now), "new": key_json(&new.record, now)})),
        ))?;
        Ok((old, new, ev))
    })
    .await?;
    ok(
        StatusCode::CREATED,
        json!({
            "old": key_json(&old, now),
            "key": key_json(&new.record, now),
            "secret": new.secret,
            "note": "the secret is shown once; the old key works until its expires_ms",
            "audit_id": ev.id,
        }),
    )
}

// ---- usage, upstream, reload, audit ------------------------------------------------------

#[derive(Debug, Deserialize)]
struct UsageParams {
    since: Option<String>,
    until: Option<String>,
    tenant: Option<String>,
    group_by: Option<String>,
}

/// `24h` (that long ago), an RFC 3339 time, or Unix ms.
pub fn parse_when(s: &str, now: i64) -> Result<i64, AdminError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|_| {
        AdminError::BadRequest(format!(
            "{s:?} is neither Unix ms, a duration ago (24h) nor an RFC 3339 time"
        ))
    })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0))
}

async fn usage(
    State(a): State<Admin>,
    _actor: Actor,
    q: Result<Query<UsageParams>, axum::extract::rejection::QueryRejection>,
) -> Res {
    let Query(q) = q.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let now = a.reloader().app().clock().unix_ms();
    let since = parse_when(q.since.as_deref().unwrap_or("24h"), now)?;
    let until = match &q.until {
        Some(u) => parse_when(u, now)?,
        None => now.saturating_add(1),
    };
    let names: Vec<String> = q
        .group_by
        .as_deref()
        .unwrap_or("tenant")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let group_by = names
        .iter()
        .map(|s| match s.as_str() {
            "tenant" => Ok(GroupBy::Tenant),
            "feature" => Ok(GroupBy::Feature),
            "model" => Ok(GroupBy::Model),
            "key" => Ok(GroupBy::Key),
            other => Err(AdminError::BadRequest(format!(
                "cannot group by {other:?}: use tenant, feature, model, key"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let query = UsageQuery {
        since_ms: since,
        until_ms: until,
        group_by,
        tenant: q.tenant,
    };
    let store = a.reloader().store().clone();
    let rows = blocking(move || Ok(store.usage(&query)?)).await?;
    ok(
        StatusCode::OK,
        json!({"since_ms": since, "until_ms": until, "group_by": names, "rows": rows}),
    )
}

async fn upstream(State(a): State<Admin>, _actor: Actor) -> Res {
    let members = sluice_proxy::api::member_status(a.reloader().app());
    let limiter = sluice_proxy::api::limiter_status(a.reloader().app());
    ok(
        StatusCode::OK,
        json!({ "members": members, "limiter": limiter }),
    )
}

async fn reload(State(a): State<Admin>, actor: Actor) -> Res {
    actor.may_write()?;
    let (r, who) = (a.reloader().clone(), actor.name.clone());
    let report = blocking(move || r.reload(&who, true)).await.inspect_err(|e| {
        tracing::error!(target: "sluice::reload", actor = %actor.name, error = %e, "config reload refused; the running config stays");
    })?;
    ok(
        StatusCode::OK,
        json!({ "reloaded": true, "report": report }),
    )
}

/// An audit event with its before/after parsed back into JSON.
pub fn event_json(e: &AuditEvent) -> Value {
    let parse = |s: &Option<String>| {
        s.as_deref()
            .map(|t| serde_json::from_str::<Value>(t).unwrap_or_else(|_| Value::String(t.into())))
    };
    json!({
        "id": e.id,
        "ts_ms": e.ts_ms,
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "before": parse(&e.before),
        "after": parse(&e.after),
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    })
}

#[derive(Debug, Deserialize)]
struct AuditParams {
    since: Option<String>,
    limit: Option<usize>,
}

async fn audit_list(
    State(a): State<Admin>,
    _actor: Actor,
    q: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Res {
    let Query(q) = q.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let now = a.reloader().app().clock().unix_ms();
    let since = q.since.as_deref().map(|s| parse_when(s, now)).transpose()?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let store = a.reloader().store().clone();
    let events = blocking(move || Ok(store.audit_events(since, limit)?)).await?;
    let data: Vec<Value> = events.iter().map(event_json).collect();
    ok(StatusCode::OK, json!({ "data": data }))
}

async fn audit_verify(State(a): State<Admin>, _actor: Actor) -> Res {
    let store = a.reloader().store().clone();
    let v = blocking(move || Ok(store.verify_audit()?)).await?;
    ok(
        StatusCode::OK,
        json!({"ok": v.broken.is_none(), "events": v.events, "head": v.head, "broken": v.broken}),
    )
}
