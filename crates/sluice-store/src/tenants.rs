//! Tenants created or edited through the admin API (or `sluice tenants …`): each row is one
//! tenant's whole configuration as JSON, overlaid by the gateway on the config file's tenants
//! (a row wins over the file's tenant of the same name). The store does not read the JSON; the
//! control plane validates it as part of the whole config before writing. Every write also
//! appends its audit event in the same transaction and bumps a generation counter that running
//! gateways poll, so a change made by the CLI reaches them without a restart.

use crate::audit::{AuditEvent, NewEvent, append_in, immediate, pg_append_in};
use crate::db::Db;
use crate::pgstate::{self, P};
use crate::{Store, StoreError};
use rusqlite::{OptionalExtension, params};

/// One overlay row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TenantRow {
    /// Tenant name.
    pub name: String,
    /// The tenant's configuration (JSON text, the `[[tenants]]` keys).
    pub config: String,
    /// Last change (Unix ms).
    pub updated_ms: i64,
}

/// What [`Store::retire_tenant`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    /// The deletion's audit event.
    pub event: AuditEvent,
    /// Keys that were active and are now revoked.
    pub keys_revoked: u64,
    /// Batches whose ownership was retired.
    pub batches_retired: u64,
}

fn bump(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE meta SET v = v + 1 WHERE k = 'tenants_generation'",
        [],
    )?;
    Ok(())
}

fn pg_row(r: &postgres::Row) -> TenantRow {
    TenantRow {
        name: r.get(0),
        config: r.get(1),
        updated_ms: r.get(2),
    }
}

impl Store {
    /// Every overlay row, by name.
    pub fn tenant_rows(&self) -> Result<Vec<TenantRow>, StoreError> {
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => {
                return pg.with(|c| {
                    Ok(c.query(
                        "SELECT name, config, updated_ms FROM tenants ORDER BY name",
                        &[],
                    )?
                    .iter()
                    .map(pg_row)
                    .collect())
                });
            }
        };
        let mut stmt =
            conn.prepare("SELECT name, config, updated_ms FROM tenants ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(TenantRow {
                name: r.get(0)?,
                config: r.get(1)?,
                updated_ms: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The overlay row of `name`, if any.
    pub fn tenant_row(&self, name: &str) -> Result<Option<TenantRow>, StoreError> {
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => {
                return pg.with(|c| {
                    Ok(c.query_opt(
                        "SELECT name, config, updated_ms FROM tenants WHERE name = $1",
                        &[&name],
                    )?
                    .as_ref()
                    .map(pg_row))
                });
            }
        };
        Ok(conn
            .query_row(
                "SELECT name, config, updated_ms FROM tenants WHERE name = ?1",
                [name],
                |r| {
                    Ok(TenantRow {
                        name: r.get(0)?,
                        config: r.get(1)?,
                        updated_ms: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Insert or replace `name`'s row and append `event`, atomically.
    pub fn put_tenant(
        &self,
        name: &str,
        config_json: &str,
        event: &NewEvent,
    ) -> Result<AuditEvent, StoreError> {
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => {
                return pg.with(|c| {
                    let mut tx = c.transaction()?;
                    tx.execute(
                        "INSERT INTO tenants (name, config, updated_ms) VALUES ($1, $2, $3)
                         ON CONFLICT (name) DO UPDATE SET config = excluded.config,
                                                          updated_ms = excluded.updated_ms",
                        &[&name as P<'_>, &config_json, &event.ts_ms],
                    )?;
                    pgstate::bump(&mut tx, "tenants_generation")?;
                    let e = pg_append_in(&mut tx, event)?;
                    tx.commit()?;
                    Ok(e)
                });
            }
        };
        let tx = immediate(&conn)?;
        tx.execute(
            "INSERT INTO tenants (name, config, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET config = excluded.config,
                                              updated_ms = excluded.updated_ms",
            params![name, config_json, event.ts_ms],
        )?;
        bump(&tx)?;
        let e = append_in(&tx, event)?;
        tx.commit()?;
        Ok(e)
    }

    /// Delete `name`'s row and append `event`, atomically. [`StoreError::NotFound`] when
    /// there is no row (nothing is written).
    pub fn delete_tenant(&self, name: &str, event: &NewEvent) -> Result<AuditEvent, StoreError> {
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => {
                return pg.with(|c| {
                    let mut tx = c.transaction()?;
                    if tx.execute("DELETE FROM tenants WHERE name = $1", &[&name])? == 0 {
                        return Err(StoreError::NotFound(format!("tenant {name}")));
                    }
                    pgstate::bump(&mut tx, "tenants_generation")?;
                    let e = pg_append_in(&mut tx, event)?;
                    tx.commit()?;
                    Ok(e)
                });
            }
        };
        let tx = immediate(&conn)?;
        if tx.execute("DELETE FROM tenants WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NotFound(format!("tenant {name}")));
        }
        bump(&tx)?;
        let e = append_in(&tx, event)?;
        tx.commit()?;
        Ok(e)
    }

    /// Delete `name`'s row for good (the tenant no longer exists afterwards) and append
    /// `event`, atomically: the tenant's keys are revoked at `event.ts_ms` and its batches are
    /// handed to a retired owner no tenant can be named (`name/deleted@<ms>`, kept for the
    /// record), so a tenant created later under the same name inherits neither. Its ledger
    /// rows stay (they are history); budgets count spend only after the deletion, which
    /// [`Store::tenant_deletions_since`] reads back from this event. [`StoreError::NotFound`]
    /// when there is no row (nothing is written).
    pub fn retire_tenant(&self, name: &str, event: &NewEvent) -> Result<Retired, StoreError> {
        // The event is what [`Store::tenant_deletions_since`] finds the deletion by.
        if event.action != "tenant.delete" || event.after.is_some() {
            return Err(StoreError::Invalid(
                "a tenant deletion is recorded as action tenant.delete with no after".into(),
            ));
        }
        let retired_owner = format!("{name}/deleted@{}", event.ts_ms);
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => {
                return pg.with(|c| {
                    let mut tx = c.transaction()?;
                    if tx.execute("DELETE FROM tenants WHERE name = $1", &[&name])? == 0 {
                        return Err(StoreError::NotFound(format!("tenant {name}")));
                    }
                    let keys = tx.execute(
                        "UPDATE keys SET revoked_ms = $2 WHERE tenant = $1 AND revoked_ms IS NULL",
                        &[&name as P<'_>, &event.ts_ms],
                    )?;
                    let batches = tx.execute(
                        "UPDATE batches SET tenant = $2 WHERE tenant = $1",
                        &[&name as P<'_>, &retired_owner],
                    )?;
                    pgstate::bump(&mut tx, "tenants_generation")?;
                    pgstate::bump(&mut tx, "keys_generation")?;
                    let event = pg_append_in(&mut tx, event)?;
                    tx.commit()?;
                    Ok(Retired {
                        event,
                        keys_revoked: keys,
                        batches_retired: batches,
                    })
                });
            }
        };
        let tx = immediate(&conn)?;
        if tx.execute("DELETE FROM tenants WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NotFound(format!("tenant {name}")));
        }
        let keys = tx.execute(
            "UPDATE keys SET revoked_ms = ?2 WHERE tenant = ?1 AND revoked_ms IS NULL",
            params![name, event.ts_ms],
        )?;
        let batches = tx.execute(
            "UPDATE batches SET tenant = ?2 WHERE tenant = ?1",
            params![name, retired_owner],
        )?;
        bump(&tx)?;
        tx.execute("UPDATE meta SET v = v + 1 WHERE k = 'keys_generation'", [])?;
        let event = append_in(&tx, event)?;
        tx.commit()?;
        Ok(Retired {
            event,
            keys_revoked: u64::try_from(keys).unwrap_or(u64::MAX),
            batches_retired: u64::try_from(batches).unwrap_or(u64::MAX),
        })
    }

    /// Tenants deleted for good ([`Store::retire_tenant`]) at or after `since_ms`, each with
    /// its latest deletion time (Unix ms), by name. Read from the audit chain, which records
    /// every deletion in the same transaction and is never rewritten.
    pub fn tenant_deletions_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        const SQL_PG: &str = "SELECT target, max(ts_ms) FROM audit
             WHERE action = 'tenant.delete' AND after IS NULL AND ts_ms >= $1
             GROUP BY target ORDER BY target";
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => {
                return pg.with(|c| {
                    Ok(c.query(SQL_PG, &[&since_ms])?
                        .iter()
                        .map(|r| (r.get(0), r.get(1)))
                        .collect())
                });
            }
        };
        let mut stmt = conn.prepare(
            "SELECT target, max(ts_ms) FROM audit
             WHERE action = 'tenant.delete' AND after IS NULL AND ts_ms >= ?1
             GROUP BY target ORDER BY target",
        )?;
        let rows = stmt.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A counter bumped by every tenant change: gateways poll it to pick up changes made by
    /// other processes.
    pub fn tenants_generation(&self) -> Result<i64, StoreError> {
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => return pg.with(|c| pgstate::generation(c, "tenants_generation")),
        };
        let v = conn
            .query_row(
                "SELECT v FROM meta WHERE k = 'tenants_generation'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn rows_are_written_with_their_audit_event() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("t.db")).unwrap();
        let g0 = s.tenants_generation().unwrap();
        let ev = NewEvent {
            ts_ms: 5,
            actor: "cli:root".into(),
            action: "tenant.create".into(),
            target: "web".into(),
            before: None,
            after: Some("{\"name\":\"web\"}".into()),
        };
        s.put_tenant("web", "{\"name\":\"web\"}", &ev).unwrap();
        s.put_tenant("web", "{\"name\":\"web\",\"weight\":2}", &ev)
            .unwrap();
        let rows = s.tenant_rows().unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].config.contains("weight"));
        assert_eq!(s.tenants_generation().unwrap(), g0 + 2);
        s.delete_tenant("web", &ev).unwrap();
        assert!(s.tenant_row("web").unwrap().is_none());
        assert!(matches!(
            s.delete_tenant("web", &ev),
            Err(StoreError::NotFound(_))
        ));
        let v = s.verify_audit().unwrap();
        assert_eq!((v.events, v.broken), (3, None));
    }
}
