//! The state store in PostgreSQL (`[store] database_url`): gateway keys, batch ownership,
//! admin-managed tenants, the audit chain and the generation counters, shared by every replica
//! so that a key created on one is known to all.
//!
//! The tables mirror the SQLite ones (`db.rs`, v1 and v6) column for column; their versions
//! are recorded in `sluice_state_migrations`, apart from the ledger's `sluice_migrations`, and
//! applied under the same advisory lock. The methods on [`crate::Store`] hold the SQL for both
//! backends; this module holds the connection and what both need only here.

use crate::StoreError;
use postgres::types::ToSql;
use postgres::{Client, NoTls};
use std::sync::Mutex;

/// Postgres state-store schema versions, applied in order. Append only; never edit an
/// applied one.
pub const MIGRATIONS: &[&str] = &[
    // v1: everything the SQLite state database has (its v1 and v6, without the ledger).
    "CREATE TABLE meta (k TEXT PRIMARY KEY, v BIGINT NOT NULL);
     INSERT INTO meta (k, v) VALUES ('keys_generation', 0), ('tenants_generation', 0);
     CREATE TABLE keys (
        id          TEXT PRIMARY KEY,
        tenant      TEXT NOT NULL,
        hash        BYTEA NOT NULL UNIQUE,
        prefix      TEXT NOT NULL,
        label       TEXT NOT NULL DEFAULT '',
        created_ms  BIGINT NOT NULL,
        expires_ms  BIGINT,
        revoked_ms  BIGINT
     );
     CREATE TABLE batches (
        seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id          TEXT NOT NULL UNIQUE,
        tenant      TEXT NOT NULL,
        key_id      TEXT NOT NULL,
        created_ms  BIGINT NOT NULL
     );
     CREATE INDEX batches_tenant ON batches (tenant, seq);
     CREATE TABLE tenants (
        name        TEXT PRIMARY KEY,
        config      TEXT NOT NULL,
        updated_ms  BIGINT NOT NULL
     );
     CREATE TABLE audit (
        id          BIGINT PRIMARY KEY,
        ts_ms       BIGINT NOT NULL,
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

/// A query parameter (the first of a mixed list is cast to this so the slice type-checks).
pub(crate) type P<'a> = &'a (dyn ToSql + Sync);

/// Advisory lock key serialising audit appends across replicas ("audit" in ASCII): the chain
/// reads the last event and inserts the next, which two transactions must never do at once.
pub(crate) const AUDIT_LOCK: i64 = 0x61_7564_6974;

/// One replica's connection to the state store. Calls are serialised by the mutex (they are
/// rare and short); a connection found closed is replaced on the next call.
pub struct PgState {
    url: String,
    cfg: postgres::Config,
    client: Mutex<Option<Client>>,
}

impl PgState {
    /// Connect and migrate now, so a wrong URL or an unreachable database is reported at once.
    pub(crate) fn connect(database_url: &str) -> Result<Self, StoreError> {
        let cfg = crate::pg::config(database_url)?;
        let client = connect(&cfg)?;
        Ok(Self {
            url: database_url.to_owned(),
            cfg,
            client: Mutex::new(Some(client)),
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Run `f` on the connection, reconnecting first if it was lost. Not retried on failure:
    /// a write may have committed before the connection broke.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.client.lock().map_err(|_| StoreError::Poisoned)?;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = None;
            *guard = Some(connect(&self.cfg)?);
        }
        let Some(client) = guard.as_mut() else {
            return Err(StoreError::Invalid("state database not connected".into()));
        };
        let r = f(client);
        if client.is_closed() {
            *guard = None;
        }
        r
    }
}

impl Drop for PgState {
    /// Closing a sync `postgres` client runs its own runtime, which panics on a tokio worker
    /// (where the gateway drops its last `Store` at shutdown): close it on a thread of its own.
    fn drop(&mut self) {
        let client = match self.client.get_mut() {
            Ok(c) => c.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(client) = client {
            // ManuallyDrop: should the thread not start, the closure is dropped here with the
            // client inside, which must then not close it on this thread.
            let client = std::mem::ManuallyDrop::new(client);
            let spawned = std::thread::Builder::new()
                .name("sluice-pg-close".into())
                .spawn(move || drop(std::mem::ManuallyDrop::into_inner(client)));
            if let Err(e) = spawned {
                // No thread: closing here might panic; dropping the socket unclosed is harmless
                // (the server notices), so the client is leaked instead.
                tracing::debug!(error = %e, "cannot close the state database connection");
            }
        }
    }
}

fn connect(cfg: &postgres::Config) -> Result<Client, StoreError> {
    let mut client = cfg.connect(NoTls)?;
    // A statement stuck behind a lock must not hold a control-plane call (or the key-ring
    // refresh) forever.
    client.batch_execute("SET statement_timeout = '30s'")?;
    crate::pg::apply_migrations(&mut client, "sluice_state_migrations", MIGRATIONS, "state")?;
    Ok(client)
}

/// Bump the generation counter `k` inside the caller's transaction, so pollers never see the
/// new counter without the change (or the change committed without the counter).
pub(crate) fn bump(tx: &mut postgres::Transaction<'_>, k: &str) -> Result<(), StoreError> {
    tx.execute("UPDATE meta SET v = v + 1 WHERE k = $1", &[&k])?;
    Ok(())
}

/// A generation counter's value (0 when missing).
pub(crate) fn generation(c: &mut Client, k: &str) -> Result<i64, StoreError> {
    Ok(c.query_opt("SELECT v FROM meta WHERE k = $1", &[&k])?
        .map_or(0, |r| r.get(0)))
}
