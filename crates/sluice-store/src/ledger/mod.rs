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

use crate::StoreError;
use crate::db::open_conn;
use crate::pg::PgSink;
use crate::spool::{Spool, SpoolOptions};
use rusqlite::params;
use sluice_core::Usage;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant};

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
    /// `usage.output_tokens` is an estimate: the stream ended before its final usage, and the
    /// output was estimated from the content seen.
    pub usage_estimated: bool,
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

/// Clears `alive` when the writer thread ends, however it ends.
struct AliveGuard<'a>(&'a LedgerStats);

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Relaxed);
    }
}

/// A ledger row as the writer stores it: the [`LedgerRow`] with owned strings (it is read back
/// from the spool) and the unique id that makes inserts idempotent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[allow(missing_docs)] // The fields are those of `LedgerRow`, documented there.
pub struct StoredRow {
    /// Unique per row: the writer's random instance id and a sequence number, 32 hex digits.
    pub uid: String,
    pub ts_ms: i64,
    pub request_id: String,
    pub tenant: String,
    pub key_id: String,
    pub feature: Option<String>,
    pub endpoint: String,
    pub model: Option<String>,
    pub model_served: Option<String>,
    pub streamed: bool,
    pub status: u16,
    pub outcome: String,
    pub error_type: Option<String>,
    pub latency_ms: u64,
    pub ttfb_ms: Option<u64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_creation_5m_input_tokens: u64,
    pub cache_creation_1h_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub stop_reason: Option<String>,
    pub upstream: Option<String>,
    pub cost_micros: Option<i64>,
    pub waited_ms: u64,
    pub retries: u32,
    pub provider: Option<String>,
    pub fallback: u8,
    /// Absent in rows spooled by older versions.
    #[serde(default)]
    pub usage_estimated: bool,
}

impl StoredRow {
    /// `row`, under id `uid`.
    pub fn new(uid: String, row: LedgerRow) -> Self {
        Self {
            uid,
            ts_ms: row.ts_ms,
            request_id: row.request_id,
            tenant: row.tenant,
            key_id: row.key_id,
            feature: row.feature,
            endpoint: row.endpoint.to_owned(),
            model: row.model,
            model_served: row.model_served,
            streamed: row.streamed,
            status: row.status,
            outcome: row.outcome.to_owned(),
            error_type: row.error_type,
            latency_ms: row.latency_ms,
            ttfb_ms: row.ttfb_ms,
            input_tokens: row.usage.input_tokens,
            output_tokens: row.usage.output_tokens,
            cache_creation_input_tokens: row.usage.cache_creation_input_tokens,
            cache_creation_5m_input_tokens: row.usage.cache_creation_5m_input_tokens,
            cache_creation_1h_input_tokens: row.usage.cache_creation_1h_input_tokens,
            cache_read_input_tokens: row.usage.cache_read_input_tokens,
            stop_reason: row.stop_reason,
            upstream: row.upstream,
            cost_micros: row.cost_micros,
            waited_ms: row.waited_ms,
            retries: row.retries,
            provider: row.provider.map(str::to_owned),
            fallback: row.fallback,
            usage_estimated: row.usage_estimated,
        }
    }
}

/// Hands out row ids: a random 64-bit instance id (one per writer) and a counter, so ids are
/// unique across replicas and restarts without coordination.
#[derive(Debug)]
pub struct UidGen {
    instance: u64,
    next: u64,
}

impl UidGen {
    /// A generator with a fresh random instance id.
    pub fn new() -> Self {
        let instance = getrandom::u64().unwrap_or_else(|_| {
            // No OS randomness: the clock and the process id still make a collision unlikely.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (u64::from(std::process::id()) << 32)
        });
        Self { instance, next: 0 }
    }

    /// The next id.
    pub fn next_uid(&mut self) -> String {
        let n = self.next;
        self.next += 1;
        format!("{:016x}{:016x}", self.instance, n)
    }
}

impl Default for UidGen {
    fn default() -> Self {
        Self::new()
    }
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

/// The SQLite ledger table as a [`LedgerSink`].
pub struct SqliteSink {
    conn: rusqlite::Connection,
}

impl SqliteSink {
    /// Open its own connection to the state database at `path` (already migrated).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: open_conn(path)?,
        })
    }
}

impl LedgerSink for SqliteSink {
    fn ensure_ready(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn insert(&mut self, rows: &[StoredRow]) -> Result<(), StoreError> {
        insert_rows(&mut self.conn, rows)
    }

    fn reset(&mut self) {}
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

    /// Wait (blocking) until every row queued before this call is durable: committed to the
    /// database or, with Postgres while it is unreachable, fsynced to the spool. When the
    /// spool holds rows and the database answers, the writer also replays for a bounded time
    /// (`replay_on_flush`) before it answers. For tests and shutdown; never call it on the
    /// request path.
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

/// How the Postgres writer retries and replays (the defaults suit production; tests shorten
/// them).
#[derive(Debug, Clone)]
pub struct RetryOptions {
    /// Wait after the first failure; doubled per consecutive failure.
    pub backoff_base: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Longest the writer replays in one go before it drains the queue again.
    pub replay_slice: Duration,
    /// Longest a flush (and so shutdown) spends replaying the spool.
    pub replay_on_flush: Duration,
    /// Longest [`LedgerWriter::shutdown`] waits for rows the database keeps refusing (SQLite
    /// has no spool to put them in); what is still unwritten then is counted as dropped.
    pub shutdown_wait: Duration,
}

impl Default for RetryOptions {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
            replay_slice: Duration::from_millis(200),
            replay_on_flush: Duration::from_secs(5),
            shutdown_wait: Duration::from_secs(30),
        }
    }
}

/// The writer thread's owner. Dropping it without [`LedgerWriter::shutdown`] leaves the thread
/// running until every sender is gone; readiness reads [`LedgerStats::alive`].
pub struct LedgerWriter {
    sender: LedgerSender,
    shutdown_wait: Duration,
}

impl LedgerWriter {
    /// Open its own connection to the SQLite database at `path` and start the writer thread.
    pub fn start(path: &Path, opts: LedgerWriterOptions) -> Result<Self, StoreError> {
        let sink = SqliteSink::open(path)?;
        Self::spawn(Box::new(sink), None, opts, RetryOptions::default())
    }

    /// Start a writer into PostgreSQL at `database_url`, spooling to `spool` while the database
    /// cannot take rows. Fails only on a malformed URL or an unusable spool directory: an
    /// unreachable database is not an error (rows are spooled until it answers).
    pub fn start_postgres(
        database_url: &str,
        spool: SpoolOptions,
        opts: LedgerWriterOptions,
        retry: RetryOptions,
    ) -> Result<Self, StoreError> {
        let sink = PgSink::new(database_url)?;
        let spool = Spool::open(spool)?;
        Self::spawn(Box::new(sink), Some(spool), opts, retry)
    }

    /// Start a writer into any sink, with an optional spool (tests, other backends).
    pub fn start_with(
        sink: Box<dyn LedgerSink>,
        spool: Option<Spool>,
        opts: LedgerWriterOptions,
        retry: RetryOptions,
    ) -> Result<Self, StoreError> {
        Self::spawn(sink, spool, opts, retry)
    }

    fn spawn(
        sink: Box<dyn LedgerSink>,
        spool: Option<Spool>,
        opts: LedgerWriterOptions,
        retry: RetryOptions,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = sync_channel(opts.queue_capacity);
        let stats = Arc::new(LedgerStats::default());
        stats.alive.store(true, Ordering::Relaxed);
        stats.database_up.store(spool.is_none(), Ordering::Relaxed);
        if let Some(s) = &spool {
            stats.spool_rows.store(s.rows(), Ordering::Relaxed);
            stats.spool_bytes.store(s.bytes(), Ordering::Relaxed);
        }
        let thread_stats = stats.clone();
        let shutdown_wait = retry.shutdown_wait;
        let thread = std::thread::Builder::new()
            .name("sluice-ledger".into())
            .spawn(move || {
                let mut engine = Engine {
                    sink,
                    spool,
                    stats: &thread_stats,
                    batch_max: opts.batch_max.max(1),
                    retry,
                    uids: UidGen::new(),
                    backoff: Duration::ZERO,
                    next_try: Instant::now(),
                    down_since: None,
                    replay: None,
                    held: Vec::new(),
                    held_flushes: Vec::new(),
                };
                run(&mut engine, rx, opts.flush_interval);
            })
            .map_err(|e| StoreError::Invalid(format!("cannot start ledger thread: {e}")))?;
        Ok(Self {
            sender: LedgerSender {
                tx,
                stats,
                writer: thread.thread().clone(),
            },
            shutdown_wait,
        })
    }

    /// A sender for the data plane.
    pub fn sender(&self) -> LedgerSender {
        self.sender.clone()
    }

    /// Return once every row queued before this call is durable (see
    /// [`LedgerSender::flush_blocking`]), or after `shutdown_wait` if the database keeps
    /// refusing them (a SQLite file locked or failing for good must not keep the process from
    /// exiting; the rows not written are counted as dropped and logged). The thread itself ends
    /// when the last sender is dropped.
    pub fn shutdown(self) {
        // A flush marker is processed after every row queued before it, so waiting for its
        // acknowledgement is waiting for the queue to drain.
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + self.shutdown_wait;
        let mut marker = Msg::Flush(tx);
        // `send` would block for as long as the queue stays full; try until the deadline.
        let queued = loop {
            match self.sender.tx.try_send(marker) {
                Ok(()) => break true,
                Err(TrySendError::Disconnected(_)) => break false,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        break false;
                    }
                    marker = m;
                    self.sender.writer.unpark();
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        self.sender.writer.unpark();
        let done = queued
            && rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_ok();
        if !done {
            // Rows accepted and neither committed nor spooled (replayed rows were counted in
            // both `spooled` and `written`). Exact for SQLite, which has no spool.
            let s = &self.sender.stats;
            let unwritten = (s.queued.load(Ordering::Relaxed) + s.replayed.load(Ordering::Relaxed))
                .saturating_sub(s.written.load(Ordering::Relaxed))
                .saturating_sub(s.spooled.load(Ordering::Relaxed));
            s.dropped.fetch_add(unwritten, Ordering::Relaxed);
            tracing::error!(
                rows = unwritten,
                waited_ms = self.shutdown_wait.as_millis() as u64,
                "ledger database still refuses writes at shutdown; rows lost"
            );
        }
    }
}

/// The writer thread's state.
struct Engine<'a> {
    sink: Box<dyn LedgerSink>,
    /// Present for a remote database (Postgres): where rows wait while it is unreachable.
    spool: Option<Spool>,
    stats: &'a LedgerStats,
    batch_max: usize,
    retry: RetryOptions,
    uids: UidGen,
    /// Current wait between attempts (zero while the database answers).
    backoff: Duration,
    /// No attempt before this.
    next_try: Instant,
    /// When the current outage began (first failure), for the logs.
    down_since: Option<Instant>,
    /// A replay under way: when it started and how many rows it has committed.
    replay: Option<(Instant, u64)>,
    /// Without a spool (SQLite): a batch the database refused, retried until it is taken.
    /// While it is non-empty the queue is not drained, so it holds at most one batch.
    held: Vec<StoredRow>,
    /// Flush requests that arrived behind `held` rows, answered once they are written.
    held_flushes: Vec<std::sync::mpsc::Sender<()>>,
}

fn run(engine: &mut Engine<'_>, rx: Receiver<Msg>, flush_interval: Duration) {
    let _alive = AliveGuard(engine.stats);
    let mut batch: Vec<StoredRow> = Vec::with_capacity(engine.batch_max);
    // The writer polls on its flush interval instead of blocking in recv(): a blocked receiver
    // is woken by every send, which costs the request path a cross-thread wakeup (a context
    // switch on a busy machine) per call. Polling costs one wakeup per interval. `Sender::send`
    // still blocks when the queue is full, but only flush_blocking uses it, off the request path.
    loop {
        if !engine.held.is_empty() {
            // Refused rows go first; until they are written the queue is left to fill (and
            // to refuse rows once full) rather than growing a buffer here without bound.
            engine.retry_held();
            if !engine.held.is_empty() {
                let wait = engine.next_try.saturating_duration_since(Instant::now());
                std::thread::park_timeout(wait.max(Duration::from_millis(1)));
                continue;
            }
        }
        let mut disconnected = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Row(r)) => {
                    let uid = engine.uids.next_uid();
                    batch.push(StoredRow::new(uid, *r));
                    if batch.len() >= engine.batch_max {
                        engine.write_batch(&mut batch);
                        if !engine.held.is_empty() {
                            break;
                        }
                    }
                }
                // Rows queued before the marker are in `batch` now; write them, then answer.
                Ok(Msg::Flush(w)) => {
                    engine.write_batch(&mut batch);
                    if !engine.held.is_empty() {
                        engine.held_flushes.push(w);
                        break;
                    }
                    let budget = engine.retry.replay_on_flush;
                    engine.replay_for(budget);
                    let _ = w.send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        engine.write_batch(&mut batch);
        if disconnected {
            engine.drain_held_before_exit();
            let budget = engine.retry.replay_on_flush;
            engine.replay_for(budget);
            return;
        }
        let slice = engine.retry.replay_slice;
        engine.replay_for(slice);
        // Woken early by a flush request or a full queue. While a spool waits for the database,
        // wake for the next attempt even if it comes before the flush interval.
        let mut wait = flush_interval;
        if engine.spool.as_ref().is_some_and(|s| !s.is_empty()) {
            wait = wait.min(engine.next_try.saturating_duration_since(Instant::now()));
            if wait.is_zero() {
                // Replay continues next round without sleeping; yield so the queue fills a bit.
                wait = Duration::from_millis(1);
            }
        }
        std::thread::park_timeout(wait);
    }
}

impl Engine<'_> {
    fn write_batch(&mut self, batch: &mut Vec<StoredRow>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let spooling = match &self.spool {
            None => false,
            // Rows already waiting go first, so a new batch joins them while any remain.
            Some(s) => !s.is_empty(),
        };
        if !spooling && self.try_ready() {
            match self.sink.insert(batch) {
                Ok(()) => {
                    self.stats.written.fetch_add(n, Ordering::Relaxed);
                    batch.clear();
                    return;
                }
                Err(e) => self.failed(&e, n),
            }
        }
        if self.spool.is_some() {
            self.spool_append(batch);
            batch.clear();
        } else {
            // SQLite: keep the rows for `retry_held` (the failure was counted by `failed`).
            std::mem::swap(&mut self.held, batch);
        }
    }

    /// Try the held batch again once its backoff has passed.
    fn retry_held(&mut self) {
        if self.held.is_empty() || Instant::now() < self.next_try {
            return;
        }
        let n = self.held.len() as u64;
        match self.sink.insert(&self.held) {
            Ok(()) => {
                self.stats.written.fetch_add(n, Ordering::Relaxed);
                self.held.clear();
                self.backoff = Duration::ZERO;
                self.stats.database_up.store(true, Ordering::Relaxed);
                if let Some(since) = self.down_since.take() {
                    tracing::warn!(
                        down_ms = since.elapsed().as_millis() as u64,
                        rows = n,
                        "ledger database writable again; held rows written"
                    );
                }
                for w in self.held_flushes.drain(..) {
                    let _ = w.send(());
                }
            }
            Err(e) => self.failed(&e, n),
        }
    }

    /// Every sender is gone (the process is stopping): retry held rows for at most
    /// `shutdown_wait`, then count what is left as dropped.
    fn drain_held_before_exit(&mut self) {
        let deadline = Instant::now() + self.retry.shutdown_wait;
        while !self.held.is_empty() && Instant::now() < deadline {
            std::thread::sleep(self.next_try.saturating_duration_since(Instant::now()));
            self.retry_held();
        }
        if !self.held.is_empty() {
            let n = self.held.len() as u64;
            self.stats.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::error!(rows = n, "ledger database still refuses writes; rows lost");
            self.held.clear();
        }
    }

    fn spool_append(&mut self, batch: &[StoredRow]) {
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        let n = batch.len() as u64;
        match spool.append(batch) {
            Ok(kept) => {
                self.stats.spooled.fetch_add(kept, Ordering::Relaxed);
                if kept < n {
                    self.stats.dropped.fetch_add(n - kept, Ordering::Relaxed);
                    tracing::error!(
                        rows = n - kept,
                        spool_bytes = spool.bytes(),
                        "ledger spool full; rows dropped"
                    );
                }
            }
            Err(e) => {
                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(error = %e, rows = n, "ledger spool write failed; rows lost");
            }
        }
        self.publish_spool();
    }

    fn publish_spool(&self) {
        if let Some(s) = &self.spool {
            self.stats.spool_rows.store(s.rows(), Ordering::Relaxed);
            self.stats.spool_bytes.store(s.bytes(), Ordering::Relaxed);
        }
    }

    /// Whether the sink may be used now: connected, or the backoff has passed and a connection
    /// attempt succeeds.
    fn try_ready(&mut self) -> bool {
        if self.down_since.is_some() && Instant::now() < self.next_try {
            return false;
        }
        match self.sink.ensure_ready() {
            Ok(()) => {
                if let Some(since) = self.down_since.take() {
                    let rows = self.spool.as_ref().map_or(0, Spool::rows);
                    tracing::warn!(
                        down_ms = since.elapsed().as_millis() as u64,
                        spooled_rows = rows,
                        "ledger database reachable again; replaying the spool"
                    );
                }
                self.backoff = Duration::ZERO;
                self.stats.database_up.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.failed(&e, 0);
                false
            }
        }
    }

    /// Count and log a failed attempt and schedule the next one.
    fn failed(&mut self, e: &StoreError, rows: u64) {
        self.sink.reset();
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        self.stats.database_up.store(false, Ordering::Relaxed);
        self.backoff = if self.backoff.is_zero() {
            self.retry.backoff_base
        } else {
            (self.backoff * 2).min(self.retry.backoff_max)
        };
        self.next_try = Instant::now() + self.backoff;
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            if self.spool.is_none() {
                tracing::error!(
                    error = %e,
                    rows,
                    retry_in_ms = self.backoff.as_millis() as u64,
                    "ledger batch write failed; holding the rows and retrying"
                );
            } else {
                tracing::error!(
                    error = %e,
                    rows,
                    "ledger database unavailable; spooling rows to disk until it answers"
                );
            }
        } else if self.spool.is_none() {
            tracing::warn!(
                error = %e,
                rows,
                retry_in_ms = self.backoff.as_millis() as u64,
                "ledger database still refuses writes"
            );
        } else {
            tracing::warn!(
                error = %e,
                retry_in_ms = self.backoff.as_millis() as u64,
                spooled_rows = self.spool.as_ref().map_or(0, Spool::rows),
                "ledger database still unavailable"
            );
        }
    }

    /// Replay spooled rows, oldest first, one transaction per chunk, for at most `budget`.
    fn replay_for(&mut self, budget: Duration) {
        let deadline = Instant::now() + budget;
        loop {
            let pending = self.spool.as_ref().is_some_and(|s| !s.is_empty());
            if !pending || Instant::now() >= deadline || !self.try_ready() {
                break;
            }
            if self.replay.is_none() {
                self.replay = Some((Instant::now(), 0));
            }
            let Some(spool) = self.spool.as_mut() else {
                break;
            };
            let before_corrupt = spool.corrupt();
            let chunk = match spool.peek_chunk(self.batch_max) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the ledger spool");
                    self.next_try = Instant::now() + self.retry.backoff_max;
                    self.down_since.get_or_insert_with(Instant::now);
                    break;
                }
            };
            let n = chunk.len() as u64;
            let result = if chunk.is_empty() {
                Ok(())
            } else {
                self.sink.insert(chunk)
            };
            let corrupt = spool.corrupt() - before_corrupt;
            if corrupt > 0 {
                self.stats.dropped.fetch_add(corrupt, Ordering::Relaxed);
            }
            match result {
                Ok(()) => {
                    if let Err(e) = spool.commit_chunk() {
                        tracing::error!(error = %e, "cannot remove a replayed spool segment");
                    }
                    self.stats.written.fetch_add(n, Ordering::Relaxed);
                    self.stats.replayed.fetch_add(n, Ordering::Relaxed);
                    if let Some((_, done)) = &mut self.replay {
                        *done += n;
                    }
                }
                Err(e) => {
                    self.publish_spool();
                    self.failed(&e, n);
                    break;
                }
            }
            self.publish_spool();
        }
        if self.spool.as_ref().is_some_and(Spool::is_empty)
            && let Some((start, rows)) = self.replay.take()
        {
            tracing::warn!(
                rows,
                took_ms = start.elapsed().as_millis() as u64,
                "ledger spool replayed into the database and emptied"
            );
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn insert_rows(conn: &mut rusqlite::Connection, rows: &[StoredRow]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        // ON CONFLICT: a row id already stored means this batch is a replay; keep the first.
        let mut stmt = tx.prepare_cached(
            "INSERT INTO ledger (ts_ms, request_id, tenant, key_id, feature, endpoint, model,
                model_served, streamed, status, outcome, error_type, latency_ms, ttfb_ms,
                input_tokens, output_tokens, cache_creation_input_tokens,
                cache_creation_5m_input_tokens, cache_creation_1h_input_tokens,
                cache_read_input_tokens, stop_reason, upstream, cost_micros, waited_ms,
                retries, provider, fallback, uid, usage_estimated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)
             ON CONFLICT (uid) DO NOTHING",
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
                to_i64(r.input_tokens),
                to_i64(r.output_tokens),
                to_i64(r.cache_creation_input_tokens),
                to_i64(r.cache_creation_5m_input_tokens),
                to_i64(r.cache_creation_1h_input_tokens),
                to_i64(r.cache_read_input_tokens),
                r.stop_reason,
                r.upstream,
                r.cost_micros,
                to_i64(r.waited_ms),
                r.retries,
                r.provider,
                r.fallback,
                r.uid,
                r.usage_estimated,
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
