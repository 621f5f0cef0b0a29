//! The writer's owner ([`LedgerWriter`]): its settings, how it starts the writer thread for
//! each backend, and how shutdown waits for the queue to drain.

use super::engine::{Engine, run};
use super::sender::{LedgerSender, Msg};
use super::{LedgerSink, LedgerStats, SqliteSink, UidGen};
use crate::StoreError;
use crate::pg::PgSink;
use crate::spool::{Spool, SpoolOptions};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{TrySendError, sync_channel};
use std::time::{Duration, Instant};

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::Store;
    use crate::ledger::LedgerRow;
    use sluice_core::Usage;

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
