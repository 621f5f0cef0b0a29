//! Opening the state store and migrating its schema. The state (keys, batch ownership,
//! admin-managed tenants, the audit chain and the generation counters) lives in the SQLite
//! database (versioned by `PRAGMA user_version`) or, when `[store] database_url` is set, in
//! PostgreSQL ([`crate::pgstate`]), so that every replica sees the same keys and audit chain.

use crate::StoreError;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

const MIGRATIONS: &[&str] = &[
    // v1: keys, batches, ledger.
    "CREATE TABLE keys (
        id          TEXT PRIMARY KEY,
        tenant      TEXT NOT NULL,
        hash        BLOB NOT NULL UNIQUE,
        prefix      TEXT NOT NULL,
        label       TEXT NOT NULL DEFAULT '',
        created_ms  INTEGER NOT NULL,
        expires_ms  INTEGER,
        revoked_ms  INTEGER
     );
     CREATE TABLE meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
     INSERT INTO meta (k, v) VALUES ('keys_generation', 0);
     CREATE TABLE batches (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        id          TEXT NOT NULL UNIQUE,
        tenant      TEXT NOT NULL,
        key_id      TEXT NOT NULL,
        created_ms  INTEGER NOT NULL
     );
     CREATE INDEX batches_tenant ON batches (tenant, seq);
     CREATE TABLE ledger (
        id                  INTEGER PRIMARY KEY,
        ts_ms               INTEGER NOT NULL,
        request_id          TEXT NOT NULL,
        tenant              TEXT NOT NULL,
        key_id              TEXT NOT NULL,
        feature             TEXT,
        endpoint            TEXT NOT NULL,
        model               TEXT,
        model_served        TEXT,
        streamed            INTEGER NOT NULL,
        status              INTEGER NOT NULL,
        outcome             TEXT NOT NULL,
        error_type          TEXT,
        latency_ms          INTEGER NOT NULL,
        ttfb_ms             INTEGER,
        input_tokens        INTEGER NOT NULL,
        output_tokens       INTEGER NOT NULL,
        cache_creation_input_tokens INTEGER NOT NULL,
        cache_creation_5m_input_tokens INTEGER NOT NULL,
        cache_creation_1h_input_tokens INTEGER NOT NULL,
        cache_read_input_tokens INTEGER NOT NULL,
        stop_reason         TEXT,
        upstream            TEXT,
        cost_micros         INTEGER
     );
     CREATE INDEX ledger_ts ON ledger (ts_ms);
     CREATE INDEX ledger_tenant_ts ON ledger (tenant, ts_ms);",
    // v2: how long a call waited for rate-limit room.
    "ALTER TABLE ledger ADD COLUMN waited_ms INTEGER NOT NULL DEFAULT 0;",
    // v3: upstream attempts beyond the first.
    "ALTER TABLE ledger ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;",
    // v4: which provider served the call, and which step of its model's fallback chain.
    "ALTER TABLE ledger ADD COLUMN provider TEXT;
     ALTER TABLE ledger ADD COLUMN fallback INTEGER NOT NULL DEFAULT 0;",
    // v5: a unique id per ledger row, assigned by the ledger writer, so a batch written twice
    // (replayed from the spool after an unacknowledged commit) is stored once. Older rows: NULL.
    "ALTER TABLE ledger ADD COLUMN uid TEXT;
     CREATE UNIQUE INDEX ledger_uid ON ledger (uid);",
    // v6: tenants managed through the admin API (overlaid on the file's), and the audit chain.
    "CREATE TABLE tenants (
        name        TEXT PRIMARY KEY,
        config      TEXT NOT NULL,
        updated_ms  INTEGER NOT NULL
     );
     INSERT INTO meta (k, v) VALUES ('tenants_generation', 0);
     CREATE TABLE audit (
        id          INTEGER PRIMARY KEY,
        ts_ms       INTEGER NOT NULL,
        actor       TEXT NOT NULL,
        action      TEXT NOT NULL,
        target      TEXT NOT NULL,
        before      TEXT,
        after       TEXT,
        prev_hash   TEXT NOT NULL,
        hash        TEXT NOT NULL
     );
     CREATE INDEX audit_ts ON audit (ts_ms);",
    // v7: the output count is an estimate (a stream that ended before its final usage).
    "ALTER TABLE ledger ADD COLUMN usage_estimated INTEGER NOT NULL DEFAULT 0;",
    // v8: caching: Sluice added prompt-cache markers; what a cache saved (micro-dollars).
    "ALTER TABLE ledger ADD COLUMN prompt_cache_added INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE ledger ADD COLUMN saved_micros INTEGER NOT NULL DEFAULT 0;",
];

/// A handle on the state store for control-plane work (CLI, admin API, key-ring refresh, batch
/// ownership). Cloning is cheap; the connection is shared behind a mutex because these calls
/// are rare and short. Every method blocks: async code calls them through `spawn_blocking`
/// (the sync Postgres client would otherwise panic inside the runtime).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    path: PathBuf,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Mutex<Connection>>),
    Postgres(Arc<crate::pgstate::PgState>),
}

/// The backend of one call, locked.
pub(crate) enum Db<'a> {
    Sqlite(MutexGuard<'a, Connection>),
    Postgres(&'a crate::pgstate::PgState),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .field("path", &self.path)
            .finish()
    }
}

impl Store {
    /// Open (creating and migrating if needed) the SQLite database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_conn(&path)?;
        migrate(&conn)?;
        Ok(Self {
            backend: Backend::Sqlite(Arc::new(Mutex::new(conn))),
            path,
        })
    }

    /// Connect to the state store in PostgreSQL at `database_url` (migrating it if needed).
    /// Connects at once, so an unreachable database is reported here; a connection that breaks
    /// later is replaced on the next call. [`Store::path`] is empty.
    pub fn open_postgres(database_url: &str) -> Result<Self, StoreError> {
        Self::postgres_at(database_url, PathBuf::new())
    }

    /// The state store of a deployment: PostgreSQL when `database_url` is set (`path` is then
    /// only reported by [`Store::path`], not opened), else the SQLite database at `path`.
    pub fn open_config(
        path: impl AsRef<Path>,
        database_url: Option<&str>,
    ) -> Result<Self, StoreError> {
        match database_url {
            Some(url) => Self::postgres_at(url, path.as_ref().to_path_buf()),
            None => Self::open(path),
        }
    }

    fn postgres_at(database_url: &str, path: PathBuf) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Postgres(Arc::new(crate::pgstate::PgState::connect(database_url)?)),
            path,
        })
    }

    /// The SQLite database file (with PostgreSQL: the configured `store.path`, not opened).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The Postgres URL when the state store is in PostgreSQL.
    pub(crate) fn database_url(&self) -> Option<&str> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(pg) => Some(pg.url()),
        }
    }

    pub(crate) fn db(&self) -> Result<Db<'_>, StoreError> {
        match &self.backend {
            Backend::Sqlite(c) => Ok(Db::Sqlite(c.lock().map_err(|_| StoreError::Poisoned)?)),
            Backend::Postgres(pg) => Ok(Db::Postgres(pg)),
        }
    }

    /// The SQLite connection (the SQLite ledger's readers need it).
    pub(crate) fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        match self.db()? {
            Db::Sqlite(c) => Ok(c),
            Db::Postgres(_) => Err(StoreError::Invalid(
                "the state store is in PostgreSQL: there is no SQLite database to read".into(),
            )),
        }
    }
}

/// A new connection with the settings every Sluice connection uses.
pub(crate) fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // WAL lets the CLI read while the gateway writes; NORMAL sync is durable across process
    // crashes (not power loss) and is what makes batched ledger writes cheap.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let target = i64::try_from(i + 1).unwrap_or(i64::MAX);
        if version < target {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", target)?;
            tx.commit()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn open_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        Store::open(&p).unwrap();
        let s = Store::open(&p).unwrap();
        let v: i64 = s
            .conn()
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
    }
}
