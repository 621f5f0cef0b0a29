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
