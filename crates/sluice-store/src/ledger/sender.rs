//! The data plane's side of the ledger queue ([`LedgerSender`]) and the messages it carries
//! to the writer thread.

use super::{LedgerRow, LedgerStats};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};

pub(super) enum Msg {
    Row(Box<LedgerRow>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// The data plane's side of the queue. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct LedgerSender {
    pub(super) tx: SyncSender<Msg>,
    pub(super) stats: Arc<LedgerStats>,
    /// The writer thread, to wake it early (flush requested, queue full).
    pub(super) writer: std::thread::Thread,
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
