//! Opening the database and migrating its schema (versioned by `PRAGMA user_version`).

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
];

/// A handle on the state database for control-plane work (CLI, batch ownership). Cloning is
/// cheap; the connection is shared behind a mutex because these calls are rare and short.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open (creating and migrating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_conn(&path)?;
        migrate(&conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
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
