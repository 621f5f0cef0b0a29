//! Audit events for gateway calls refused at authentication, without letting a flood of bad
//! keys flood the audit table: the data plane's hook only `try_send`s to a bounded queue (a full
//! queue drops, counted), and one task folds failures per source (the client's IP when the
//! listener records it, else `unknown`) into windows, writing at most one `auth.failed` event per
//! source per window, with the count and reasons. At most [`MAX_SOURCES`] sources are tracked
//! per window; the rest are folded into the source `other`.

use axum::extract::ConnectInfo;
use serde_json::json;
use sluice_proxy::GatewayError;
use sluice_proxy::state::AuthFailureHook;
use sluice_store::{NewEvent, Store};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Distinct sources tracked per window.
pub const MAX_SOURCES: usize = 1000;

/// One refused call.
#[derive(Debug)]
struct Failure {
    source: String,
    reason: &'static str,
    path: String,
}

#[derive(Debug, Default)]
struct Window {
    count: u64,
    reasons: BTreeMap<&'static str, u64>,
    paths: BTreeMap<String, u64>,
}

/// Why a call was refused, as a stable label.
pub fn reason(e: &GatewayError) -> &'static str {
    match e {
        GatewayError::MissingKey => "missing_key",
        GatewayError::InvalidKey => "invalid_key",
        GatewayError::ExpiredKey => "expired_key",
        GatewayError::TenantDisabled(_) => "tenant_disabled",
        GatewayError::TenantUnknown(_) => "tenant_unknown",
        _ => "other",
    }
}

/// Start the folding task; the returned hook goes to `AppState::set_auth_failure_hook`.
/// `window` is one minute in production (shorter in tests); `now_ms` is the clock.
pub fn spawn(
    store: Store,
    window: Duration,
    now_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
) -> (AuthFailureHook, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Failure>(4096);
    let dropped = Arc::new(AtomicU64::new(0));
    let dropped_hook = dropped.clone();
    let hook: AuthFailureHook = Arc::new(move |parts: &http::request::Parts, e: &GatewayError| {
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string());
        let f = Failure {
            source,
            reason: reason(e),
            // Only the path, bounded: the query string could carry anything.
            path: parts.uri.path().chars().take(64).collect(),
        };
        if tx.try_send(f).is_err() {
            dropped_hook.fetch_add(1, Ordering::Relaxed);
        }
    });
    let task = tokio::spawn(async move {
        let mut windows: HashMap<String, Window> = HashMap::new();
        let mut started = now_ms();
        let mut tick = tokio::time::interval(window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                f = rx.recv() => {
                    let Some(f) = f else { break };
                    let key = if windows.len() >= MAX_SOURCES && !windows.contains_key(&f.source) {
                        "other".to_owned()
                    } else {
                        f.source
                    };
                    let w = windows.entry(key).or_default();
                    w.count += 1;
                    *w.reasons.entry(f.reason).or_default() += 1;
                    if w.paths.len() < 16 || w.paths.contains_key(&f.path) {
                        *w.paths.entry(f.path).or_default() += 1;
                    }
                }
                _ = tick.tick() => {
                    let end = now_ms();
                    let lost = dropped.swap(0, Ordering::Relaxed);
                    flush(&store, std::mem::take(&mut windows), started, end, lost).await;
                    started = end;
                }
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        flush(&store, windows, started, now_ms(), lost).await;
    });
    (hook, task)
}

async fn flush(store: &Store, windows: HashMap<String, Window>, from: i64, to: i64, lost: u64) {
    if windows.is_empty() && lost == 0 {
        return;
    }
    let mut events: Vec<NewEvent> = windows
        .into_iter()
        .map(|(source, w)| NewEvent {
            ts_ms: to,
            actor: "gateway".into(),
            action: "auth.failed".into(),
            target: source,
            before: None,
            after: Some(
                json!({
                    "count": w.count,
                    "reasons": w.reasons,
                    "paths": w.paths,
                    "from_ms": from,
                    "to_ms": to,
                })
                .to_string(),
            ),
        })
        .collect();
    if lost > 0 {
        events.push(NewEvent {
            ts_ms: to,
            actor: "gateway".into(),
            action: "auth.failed".into(),
            target: "dropped".into(),
            before: None,
            after: Some(json!({"count": lost, "from_ms": from, "to_ms": to}).to_string()),
        });
    }
    events.sort_by(|a, b| a.target.cmp(&b.target));
    let store = store.clone();
    let r = tokio::task::spawn_blocking(move || {
        for ev in &events {
            store.append_audit(ev)?;
        }
        Ok::<_, sluice_store::StoreError>(())
    })
    .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(target: "sluice::audit", error = %e, "cannot write auth.failed events")
        }
        Err(e) => {
            tracing::error!(target: "sluice::audit", error = %e, "auth.failed writer task failed")
        }
    }
}
