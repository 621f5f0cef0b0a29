//! The call ledger: one row per call, written off the request path.
//!
//! The data plane hands rows to a [`LedgerSender`], which never blocks: it pushes onto a bounded
//! queue. A dedicated OS thread (SQLite is blocking I/O, so it does not belong on the async
//! runtime) drains the queue and writes up to `batch_max` rows per transaction, at least every
//! `flush_interval`. [`LedgerWriter::shutdown`] drains everything queued before it returns.
//!
//! Loss window: rows still in the queue when the process is killed without a graceful
//! shutdown (at most `flush_interval` worth under normal load), and rows refused because the queue
//! was full (counted in [`LedgerStats::dropped`] and logged). The writer sustains far more rows per
//! second than the gateway serves calls, so a full queue means the disk has stalled.

use crate::StoreError;
use crate::db::open_conn;
use rusqlite::params;
use sluice_core::Usage;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::Duration;

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
    /// How the call ended: `ok`, `upstream_error`, `client_closed`, `stream_error`,
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
}

/// Counters of the writer, shared with the data plane (for metrics and readiness).
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Rows handed to the queue.
    pub queued: AtomicU64,
    /// Rows committed to the database.
    pub written: AtomicU64,
    /// Rows refused because the queue was full, or lost because a write failed.
    pub dropped: AtomicU64,
    /// Batch writes that failed.
    pub write_errors: AtomicU64,
    /// The writer thread is running (cleared when it exits, panics included).
    pub alive: std::sync::atomic::AtomicBool,
}

/// Clears `alive` when the writer thread ends, however it ends.
struct AliveGuard<'a>(&'a LedgerStats);

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Relaxed);
    }
}

enum Msg {
    Row(Box<LedgerRow>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// The data plane's side of the queue. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct LedgerSender {
    tx: SyncSender<Msg>,
    stats: Arc<LedgerStats>,
    /// The writer thread, to wake it early (flush requested, queue full).
    writer: std::thread::Thread,
}

impl std::fmt::Debug for LedgerSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerSender").finish_non_exhaustive()
    }
}

impl LedgerSender {
    /// Queue a row. Returns false (and counts it as dropped) if the queue is full or closed.
    pub fn record(&self, row: LedgerRow) -> bool {
        match self.tx.try_send(Msg::Row(Box::new(row))) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.writer.unpark();
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The writer's counters.
    pub fn stats(&self) -> &Arc<LedgerStats> {
        &self.stats
    }

    /// Wait (blocking) until every row queued before this call is committed. For tests and
    /// shutdown; never call it on the request path.
    pub fn flush_blocking(&self) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_err() {
            return false;
        }
        self.writer.unpark();
        rx.recv().is_ok()
    }
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct LedgerWriterOptions {
    /// Queue capacity in rows.
    pub queue_capacity: usize,
    /// Most rows per transaction.
    pub batch_max: usize,
    /// Longest a queued row waits before it is written.
    pub flush_interval: Duration,
}

impl Default for LedgerWriterOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 100_000,
            batch_max: 2_000,
            flush_interval: Duration::from_millis(100),
        }
    }
}

/// The writer thread's owner. Dropping it without [`LedgerWriter::shutdown`] leaves the thread
/// running until every sender is gone; readiness reads [`LedgerStats::alive`].
pub struct LedgerWriter {
    sender: LedgerSender,
}

impl LedgerWriter {
    /// Open its own connection to `path` and start the writer thread.
    pub fn start(path: &Path, opts: LedgerWriterOptions) -> Result<Self, StoreError> {
        let conn = open_conn(path)?;
        let (tx, rx) = sync_channel(opts.queue_capacity);
        let stats = Arc::new(LedgerStats::default());
        stats.alive.store(true, Ordering::Relaxed);
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-ledger".into())
            .spawn(move || run(conn, rx, opts, &thread_stats))
            .map_err(|e| StoreError::Random(format!("cannot start ledger thread: {e}")))?;
        Ok(Self {
            sender: LedgerSender {
                tx,
                stats,
                writer: thread.thread().clone(),
            },
        })
    }

    /// A sender for the data plane.
    pub fn sender(&self) -> LedgerSender {
        self.sender.clone()
    }

    /// Return once every row queued before this call is committed. The thread itself ends when
    /// the last sender is dropped.
    pub fn shutdown(self) {
        // A flush marker is processed after every row queued before it, so waiting for its
        // acknowledgement is waiting for the queue to drain.
        self.sender.flush_blocking();
    }
}

fn run(
    mut conn: rusqlite::Connection,
    rx: Receiver<Msg>,
    opts: LedgerWriterOptions,
    stats: &LedgerStats,
) {
    let _alive = AliveGuard(stats);
    let mut batch: Vec<LedgerRow> = Vec::with_capacity(opts.batch_max);
    // The writer polls on its flush interval instead of blocking in recv(): a blocked receiver
    // is woken by every send, which costs the request path a cross-thread wakeup (a context
    // switch on a busy machine) per call. Polling costs one wakeup per interval. `Sender::send`
    // still blocks when the queue is full, but only flush_blocking uses it, off the request path.
    loop {
        let mut disconnected = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Row(r)) => {
                    batch.push(*r);
                    if batch.len() >= opts.batch_max {
                        write_batch(&mut conn, &mut batch, stats);
                    }
                }
                // Rows queued before the marker are in `batch` now; write them, then answer.
                Ok(Msg::Flush(w)) => {
                    write_batch(&mut conn, &mut batch, stats);
                    let _ = w.send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        write_batch(&mut conn, &mut batch, stats);
        if disconnected {
            return;
        }
        // Woken early by a flush request or a full queue.
        std::thread::park_timeout(opts.flush_interval);
    }
}

fn write_batch(conn: &mut rusqlite::Connection, batch: &mut Vec<LedgerRow>, stats: &LedgerStats) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    match insert_rows(conn, batch) {
        Ok(()) => {
            stats.written.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            stats.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::error!(error = %e, rows = n, "ledger batch write failed; rows lost");
        }
    }
    batch.clear();
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn insert_rows(conn: &mut rusqlite::Connection, rows: &[LedgerRow]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO ledger (ts_ms, request_id, tenant, key_id, feature, endpoint, model,
                model_served, streamed, status, outcome, error_type, latency_ms, ttfb_ms,
                input_tokens, output_tokens, cache_creation_input_tokens,
                cache_creation_5m_input_tokens, cache_creation_1h_input_tokens,
                cache_read_input_tokens, stop_reason, upstream, cost_micros, waited_ms,
                retries, provider, fallback)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27)",
        )?;
        for r in rows {
            stmt.execute(params![
                r.ts_ms,
                r.request_id,
                r.tenant,
                r.key_id,
                r.feature,
                r.endpoint,
                r.model,
                r.model_served,
                r.streamed,
                r.status,
                r.outcome,
                r.error_type,
                to_i64(r.latency_ms),
                r.ttfb_ms.map(to_i64),
                to_i64(r.usage.input_tokens),
                to_i64(r.usage.output_tokens),
                to_i64(r.usage.cache_creation_input_tokens),
                to_i64(r.usage.cache_creation_5m_input_tokens),
                to_i64(r.usage.cache_creation_1h_input_tokens),
                to_i64(r.usage.cache_read_input_tokens),
                r.stop_reason,
                r.upstream,
                r.cost_micros,
                to_i64(r.waited_ms),
                r.retries,
                r.provider,
                r.fallback,
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::Store;

    fn row(i: i64) -> LedgerRow {
        LedgerRow {
            ts_ms: i,
            request_id: format!("req_{i}"),
            tenant: "web".into(),
            key_id: "key_1".into(),
            endpoint: "messages",
            status: 200,
            outcome: "ok",
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Usage::default()
            },
            ..LedgerRow::default()
        }
    }

    fn count(path: &Path) -> i64 {
        let c = rusqlite::Connection::open(path).unwrap();
        c.query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn shutdown_flushes_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.db");
        Store::open(&p).unwrap();
        let w = LedgerWriter::start(
            &p,
            LedgerWriterOptions {
                flush_interval: Duration::from_secs(60),
                batch_max: 64,
                ..Default::default()
            },
        )
        .unwrap();
        let s = w.sender();
        for i in 0..1000 {
            assert!(s.record(row(i)));
        }
        w.shutdown();
        assert_eq!(count(&p), 1000);
        assert_eq!(s.stats().written.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn full_queue_drops_and_counts_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.db");
        Store::open(&p).unwrap();
        // Hold a write lock so the writer stalls, as a stalled disk would.
        let blocker = rusqlite::Connection::open(&p).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let w = LedgerWriter::start(
            &p,
            LedgerWriterOptions {
                queue_capacity: 4,
                batch_max: 1,
                flush_interval: Duration::from_millis(1),
            },
        )
        .unwrap();
        let s = w.sender();
        let start = std::time::Instant::now();
        let accepted = (0..100).filter(|i| s.record(row(*i))).count();
        assert!(start.elapsed() < Duration::from_secs(1), "record() blocked");
        assert!(accepted < 100);
        assert_eq!(
            s.stats().dropped.load(Ordering::Relaxed),
            100 - accepted as u64
        );
        blocker.execute_batch("COMMIT").unwrap();
        w.shutdown();
        assert_eq!(count(&p), accepted as i64);
    }
}
