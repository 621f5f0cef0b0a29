//! The SQLite ledger table as a [`LedgerSink`]: its own connection to the state database and
//! the batch insert that skips row ids already stored.

use super::{LedgerSink, StoredRow};
use crate::StoreError;
use crate::db::open_conn;
use rusqlite::params;
use std::path::Path;

/// The SQLite ledger table as a [`LedgerSink`].
pub struct SqliteSink {
    conn: rusqlite::Connection,
}

impl SqliteSink {
    /// Open its own connection to the state database at `path` (already migrated).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: open_conn(path)?,
        })
    }
}

impl LedgerSink for SqliteSink {
    fn ensure_ready(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn insert(&mut self, rows: &[StoredRow]) -> Result<(), StoreError> {
        insert_rows(&mut self.conn, rows)
    }

    fn reset(&mut self) {}
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn insert_rows(conn: &mut rusqlite::Connection, rows: &[StoredRow]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        // ON CONFLICT: a row id already stored means this batch is a replay; keep the first.
        let mut stmt = tx.prepare_cached(
            "INSERT INTO ledger (ts_ms, request_id, tenant, key_id, feature, endpoint, model,
                model_served, streamed, status, outcome, error_type, latency_ms, ttfb_ms,
                input_tokens, output_tokens, cache_creation_input_tokens,
                cache_creation_5m_input_tokens, cache_creation_1h_input_tokens,
                cache_read_input_tokens, stop_reason, upstream, cost_micros, waited_ms,
                retries, provider, fallback, uid, usage_estimated, prompt_cache_added,
                saved_micros)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31)
             ON CONFLICT (uid) DO NOTHING",
        )?;
        for r in rows {
            stmt.execute(params![
                r.ts_ms,
                r.request_id,
                r.tenant,
                r.key_id,
                r.feature,
                r.endpoint,
                r.model,
                r.model_served,
                r.streamed,
                r.status,
                r.outcome,
                r.error_type,
                to_i64(r.latency_ms),
                r.ttfb_ms.map(to_i64),
                to_i64(r.input_tokens),
                to_i64(r.output_tokens),
                to_i64(r.cache_creation_input_tokens),
                to_i64(r.cache_creation_5m_input_tokens),
                to_i64(r.cache_creation_1h_input_tokens),
                to_i64(r.cache_read_input_tokens),
                r.stop_reason,
                r.upstream,
                r.cost_micros,
                to_i64(r.waited_ms),
                r.retries,
                r.provider,
                r.fallback,
                r.uid,
                r.usage_estimated,
                r.prompt_cache_added,
                r.saved_micros,
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}
