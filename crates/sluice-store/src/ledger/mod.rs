//! The call ledger: one row per call, written off the request path.
//!
//! The data plane hands rows to a [`LedgerSender`], which never blocks: it pushes onto a bounded
//! queue. A dedicated OS thread (SQLite and the sync Postgres client are blocking I/O, so they do
//! not belong on the async runtime) drains the queue and writes up to `batch_max` rows per
//! transaction, at least every `flush_interval`. [`LedgerWriter::shutdown`] drains everything
//! queued before it returns.
//!
//! Two backends: the SQLite state database ([`LedgerWriter::start`]) and PostgreSQL
//! ([`LedgerWriter::start_postgres`], shared by every replica). With Postgres, a batch the
//! database cannot take (unreachable, restarting) goes to the on-disk [`crate::spool`] instead,
//! and later batches follow it there until the spool has been replayed, so rows reach the
//! database in the order they were recorded. Every row gets a unique id ([`StoredRow::uid`])
//! when it enters the writer, and inserts skip ids already present: a batch replayed after a
//! commit whose acknowledgement was lost is stored once.
//!
//! With SQLite, a batch the database refuses (the file locked by another process past the
//! busy timeout, a full disk) is held in memory and retried with the same backoff as Postgres;
//! while it is held the writer stops draining the queue, so the bounded queue is the buffer
//! and new rows are refused only once it is full.
//!
//! Loss window: rows still in the queue when the process is killed without a graceful
//! shutdown (at most `flush_interval` worth under normal load), rows refused because the queue
//! was full, SQLite rows still refused when shutdown has waited `shutdown_wait` for them, and
//! Postgres rows that do not fit in a full spool (all counted in [`LedgerStats::dropped`] and
//! logged). The writer sustains far more rows per second than the gateway serves calls, so a
//! full queue means the disk has stalled.

mod engine;
mod row;
mod sender;
mod sqlite;
mod writer;

pub use row::{StoredRow, UidGen};
pub use sender::LedgerSender;
pub use sqlite::SqliteSink;
pub use writer::{LedgerWriter, LedgerWriterOptions, RetryOptions};

use crate::StoreError;
use sluice_core::Usage;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// One call, as recorded. No prompt or completion text is ever part of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LedgerRow {
    /// When the call arrived (Unix ms).
    pub ts_ms: i64,
    /// The upstream's `request-id`, or the gateway's own id when the upstream was not reached.
    pub request_id: String,
    /// Calling tenant.
    pub tenant: String,
    /// Gateway key id used.
    pub key_id: String,
    /// `x-sluice-feature` label.
    pub feature: Option<String>,
    /// Which API: `messages`, `count_tokens`, `models`, `batches.create`, …
    pub endpoint: &'static str,
    /// Model requested.
    pub model: Option<String>,
    /// Model the upstream says it served.
    pub model_served: Option<String>,
    /// The reply was an SSE stream.
    pub streamed: bool,
    /// HTTP status returned to the client.
    pub status: u16,
    /// How the call ended: `ok`, `cache_hit` (answered from the response cache), `upstream_error`, `client_closed`, `stream_error`,
    /// `upstream_disconnected`, `upstream_truncated`, `upstream_unreachable`, `upstream_timeout`,
    /// `rejected`.
    pub outcome: &'static str,
    /// `error.type` when there was an error.
    pub error_type: Option<String>,
    /// Total time to the last byte (ms).
    pub latency_ms: u64,
    /// Time to the first byte from the upstream (ms).
    pub ttfb_ms: Option<u64>,
    /// Token counts.
    pub usage: Usage,
    /// Stop reason.
    pub stop_reason: Option<String>,
    /// Which upstream served it.
    pub upstream: Option<String>,
    /// Cost in micro-dollars from the price table (`None`: the model has no price).
    pub cost_micros: Option<i64>,
    /// Milliseconds the call waited in the limiter's queue before it was admitted.
    pub waited_ms: u64,
    /// Upstream attempts beyond the first (retries).
    pub retries: u32,
    /// The provider of the member that served it (`anthropic`, `bedrock`, `vertex`).
    pub provider: Option<&'static str>,
    /// Which step of the model's fallback chain served it (0: the primary).
    pub fallback: u8,
    /// `usage.output_tokens` is an estimate: the stream ended before its final usage, and the
    /// output was estimated from the content seen.
    pub usage_estimated: bool,
    /// Sluice added prompt-cache markers to the request it forwarded (the tenant's
    /// `prompt_cache = "auto"`); the client's body carried none.
    pub prompt_cache_added: bool,
    /// Micro-dollars a cache saved this call: for outcome `cache_hit` (answered from the
    /// response cache) the whole cost the stored reply had; otherwise what prompt caching saved
    /// against the same prompt uncached (cache-read discount minus cache-write premium, so it is
    /// negative on a call that only wrote the cache). 0 when nothing was cached or unpriced.
    pub saved_micros: i64,
}

/// Counters of the writer, shared with the data plane (for metrics and readiness).
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Rows handed to the queue.
    pub queued: AtomicU64,
    /// Rows committed to the database (replayed rows included).
    pub written: AtomicU64,
    /// Rows refused because the queue was full, still refused by SQLite when shutdown gave up
    /// waiting, or refused because the spool was full (Postgres).
    pub dropped: AtomicU64,
    /// Batch writes that failed (each failed Postgres attempt counts, spooled or not).
    pub write_errors: AtomicU64,
    /// The writer thread is running (cleared when it exits, panics included).
    pub alive: AtomicBool,
    /// The ledger database took the last write (or connection attempt). Always true for SQLite
    /// unless a write failed; false while Postgres is unreachable.
    pub database_up: AtomicBool,
    /// Rows written to the spool because the database could not take them (a counter).
    pub spooled: AtomicU64,
    /// Rows replayed from the spool into the database (a counter).
    pub replayed: AtomicU64,
    /// Rows waiting in the spool now (a gauge: the spool's depth).
    pub spool_rows: AtomicU64,
    /// Bytes the spool's segment files take on disk now (a gauge).
    pub spool_bytes: AtomicU64,
}

/// Where the writer stores rows. Implemented for SQLite and Postgres; `insert` must be
/// idempotent per [`StoredRow::uid`] (a row already present is skipped, not an error).
pub trait LedgerSink: Send {
    /// Connect (and migrate) if not connected. A local database is always ready.
    fn ensure_ready(&mut self) -> Result<(), StoreError>;
    /// Store `rows` in one transaction: all of them or none.
    fn insert(&mut self, rows: &[StoredRow]) -> Result<(), StoreError>;
    /// Forget the connection after an error, so the next attempt reconnects.
    fn reset(&mut self);
}
