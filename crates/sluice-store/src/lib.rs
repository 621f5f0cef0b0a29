//! Sluice state: gateway keys (stored as SHA-256 hashes, never the key), which tenant owns which
//! message batch, and the call ledger. SQLite (WAL) is the embedded default.
//!
//! The request path never touches SQLite directly: keys are loaded into memory by the data
//! plane's key ring, and ledger rows go through a bounded queue to a writer thread
//! ([`ledger::LedgerWriter`]) that writes them in batches, one transaction per batch.

pub mod batches;
pub mod db;
pub mod keys;
pub mod ledger;
pub mod usage;

pub use db::Store;
pub use keys::{ActiveKey, KeyRecord, NewKey, hash_key};
pub use ledger::{LedgerRow, LedgerSender, LedgerStats, LedgerWriter, LedgerWriterOptions};
pub use usage::{GroupBy, UsageQuery, UsageRow};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The operating system's random source failed (key generation).
    #[error("random source unavailable: {0}")]
    Random(String),
    /// A store lock was poisoned by a panic elsewhere.
    #[error("store lock poisoned")]
    Poisoned,
    /// The named record does not exist.
    #[error("{0} not found")]
    NotFound(String),
}
