//! The writer thread: it drains the queue into batches and writes them, holds a batch SQLite
//! refuses and retries it, spools batches Postgres cannot take and replays them, oldest first.

use super::sender::Msg;
use super::{LedgerSink, LedgerStats, RetryOptions, StoredRow, UidGen};
use crate::StoreError;
use crate::spool::Spool;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

/// Clears `alive` when the writer thread ends, however it ends.
struct AliveGuard<'a>(&'a LedgerStats);

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Relaxed);
    }
}

/// The writer thread's state.
pub(super) struct Engine<'a> {
    pub(super) sink: Box<dyn LedgerSink>,
    /// Present for a remote database (Postgres): where rows wait while it is unreachable.
    pub(super) spool: Option<Spool>,
    pub(super) stats: &'a LedgerStats,
    pub(super) batch_max: usize,
    pub(super) retry: RetryOptions,
    pub(super) uids: UidGen,
    /// Current wait between attempts (zero while the database answers).
    pub(super) backoff: Duration,
    /// No attempt before this.
    pub(super) next_try: Instant,
    /// When the current outage began (first failure), for the logs.
    pub(super) down_since: Option<Instant>,
    /// A replay under way: when it started and how many rows it has committed.
    pub(super) replay: Option<(Instant, u64)>,
    /// Without a spool (SQLite): a batch the database refused, retried until it is taken.
    /// While it is non-empty the queue is not drained, so it holds at most one batch.
    pub(super) held: Vec<StoredRow>,
    /// Flush requests that arrived behind `held` rows, answered once they are written.
    pub(super) held_flushes: Vec<std::sync::mpsc::Sender<()>>,
}

pub(super) fn run(engine: &mut Engine<'_>, rx: Receiver<Msg>, flush_interval: Duration) {
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
