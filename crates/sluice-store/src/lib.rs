//! Sluice state: gateway keys (stored as SHA-256 hashes, never the key), which tenant owns which
//! message batch, and the call ledger. SQLite (WAL) is the embedded default; with
//! `[store] database_url` the ledger ([`pg`], with the on-disk [`spool`] for outages) and the
//! state store ([`pgstate`]) live in PostgreSQL, shared by every replica.
//!
//! The request path never touches SQLite directly: keys are loaded into memory by the data
//! plane's key ring, and ledger rows go through a bounded queue to a writer thread
//! ([`ledger::LedgerWriter`]) that writes them in batches, one transaction per batch.

pub mod audit;
pub mod batches;
pub mod db;
pub mod keys;
pub mod ledger;
pub mod pg;
pub mod pgstate;
pub mod report;
pub mod spool;
pub mod tenants;
pub mod usage;

pub use audit::{AuditEvent, BrokenLink, NewEvent, Verification};
pub use db::Store;
pub use keys::{ActiveKey, KeyRecord, NewKey, hash_key};
pub use ledger::{LedgerRow, LedgerSender, LedgerStats, LedgerWriter, LedgerWriterOptions};
pub use tenants::{Retired, TenantRow};
pub use usage::{GroupBy, LedgerDb, UsageQuery, UsageRow};

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
    /// PostgreSQL (the ledger's database when `store.database_url` is set) reported an error.
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
    /// The ledger spool (files) or another local file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A setting is unusable (the message says which and why).
    #[error("{0}")]
    Invalid(String),
}
