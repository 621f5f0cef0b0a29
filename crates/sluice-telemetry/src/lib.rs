//! Sluice telemetry: what the gateway measures and tells about the data plane, kept apart
//! from the data plane itself.
//!
//! - [`metrics`]: the Prometheus registry and the label handles the data plane records each
//!   finished call into ([`Metrics::record`]: a few atomic increments, the only telemetry work
//!   on the request path).
//! - [`render()`]: `GET /metrics` (served by the admin listener): the registry plus the gauges
//!   read at scrape from the parts that already count them.
//! - [`alerts`]: the rule evaluator and its webhook sender, background tasks the binary spawns.
//!
//! Dependencies, one way only: this crate uses sluice-core (the clock), sluice-config (label
//! sets and rules follow the live config), sluice-billing (its price table names the models),
//! sluice-limits (its stats, headroom and spend are gauges and alert inputs), sluice-store (the ledger row a
//! call is recorded from, the ledger writer's stats) and sluice-upstream (member health, the
//! HTTPS connector of the webhook). It never depends on sluice-proxy or sluice-admin: the data
//! plane depends on it to record, and its state reaches the scrape and the alerts through
//! [`Sources`], which the data plane's state implements.

pub mod alerts;
mod gauges;
pub mod metrics;
mod render;

pub use metrics::{CacheResult, Metrics};
pub use render::render;

use sluice_config::Config;
use sluice_core::Clock;
use sluice_limits::limiter::Limiter;
use sluice_store::LedgerStats;
use sluice_upstream::pool::MemberHealth;
use std::sync::Arc;

/// What the scrape and the alert evaluator read from the data plane, filled in by its state
/// (each read happens when the scrape or the evaluation gets to it).
pub trait Sources {
    /// The metrics registry the data plane records into.
    fn metrics(&self) -> &Metrics;
    /// The current config snapshot.
    fn config(&self) -> Arc<Config>;
    /// The clock (spend periods, alert timestamps).
    fn clock(&self) -> &dyn Clock;
    /// The limiter (its stats, queues, bucket headroom, backend and spend).
    fn limiter(&self) -> &Limiter;
    /// Each upstream member's health now.
    fn upstream_health(&self) -> Vec<MemberHealth>;
    /// The ledger writer's counters.
    fn ledger_stats(&self) -> &LedgerStats;
    /// The in-process response cache's entries and bytes, and its bound (`None` when its
    /// entries are not in this process).
    fn response_cache_size(&self) -> Option<ResponseCacheSize> {
        None
    }
}

/// What the in-process response cache holds, read at scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseCacheSize {
    /// Entries held (expired ones count until they are looked up or evicted).
    pub entries: u64,
    /// Their weighted size in bytes.
    pub bytes: u64,
    /// The bound (`caching.response_cache_max_bytes`).
    pub max_bytes: u64,
}
