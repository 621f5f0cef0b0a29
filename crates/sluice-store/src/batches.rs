//! Which tenant owns which message batch. The upstream sees one organisation; Sluice keeps the
//! ownership so that a tenant can only see, cancel, delete and fetch results of its own batches.

use crate::db::Db;
use crate::pgstate::P;
use crate::{Store, StoreError};
use rusqlite::{OptionalExtension, params};

/// A page of a tenant's batch ids, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPage {
    /// Batch ids in list order (newest first).
    pub ids: Vec<String>,
    /// More ids exist beyond this page in the direction of travel.
    pub has_more: bool,
}

impl Store {
    /// Record that `tenant` (through `key_id`) created batch `id`.
    pub fn record_batch(
        &self,
        id: &str,
        tenant: &str,
        key_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        match self.db()? {
            Db::Sqlite(conn) => {
                conn.execute(
                    "INSERT OR IGNORE INTO batches (id, tenant, key_id, created_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![id, tenant, key_id, now_ms],
                )?;
            }
            Db::Postgres(pg) => {
                pg.with(|c| {
                    Ok(c.execute(
                        "INSERT INTO batches (id, tenant, key_id, created_ms)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                        &[&id as P<'_>, &tenant, &key_id, &now_ms],
                    )?)
                })?;
            }
        }
        Ok(())
    }

    /// The tenant owning batch `id`, if Sluice created it.
    pub fn batch_owner(&self, id: &str) -> Result<Option<String>, StoreError> {
        match self.db()? {
            Db::Sqlite(conn) => Ok(conn
                .query_row("SELECT tenant FROM batches WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?),
            Db::Postgres(pg) => pg.with(|c| {
                Ok(
                    c.query_opt("SELECT tenant FROM batches WHERE id = $1", &[&id])?
                        .map(|r| r.get(0)),
                )
            }),
        }
    }

    /// Forget a batch (after the upstream deleted it).
    pub fn forget_batch(&self, id: &str) -> Result<(), StoreError> {
        match self.db()? {
            Db::Sqlite(conn) => {
                conn.execute("DELETE FROM batches WHERE id = ?1", [id])?;
            }
            Db::Postgres(pg) => {
                pg.with(|c| Ok(c.execute("DELETE FROM batches WHERE id = $1", &[&id])?))?;
            }
        }
        Ok(())
    }

    /// A page of `tenant`'s batches, newest first, with the upstream's cursor semantics:
    /// `after_id` pages towards older batches, `before_id` towards newer ones.
    pub fn list_batches(
        &self,
        tenant: &str,
        before_id: Option<&str>,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<BatchPage, StoreError> {
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => {
                return pg.with(|c| pg_list_batches(c, tenant, before_id, after_id, limit));
            }
        };
        let seq_of = |id: &str| -> Result<Option<i64>, StoreError> {
            Ok(conn
                .query_row(
                    "SELECT seq FROM batches WHERE id = ?1 AND tenant = ?2",
                    params![id, tenant],
                    |r| r.get(0),
                )
                .optional()?)
        };
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let mut ids: Vec<String> = if let Some(b) = before_id {
            let seq = seq_of(b)?.unwrap_or(i64::MAX);
            let mut stmt = conn.prepare(
                "SELECT id FROM batches WHERE tenant = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3",
            )?;
            let mut v: Vec<String> = stmt
                .query_map(params![tenant, seq, fetch], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let more = v.len() > limit;
            v.truncate(limit);
            v.reverse();
            return Ok(BatchPage {
                ids: v,
                has_more: more,
            });
        } else {
            let seq = match after_id {
                Some(a) => seq_of(a)?.unwrap_or(i64::MIN),
                None => i64::MAX,
            };
            let mut stmt = conn.prepare(
                "SELECT id FROM batches WHERE tenant = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
            )?;
            stmt.query_map(params![tenant, seq, fetch], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        let has_more = ids.len() > limit;
        ids.truncate(limit);
        Ok(BatchPage { ids, has_more })
    }
}

/// [`Store::list_batches`] in PostgreSQL (the same queries, `$N` placeholders).
fn pg_list_batches(
    c: &mut postgres::Client,
    tenant: &str,
    before_id: Option<&str>,
    after_id: Option<&str>,
    limit: usize,
) -> Result<BatchPage, StoreError> {
    let seq_of = |c: &mut postgres::Client, id: &str| -> Result<Option<i64>, StoreError> {
        Ok(c.query_opt(
            "SELECT seq FROM batches WHERE id = $1 AND tenant = $2",
            &[&id, &tenant],
        )?
        .map(|r| r.get(0)))
    };
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
    if let Some(b) = before_id {
        let seq = seq_of(c, b)?.unwrap_or(i64::MAX);
        let mut v: Vec<String> = c
            .query(
                "SELECT id FROM batches WHERE tenant = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3",
                &[&tenant as P<'_>, &seq, &fetch],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let more = v.len() > limit;
        v.truncate(limit);
        v.reverse();
        return Ok(BatchPage {
            ids: v,
            has_more: more,
        });
    }
    let seq = match after_id {
        Some(a) => seq_of(c, a)?.unwrap_or(i64::MIN),
        None => i64::MAX,
    };
    let mut ids: Vec<String> = c
        .query(
            "SELECT id FROM batches WHERE tenant = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
            &[&tenant as P<'_>, &seq, &fetch],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let has_more = ids.len() > limit;
    ids.truncate(limit);
    Ok(BatchPage { ids, has_more })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn ownership_and_paging() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("b.db")).unwrap();
        for i in 0..5 {
            s.record_batch(&format!("b{i}"), "web", "k", i).unwrap();
        }
        s.record_batch("other", "email", "k2", 9).unwrap();
        assert_eq!(s.batch_owner("b1").unwrap().as_deref(), Some("web"));
        assert_eq!(s.batch_owner("nope").unwrap(), None);

        let p = s.list_batches("web", None, None, 2).unwrap();
        assert_eq!(p.ids, vec!["b4", "b3"]);
        assert!(p.has_more);
        let p = s.list_batches("web", None, Some("b3"), 2).unwrap();
        assert_eq!(p.ids, vec!["b2", "b1"]);
        assert!(p.has_more);
        let p = s.list_batches("web", None, Some("b1"), 2).unwrap();
        assert_eq!(p.ids, vec!["b0"]);
        assert!(!p.has_more);
        let p = s.list_batches("web", Some("b1"), None, 2).unwrap();
        assert_eq!(p.ids, vec!["b3", "b2"]);
        assert!(p.has_more);
        // Another tenant's batch is never listed, nor usable as a cursor.
        let p = s.list_batches("web", None, None, 100).unwrap();
        assert!(!p.ids.contains(&"other".to_string()));
        s.forget_batch("b0").unwrap();
        assert_eq!(s.batch_owner("b0").unwrap(), None);
    }
}
