//! The data plane's shared state: one cheap-to-clone handle, read without locks on the request
//! path (the config snapshot and key ring are `arc-swap`ed; the ledger sender never blocks).

use crate::auth::KeyRing;
use sluice_config::{Config, SharedConfig};
use sluice_core::Clock;
use sluice_limits::limiter::Limiter;
use sluice_store::{LedgerSender, Store};
use sluice_upstream::Upstream;
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
}

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
        Self(Arc::new(Inner {
            parts,
            id_prefix: u32::from_le_bytes(seed),
            id_counter: AtomicU64::new(0),
        }))
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
