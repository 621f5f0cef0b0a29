//! Gateway keys. A key is `sk-sluice-` followed by 256 random bits (base64url); only its SHA-256
//! is stored, which is the right hash for high-entropy secrets (no salt or slow KDF needed: there
//! is nothing to brute-force). The key itself is returned once, at creation.

use crate::db::Db;
use crate::pgstate::{self, P};
use crate::{Store, StoreError};
use base64::Engine;
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

/// The prefix every gateway key starts with, so a leaked key is recognisable (secret scanners).
pub const KEY_PREFIX: &str = "sk-sluice-";

/// SHA-256 of a presented key.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A key's stored metadata (never the key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyRecord {
    /// Public identifier, e.g. `key_3f9a1c2b7d5e`.
    pub id: String,
    /// Owning tenant.
    pub tenant: String,
    /// The first characters of the key, to help people recognise it.
    pub prefix: String,
    /// Free-text label.
    pub label: String,
    /// Creation time (Unix ms).
    pub created_ms: i64,
    /// Expiry (Unix ms), if any.
    pub expires_ms: Option<i64>,
    /// Revocation time (Unix ms), if revoked.
    pub revoked_ms: Option<i64>,
}

/// A freshly created key: the secret is shown once and then only its hash exists.
#[derive(Debug)]
pub struct NewKey {
    /// The stored metadata.
    pub record: KeyRecord,
    /// The key itself.
    pub secret: String,
}

/// What the data plane needs to authenticate a key.
#[derive(Debug, Clone)]
pub struct ActiveKey {
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// Key id.
    pub id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Expiry (Unix ms), if any.
    pub expires_ms: Option<i64>,
}

fn random<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(b)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Store {
    /// Create a key for `tenant`. The caller has checked that the tenant exists.
    pub fn create_key(
        &self,
        tenant: &str,
        label: &str,
        expires_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<NewKey, StoreError> {
        let secret = format!(
            "{KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<32>()?)
        );
        let id = format!("key_{}", hex(&random::<6>()?));
        let prefix: String = secret.chars().take(KEY_PREFIX.len() + 4).collect();
        let hash = hash_key(&secret);
        match self.db()? {
            Db::Sqlite(conn) => {
                let tx = conn.unchecked_transaction()?;
                tx.execute(
                    "INSERT INTO keys (id, tenant, hash, prefix, label, created_ms, expires_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![id, tenant, &hash[..], prefix, label, now_ms, expires_ms],
                )?;
                bump_generation(&tx)?;
                tx.commit()?;
            }
            Db::Postgres(pg) => pg.with(|c| {
                let mut tx = c.transaction()?;
                tx.execute(
                    "INSERT INTO keys (id, tenant, hash, prefix, label, created_ms, expires_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &id as P<'_>,
                        &tenant,
                        &&hash[..],
                        &prefix,
                        &label,
                        &now_ms,
                        &expires_ms,
                    ],
                )?;
                pgstate::bump(&mut tx, "keys_generation")?;
                Ok(tx.commit()?)
            })?,
        }
        Ok(NewKey {
            record: KeyRecord {
                id,
                tenant: tenant.to_owned(),
                prefix,
                label: label.to_owned(),
                created_ms: now_ms,
                expires_ms,
                revoked_ms: None,
            },
            secret,
        })
    }

    /// Every key, newest first (revoked ones included, marked).
    pub fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => {
                return pg.with(|c| {
                    Ok(c.query(
                        "SELECT id, tenant, prefix, label, created_ms, expires_ms, revoked_ms
                         FROM keys ORDER BY created_ms DESC, id",
                        &[],
                    )?
                    .iter()
                    .map(pg_record)
                    .collect())
                });
            }
        };
        let mut stmt = conn.prepare(
            "SELECT id, tenant, prefix, label, created_ms, expires_ms, revoked_ms
             FROM keys ORDER BY created_ms DESC, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(KeyRecord {
                id: r.get(0)?,
                tenant: r.get(1)?,
                prefix: r.get(2)?,
                label: r.get(3)?,
                created_ms: r.get(4)?,
                expires_ms: r.get(5)?,
                revoked_ms: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revoke a key. Returns the record; revoking twice keeps the first revocation time.
    pub fn revoke_key(&self, id: &str, now_ms: i64) -> Result<KeyRecord, StoreError> {
        match self.db()? {
            Db::Sqlite(conn) => {
                let tx = conn.unchecked_transaction()?;
                let n = tx.execute(
                    "UPDATE keys SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1",
                    params![id, now_ms],
                )?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("key {id}")));
                }
                bump_generation(&tx)?;
                tx.commit()?;
            }
            Db::Postgres(pg) => pg.with(|c| {
                let mut tx = c.transaction()?;
                let n = tx.execute(
                    "UPDATE keys SET revoked_ms = COALESCE(revoked_ms, $2) WHERE id = $1",
                    &[&id as P<'_>, &now_ms],
                )?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("key {id}")));
                }
                pgstate::bump(&mut tx, "keys_generation")?;
                Ok(tx.commit()?)
            })?,
        }
        self.list_keys()?
            .into_iter()
            .find(|k| k.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("key {id}")))
    }

    /// Keys that are not revoked (expiry is checked at use, against the caller's clock).
    pub fn active_keys(&self) -> Result<Vec<ActiveKey>, StoreError> {
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => {
                return pg.with(|c| {
                    Ok(c.query(
                        "SELECT hash, id, tenant, expires_ms FROM keys WHERE revoked_ms IS NULL",
                        &[],
                    )?
                    .iter()
                    .map(|r| ActiveKey {
                        hash: hash_of(&r.get::<_, Vec<u8>>(0)),
                        id: r.get(1),
                        tenant: r.get(2),
                        expires_ms: r.get(3),
                    })
                    .collect())
                });
            }
        };
        let mut stmt =
            conn.prepare("SELECT hash, id, tenant, expires_ms FROM keys WHERE revoked_ms IS NULL")?;
        let rows = stmt.query_map([], |r| {
            let blob: Vec<u8> = r.get(0)?;
            Ok(ActiveKey {
                hash: hash_of(&blob),
                id: r.get(1)?,
                tenant: r.get(2)?,
                expires_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One key's record.
    pub fn get_key(&self, id: &str) -> Result<KeyRecord, StoreError> {
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => {
                return pg
                    .with(|c| {
                        Ok(c.query_opt(
                            "SELECT id, tenant, prefix, label, created_ms, expires_ms, revoked_ms
                             FROM keys WHERE id = $1",
                            &[&id],
                        )?)
                    })?
                    .as_ref()
                    .map(pg_record)
                    .ok_or_else(|| StoreError::NotFound(format!("key {id}")));
            }
        };
        conn.query_row(
            "SELECT id, tenant, prefix, label, created_ms, expires_ms, revoked_ms
             FROM keys WHERE id = ?1",
            [id],
            |r| {
                Ok(KeyRecord {
                    id: r.get(0)?,
                    tenant: r.get(1)?,
                    prefix: r.get(2)?,
                    label: r.get(3)?,
                    created_ms: r.get(4)?,
                    expires_ms: r.get(5)?,
                    revoked_ms: r.get(6)?,
                })
            },
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("key {id}")))
    }

    /// Rotate a key: a new key for the same tenant and label, and the old one expires at
    /// `now_ms + overlap_ms` (or keeps an earlier expiry), so clients can switch over without a
    /// gap. Returns the old key's updated record and the new key. A revoked key cannot be
    /// rotated ([`StoreError::NotFound`] for an unknown one; the caller checks revocation).
    pub fn rotate_key(
        &self,
        id: &str,
        overlap_ms: i64,
        now_ms: i64,
    ) -> Result<(KeyRecord, NewKey), StoreError> {
        let old = self.get_key(id)?;
        let new = self.create_key(&old.tenant, &old.label, old.expires_ms, now_ms)?;
        let until = now_ms.saturating_add(overlap_ms.max(0));
        let expires = Some(old.expires_ms.map_or(until, |e| e.min(until)));
        match self.db()? {
            Db::Sqlite(conn) => {
                let tx = conn.unchecked_transaction()?;
                tx.execute(
                    "UPDATE keys SET expires_ms = ?2 WHERE id = ?1",
                    params![id, expires],
                )?;
                bump_generation(&tx)?;
                tx.commit()?;
            }
            Db::Postgres(pg) => pg.with(|c| {
                let mut tx = c.transaction()?;
                tx.execute(
                    "UPDATE keys SET expires_ms = $2 WHERE id = $1",
                    &[&id as P<'_>, &expires],
                )?;
                pgstate::bump(&mut tx, "keys_generation")?;
                Ok(tx.commit()?)
            })?,
        }
        Ok((
            KeyRecord {
                expires_ms: expires,
                ..old
            },
            new,
        ))
    }

    /// A counter bumped by every key change, so the gateway can poll one cheap row to know
    /// whether to reload its key ring.
    pub fn keys_generation(&self) -> Result<i64, StoreError> {
        let conn = match self.db()? {
            Db::Sqlite(conn) => conn,
            Db::Postgres(pg) => return pg.with(|c| pgstate::generation(c, "keys_generation")),
        };
        let v = conn
            .query_row("SELECT v FROM meta WHERE k = 'keys_generation'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(v.unwrap_or(0))
    }
}

/// A stored hash as the fixed-size array (a malformed one matches no presented key).
fn hash_of(blob: &[u8]) -> [u8; 32] {
    let mut hash = [0u8; 32];
    if blob.len() == 32 {
        hash.copy_from_slice(blob);
    }
    hash
}

fn pg_record(r: &postgres::Row) -> KeyRecord {
    KeyRecord {
        id: r.get(0),
        tenant: r.get(1),
        prefix: r.get(2),
        label: r.get(3),
        created_ms: r.get(4),
        expires_ms: r.get(5),
        revoked_ms: r.get(6),
    }
}

fn bump_generation(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("UPDATE meta SET v = v + 1 WHERE k = 'keys_generation'", [])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("k.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn created_key_is_stored_only_as_hash() {
        let (dir, s) = store();
        let k = s.create_key("web", "ci", None, 1).unwrap();
        assert!(k.secret.starts_with(KEY_PREFIX));
        // 256 bits in base64url without padding is 43 characters.
        assert_eq!(k.secret.len(), KEY_PREFIX.len() + 43);
        let active = s.active_keys().unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].hash, hash_key(&k.secret));
        assert_eq!(active[0].tenant, "web");
        drop(s);
        // The secret never reaches the file (the database or its WAL).
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            let needle = k.secret.as_bytes();
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
    }

    #[test]
    fn keys_are_unique_and_revocation_bumps_generation() {
        let (_d, s) = store();
        let a = s.create_key("web", "", None, 1).unwrap();
        let b = s.create_key("web", "", None, 2).unwrap();
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.record.id, b.record.id);
        let g = s.keys_generation().unwrap();
        let r = s.revoke_key(&a.record.id, 5).unwrap();
        assert_eq!(r.revoked_ms, Some(5));
        assert!(s.keys_generation().unwrap() > g);
        let active = s.active_keys().unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].id, b.record.id);
        assert!(matches!(
            s.revoke_key("key_nope", 6),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(s.list_keys().unwrap().len(), 2);
    }
}
