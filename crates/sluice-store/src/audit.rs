//! The audit trail: an append-only chain of events (who changed what, with the state before
//! and after). Each event's `hash` is SHA-256 over the previous event's hash and this event's
//! canonical fields, so editing, reordering or deleting a row breaks the chain at that point
//! and [`Store::verify_audit`] names it. Deleting only the newest events is not detectable from
//! the chain alone (nothing comes after them); keep the latest hash elsewhere for that.

use crate::db::Db;
use crate::{Store, StoreError};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event to append. `before` and `after` are JSON texts (the store does not read them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewEvent {
    /// When (Unix ms).
    pub ts_ms: i64,
    /// Who: an admin token's name, `cli:USER`, or `gateway` for the gateway's own events.
    pub actor: String,
    /// What, as `noun.verb` (`tenant.update`, `key.rotate`, `auth.failed`).
    pub action: String,
    /// On what (a tenant name, a key id, a config path, a client address).
    pub target: String,
    /// The state before, as JSON text (`None`: nothing existed).
    pub before: Option<String>,
    /// The state after, as JSON text (`None`: nothing exists any more).
    pub after: Option<String>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEvent {
    /// Position in the chain (1, 2, …; no gaps).
    pub id: i64,
    /// When (Unix ms).
    pub ts_ms: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// State before (JSON text).
    pub before: Option<String>,
    /// State after (JSON text).
    pub after: Option<String>,
    /// The previous event's hash (hex).
    pub prev_hash: String,
    /// This event's hash (hex).
    pub hash: String,
}

/// The outcome of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verification {
    /// Events checked.
    pub events: u64,
    /// The hash of the last event (or the genesis hash): record it elsewhere to detect the
    /// newest events being deleted.
    pub head: String,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
}

/// Where and why the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BrokenLink {
    /// The first event that does not verify.
    pub id: i64,
    /// Why.
    pub reason: String,
}

/// The canonical hash of an event: SHA-256 over the previous hash, a newline, and the fields
/// as a JSON array (JSON string escaping makes the encoding unambiguous: no field can spill
/// into the next).
pub fn event_hash(prev_hash: &str, id: i64, ev: &NewEvent) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical(id, ev).as_bytes());
    hex(&h.finalize())
}

fn canonical(id: i64, ev: &NewEvent) -> String {
    let mut s = format!("[{id},{}", ev.ts_ms);
    for f in [&ev.actor, &ev.action, &ev.target] {
        s.push(',');
        json_string(&mut s, f);
    }
    for f in [&ev.before, &ev.after] {
        s.push(',');
        match f {
            Some(v) => json_string(&mut s, v),
            None => s.push_str("null"),
        }
    }
    s.push(']');
    s
}

/// A JSON string literal (RFC 8259 escaping), written here so the store needs no JSON crate
/// and the canonical form never depends on a library's formatting choices.
fn json_string(out: &mut String, v: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Begin a write transaction that takes the write lock at once, so two processes (the gateway
/// and the CLI) appending at the same time cannot both chain onto the same last event.
pub(crate) fn immediate(conn: &Connection) -> Result<Transaction<'_>, StoreError> {
    Ok(Transaction::new_unchecked(
        conn,
        TransactionBehavior::Immediate,
    )?)
}

/// Append `ev` inside `tx` (which must hold the write lock: see [`immediate`]).
pub(crate) fn append_in(tx: &Transaction<'_>, ev: &NewEvent) -> Result<AuditEvent, StoreError> {
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (id, prev_hash) = match last {
        Some((id, h)) => (id + 1, h),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let hash = event_hash(&prev_hash, id, ev);
    tx.execute(
        "INSERT INTO audit (id, ts_ms, actor, action, target, before, after, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            id, ev.ts_ms, ev.actor, ev.action, ev.target, ev.before, ev.after, prev_hash, hash
        ],
    )?;
    Ok(AuditEvent {
        id,
        ts_ms: ev.ts_ms,
        actor: ev.actor.clone(),
        action: ev.action.clone(),
        target: ev.target.clone(),
        before: ev.before.clone(),
        after: ev.after.clone(),
        prev_hash,
        hash,
    })
}

/// Append `ev` inside the Postgres transaction `tx`. The transaction-scoped advisory lock
/// serialises appenders across every replica (and the CLI) until commit, so the chain stays
/// one line; the primary key on `id` would reject a fork anyway, but as an error rather than a
/// wait. Under READ COMMITTED the read of the last event runs after the lock is granted, so
/// it sees the previous appender's committed event.
pub(crate) fn pg_append_in(
    tx: &mut postgres::Transaction<'_>,
    ev: &NewEvent,
) -> Result<AuditEvent, StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&crate::pgstate::AUDIT_LOCK],
    )?;
    let last = tx.query_opt("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1", &[])?;
    let (id, prev_hash) = match last {
        Some(r) => (r.get::<_, i64>(0) + 1, r.get::<_, String>(1)),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let hash = event_hash(&prev_hash, id, ev);
    tx.execute(
        "INSERT INTO audit (id, ts_ms, actor, action, target, before, after, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &id as crate::pgstate::P<'_>,
            &ev.ts_ms,
            &ev.actor,
            &ev.action,
            &ev.target,
            &ev.before,
            &ev.after,
            &prev_hash,
            &hash,
        ],
    )?;
    Ok(AuditEvent {
        id,
        ts_ms: ev.ts_ms,
        actor: ev.actor.clone(),
        action: ev.action.clone(),
        target: ev.target.clone(),
        before: ev.before.clone(),
        after: ev.after.clone(),
        prev_hash,
        hash,
    })
}

fn pg_row(r: &postgres::Row) -> AuditEvent {
    AuditEvent {
        id: r.get(0),
        ts_ms: r.get(1),
        actor: r.get(2),
        action: r.get(3),
        target: r.get(4),
        before: r.get(5),
        after: r.get(6),
        prev_hash: r.get(7),
        hash: r.get(8),
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEvent> {
    Ok(AuditEvent {
        id: r.get(0)?,
        ts_ms: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        before: r.get(5)?,
        after: r.get(6)?,
        prev_hash: r.get(7)?,
        hash: r.get(8)?,
    })
}

const COLUMNS: &str = "id, ts_ms, actor, action, target, before, after, prev_hash, hash";

impl Store {
    /// Append one event to the chain.
    pub fn append_audit(&self, ev: &NewEvent) -> Result<AuditEvent, StoreError> {
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => {
                return pg.with(|c| {
                    let mut tx = c.transaction()?;
                    let e = pg_append_in(&mut tx, ev)?;
                    tx.commit()?;
                    Ok(e)
                });
            }
        };
        let tx = immediate(&conn)?;
        let e = append_in(&tx, ev)?;
        tx.commit()?;
        Ok(e)
    }

    /// Events at or after `since_ms` (all when `None`), oldest first, at most `limit`
    /// (the newest ones when there are more).
    pub fn audit_events(
        &self,
        since_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => {
                let since = since_ms.unwrap_or(i64::MIN);
                return pg.with(|c| {
                    Ok(c.query(
                        &format!(
                            "SELECT {COLUMNS} FROM (SELECT {COLUMNS} FROM audit WHERE ts_ms >= $1
                             ORDER BY id DESC LIMIT $2) AS newest ORDER BY id"
                        ),
                        &[&since as crate::pgstate::P<'_>, &limit],
                    )?
                    .iter()
                    .map(pg_row)
                    .collect())
                });
            }
        };
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM (SELECT {COLUMNS} FROM audit WHERE ts_ms >= ?1
             ORDER BY id DESC LIMIT ?2) ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![since_ms.unwrap_or(i64::MIN), limit], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Recompute the whole chain and report the first event that does not verify: a hash that
    /// does not match the event's fields, a `prev_hash` that is not the previous event's hash,
    /// or a gap in the ids (a deleted event).
    pub fn verify_audit(&self) -> Result<Verification, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM audit ORDER BY id");
        match self.db()? {
            Db::Sqlite(conn) => {
                let mut stmt = conn.prepare(&sql)?;
                let rows = stmt.query_map([], row)?;
                verify_chain(rows.map(|r| r.map_err(StoreError::from)))
            }
            Db::Postgres(pg) => pg.with(|c| {
                // Streamed through a portal rather than loaded whole: the chain only grows.
                let mut tx = c.transaction()?;
                let portal = tx.bind(&sql, &[])?;
                let mut state = ChainCheck::default();
                loop {
                    let batch = tx.query_portal(&portal, 1000)?;
                    if batch.is_empty() {
                        break;
                    }
                    for r in &batch {
                        if let Some(v) = state.check(pg_row(r)) {
                            return Ok(v);
                        }
                    }
                }
                Ok(state.done())
            }),
        }
    }
}

/// The walk along the chain shared by both backends.
struct ChainCheck {
    prev: String,
    expected_id: i64,
    events: u64,
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self {
            prev: GENESIS_HASH.to_owned(),
            expected_id: 1,
            events: 0,
        }
    }
}

impl ChainCheck {
    /// Check the next event: `Some` (the outcome) at the first broken link.
    fn check(&mut self, e: AuditEvent) -> Option<Verification> {
        let broken = |reason: String| Verification {
            events: self.events,
            head: self.prev.clone(),
            broken: Some(BrokenLink { id: e.id, reason }),
        };
        if e.id != self.expected_id {
            return Some(broken(format!(
                "expected event {} next, found {} (events deleted or renumbered)",
                self.expected_id, e.id
            )));
        }
        if e.prev_hash != self.prev {
            return Some(broken(
                "prev_hash is not the previous event's hash (an event before it was changed or removed)"
                    .into(),
            ));
        }
        let ev = NewEvent {
            ts_ms: e.ts_ms,
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            before: e.before.clone(),
            after: e.after.clone(),
        };
        if event_hash(&self.prev, e.id, &ev) != e.hash {
            return Some(broken(
                "hash does not match the event's fields (the event was edited)".into(),
            ));
        }
        self.prev = e.hash;
        self.expected_id += 1;
        self.events += 1;
        None
    }

    /// The outcome of an unbroken chain.
    fn done(self) -> Verification {
        Verification {
            events: self.events,
            head: self.prev,
            broken: None,
        }
    }
}

/// Walk `rows` (in id order) along the chain.
fn verify_chain(
    rows: impl Iterator<Item = Result<AuditEvent, StoreError>>,
) -> Result<Verification, StoreError> {
    let mut state = ChainCheck::default();
    for e in rows {
        if let Some(v) = state.check(e?) {
            return Ok(v);
        }
    }
    Ok(state.done())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ev(n: i64) -> NewEvent {
        NewEvent {
            ts_ms: n,
            actor: "ops-alice".into(),
            action: "tenant.update".into(),
            target: "web".into(),
            before: Some(format!("{{\"weight\":{n}}}")),
            after: None,
        }
    }

    #[test]
    fn chain_verifies_and_edits_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("a.db")).unwrap();
        assert_eq!(s.verify_audit().unwrap().broken, None);
        for n in 1..=4 {
            let e = s.append_audit(&ev(n)).unwrap();
            assert_eq!(e.id, n);
        }
        let v = s.verify_audit().unwrap();
        assert_eq!((v.events, v.broken), (4, None));
        assert_eq!(s.audit_events(Some(3), 10).unwrap().len(), 2);
        assert_eq!(s.audit_events(None, 1).unwrap()[0].id, 4);
        s.conn()
            .unwrap()
            .execute("UPDATE audit SET actor = 'mallory' WHERE id = 2", [])
            .unwrap();
        let v = s.verify_audit().unwrap();
        assert_eq!(v.broken.unwrap().id, 2);
        assert_eq!(v.events, 1);
        s.conn()
            .unwrap()
            .execute("UPDATE audit SET actor = 'ops-alice' WHERE id = 2", [])
            .unwrap();
        s.conn()
            .unwrap()
            .execute("DELETE FROM audit WHERE id = 3", [])
            .unwrap();
        let b = s.verify_audit().unwrap().broken.unwrap();
        assert_eq!(b.id, 4);
        assert!(b.reason.contains("expected event 3"), "{}", b.reason);
    }

    #[test]
    fn canonical_form_cannot_be_shifted_between_fields() {
        let a = NewEvent {
            actor: "a\",\"b".into(),
            ..NewEvent::default()
        };
        let b = NewEvent {
            actor: "a".into(),
            action: "b".into(),
            ..NewEvent::default()
        };
        assert_ne!(
            event_hash(GENESIS_HASH, 1, &a),
            event_hash(GENESIS_HASH, 1, &b)
        );
        assert_ne!(
            event_hash(GENESIS_HASH, 1, &NewEvent::default()),
            event_hash(GENESIS_HASH, 2, &NewEvent::default())
        );
    }
}
