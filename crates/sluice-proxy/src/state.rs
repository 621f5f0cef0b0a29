//! The data plane's shared state: one cheap-to-clone handle, read without locks on the request
//! path (the config snapshot and key ring are `arc-swap`ed; the ledger sender never blocks).

use crate::auth::KeyRing;
use sluice_config::{Config, SharedConfig};
use sluice_core::Clock;
use sluice_limits::limiter::Limiter;
use sluice_store::{LedgerSender, LedgerStats, Store};
use sluice_telemetry::{Metrics, Sources};
use sluice_upstream::Upstream;
use sluice_upstream::pool::MemberHealth;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the binary hands the data plane.
pub struct Parts {
    /// Live configuration.
    pub config: SharedConfig,
    /// The key ring (refreshed by [`crate::auth::spawn_refresher`]).
    pub keys: Arc<KeyRing>,
    /// The upstream.
    pub upstream: Upstream,
    /// The ledger queue.
    pub ledger: LedgerSender,
    /// The state database (batch ownership).
    pub store: Store,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Rate limits and budgets.
    pub limiter: Limiter,
}

struct Inner {
    parts: Parts,
    id_prefix: u32,
    id_counter: AtomicU64,
    metrics: Metrics,
    models_cache: crate::models_cache::ModelsCache,
    response_cache: crate::response_cache::ResponseCache,
    auth_failure: std::sync::OnceLock<AuthFailureHook>,
    /// Cancelled when the shutdown grace runs out (see [`AppState::end_of_grace`]).
    grace_over: tokio_util::sync::CancellationToken,
}

/// Told about every call refused before authentication completed (missing, unknown, revoked
/// or expired key; unknown or disabled tenant), so the control plane can audit them. It must
/// not block: the control plane's hook only counts, or `try_send`s to a bounded queue.
pub type AuthFailureHook = Arc<dyn Fn(&http::request::Parts, &crate::GatewayError) + Send + Sync>;

/// The shared state handle.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// Assemble the state.
    pub fn new(parts: Parts) -> Self {
        let mut seed = [0u8; 4];
        // A fixed prefix still yields unique ids within the process; the random part only
        // keeps ids of different processes apart, so a failure here is not fatal.
        let _ = getrandom::fill(&mut seed);
        let members = parts
            .upstream
            .health()
            .into_iter()
            .map(|h| Arc::from(h.name))
            .collect();
        let metrics = Metrics::new(parts.config.clone(), parts.limiter.clone(), members);
        // Its backend and bound are read once: a change to them takes a restart.
        let response_cache = crate::response_cache::ResponseCache::new(&parts.config.load());
        Self(Arc::new(Inner {
            response_cache,
            metrics,
            models_cache: crate::models_cache::ModelsCache::default(),
            parts,
            id_prefix: u32::from_le_bytes(seed),
            id_counter: AtomicU64::new(0),
            auth_failure: std::sync::OnceLock::new(),
            grace_over: tokio_util::sync::CancellationToken::new(),
        }))
    }

    /// Install the hook told about refused calls (once; a second hook is ignored and `false`
    /// returned).
    pub fn set_auth_failure_hook(&self, hook: AuthFailureHook) -> bool {
        self.0.auth_failure.set(hook).is_ok()
    }

    /// A call was refused before authentication completed: tell the hook, if any.
    pub fn auth_failed(&self, parts: &http::request::Parts, e: &crate::GatewayError) {
        if let Some(h) = self.0.auth_failure.get() {
            h(parts, e);
        }
    }

    /// The shutdown grace ran out: every open stream ends now with an `event: error`, and every
    /// call still in flight is recorded with outcome `shutdown` (streams by their body, the
    /// rest when the server drops them).
    pub fn end_of_grace(&self) {
        self.0.grace_over.cancel();
    }

    /// Whether the shutdown grace has run out (an atomic load).
    pub fn grace_is_over(&self) -> bool {
        self.0.grace_over.is_cancelled()
    }

    /// Resolves when the shutdown grace runs out (a stream body waits on it).
    pub(crate) fn grace_over(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.0.grace_over.clone().cancelled_owned()
    }

    /// The current config snapshot (an `Arc`, safe to hold across `.await`).
    pub fn config(&self) -> Arc<Config> {
        self.0.parts.config.load_full()
    }

    /// The key ring.
    pub fn keys(&self) -> &KeyRing {
        &self.0.parts.keys
    }

    /// The upstream.
    pub fn upstream(&self) -> &Upstream {
        &self.0.parts.upstream
    }

    /// The ledger queue.
    pub fn ledger(&self) -> &LedgerSender {
        &self.0.parts.ledger
    }

    /// The state database.
    pub fn store(&self) -> &Store {
        &self.0.parts.store
    }

    /// The limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.0.parts.limiter
    }

    /// Recent model-list replies.
    pub fn models_cache(&self) -> &crate::models_cache::ModelsCache {
        &self.0.models_cache
    }

    /// The per-tenant response cache.
    pub fn response_cache(&self) -> &crate::response_cache::ResponseCache {
        &self.0.response_cache
    }

    /// The metrics registry (rendered by [`sluice_telemetry::render()`]).
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The clock.
    pub fn clock(&self) -> &dyn Clock {
        &*self.0.parts.clock
    }

    /// A new gateway request id, unique per process and (with high probability) across them.
    pub fn next_request_id(&self) -> String {
        let n = self.0.id_counter.fetch_add(1, Ordering::Relaxed);
        format!("req_sluice_{:08x}{:012x}", self.0.id_prefix, n)
    }
}

/// The scrape and the alert evaluator read the data plane through its state.
impl Sources for AppState {
    fn metrics(&self) -> &Metrics {
        AppState::metrics(self)
    }

    fn config(&self) -> Arc<Config> {
        AppState::config(self)
    }

    fn clock(&self) -> &dyn Clock {
        AppState::clock(self)
    }

    fn limiter(&self) -> &Limiter {
        AppState::limiter(self)
    }

    fn upstream_health(&self) -> Vec<MemberHealth> {
        self.upstream().health()
    }

    fn ledger_stats(&self) -> &LedgerStats {
        self.ledger().stats()
    }

    fn response_cache_size(&self) -> Option<sluice_telemetry::ResponseCacheSize> {
        let c = self.response_cache();
        let (entries, bytes) = c.size()?;
        Some(sluice_telemetry::ResponseCacheSize {
            entries,
            bytes,
            max_bytes: c.capacity()?,
        })
    }
}
