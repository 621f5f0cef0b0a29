//! Usage reports over the ledger: totals for a time range, grouped by any of tenant, feature
//! and model. The totals are sums of ledger rows, so they match the ledger exactly.

use crate::{Store, StoreError};
use rusqlite::params_from_iter;

/// A grouping dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// By tenant.
    Tenant,
    /// By feature label (`(none)` when absent).
    Feature,
    /// By model requested.
    Model,
    /// By gateway key id.
    Key,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Feature => "COALESCE(feature, '(none)')",
            Self::Model => "COALESCE(model, '(none)')",
            Self::Key => "key_id",
        }
    }
}

/// What to report.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    /// Inclusive start (Unix ms).
    pub since_ms: i64,
    /// Exclusive end (Unix ms).
    pub until_ms: i64,
    /// Grouping, in order.
    pub group_by: Vec<GroupBy>,
    /// Only this tenant, if set.
    pub tenant: Option<String>,
}

/// One group's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UsageRow {
    /// The group's values, in `group_by` order.
    pub group: Vec<String>,
    /// Calls.
    pub requests: i64,
    /// Calls whose status was not 2xx or that did not end normally.
    pub errors: i64,
    /// Uncached input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cache-write tokens.
    pub cache_creation_input_tokens: i64,
    /// Cache-read tokens.
    pub cache_read_input_tokens: i64,
    /// Cost in micro-dollars: the sum of the rows' `cost_micros`, where calls of a model
    /// without a price (NULL) count as 0.
    pub cost_micros: i64,
}

impl Store {
    /// Spend per tenant (micro-dollars) of calls at or after `since_ms`: seeds the limiter's
    /// budget counters at startup.
    pub fn spend_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT tenant, COALESCE(sum(cost_micros), 0) FROM ledger
             WHERE ts_ms >= ?1 GROUP BY tenant",
        )?;
        let rows = stmt.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    /// Totals for `q`, largest token users first.
    pub fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let cols: Vec<&str> = q.group_by.iter().map(|g| g.column()).collect();
        let select_cols = if cols.is_empty() {
            "'all'".to_owned()
        } else {
            cols.join(", ")
        };
        let group_clause = if cols.is_empty() {
            String::new()
        } else {
            format!("GROUP BY {}", cols.join(", "))
        };
        let tenant_clause = if q.tenant.is_some() {
            "AND tenant = ?3"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {select_cols},
                count(*),
                COALESCE(sum(CASE WHEN status BETWEEN 200 AND 299 AND outcome = 'ok' THEN 0 ELSE 1 END), 0),
                COALESCE(sum(input_tokens), 0), COALESCE(sum(output_tokens), 0), COALESCE(sum(cache_creation_input_tokens), 0),
                COALESCE(sum(cache_read_input_tokens), 0), COALESCE(sum(cost_micros), 0)
             FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2 {tenant_clause}
             {group_clause}
             ORDER BY sum(input_tokens + output_tokens + cache_creation_input_tokens
                + cache_read_input_tokens) DESC"
        );
        let mut args: Vec<rusqlite::types::Value> = vec![q.since_ms.into(), q.until_ms.into()];
        if let Some(t) = &q.tenant {
            args.push(t.clone().into());
        }
        let ngroup = cols.len().max(1);
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), |r| {
            let mut group = Vec::with_capacity(ngroup);
            for i in 0..ngroup {
                group.push(r.get::<_, String>(i)?);
            }
            let int = |i: usize| r.get::<_, i64>(i);
            Ok(UsageRow {
                group,
                requests: r.get(ngroup)?,
                errors: int(ngroup + 1)?,
                input_tokens: int(ngroup + 2)?,
                output_tokens: int(ngroup + 3)?,
                cache_creation_input_tokens: int(ngroup + 4)?,
                cache_read_input_tokens: int(ngroup + 5)?,
                cost_micros: int(ngroup + 6)?,
            })
        })?;
        let mut out: Vec<UsageRow> = rows.collect::<Result<_, _>>()?;
        if cols.is_empty() {
            out.retain(|r| r.requests > 0);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::{LedgerRow, LedgerWriter, LedgerWriterOptions};
    use sluice_core::Usage;

    #[test]
    fn totals_match_rows_and_respect_range_and_grouping() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.db");
        let s = Store::open(&p).unwrap();
        let w = LedgerWriter::start(&p, LedgerWriterOptions::default()).unwrap();
        let tx = w.sender();
        let mk = |ts, tenant: &str, feature: Option<&str>, model: &str, i, o, status| LedgerRow {
            ts_ms: ts,
            tenant: tenant.into(),
            key_id: "k".into(),
            feature: feature.map(Into::into),
            endpoint: "messages",
            model: Some(model.into()),
            status,
            outcome: if status == 200 {
                "ok"
            } else {
                "upstream_error"
            },
            usage: Usage {
                input_tokens: i,
                output_tokens: o,
                cache_read_input_tokens: 1,
                ..Usage::default()
            },
            ..LedgerRow::default()
        };
        tx.record(mk(10, "web", Some("chat"), "m1", 100, 10, 200));
        tx.record(mk(11, "web", None, "m1", 50, 5, 200));
        tx.record(mk(12, "email", Some("sum"), "m2", 7, 3, 529));
        tx.record(mk(99, "web", Some("chat"), "m1", 1000, 1000, 200)); // outside range
        w.shutdown();

        let q = |g: Vec<GroupBy>, tenant: Option<&str>| UsageQuery {
            since_ms: 0,
            until_ms: 50,
            group_by: g,
            tenant: tenant.map(Into::into),
        };
        let all = s.usage(&q(vec![], None)).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].requests, 3);
        assert_eq!(all[0].errors, 1);
        assert_eq!(all[0].input_tokens, 157);
        assert_eq!(all[0].output_tokens, 18);
        assert_eq!(all[0].cache_read_input_tokens, 3);

        let by = s
            .usage(&q(vec![GroupBy::Tenant, GroupBy::Feature], None))
            .unwrap();
        assert_eq!(by.len(), 3);
        assert_eq!(by[0].group, vec!["web", "chat"]);
        assert_eq!(by[1].group, vec!["web", "(none)"]);
        assert_eq!(by[2].group, vec!["email", "sum"]);

        let only = s.usage(&q(vec![GroupBy::Model], Some("email"))).unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].group, vec!["m2"]);
        let none = s
            .usage(&UsageQuery {
                since_ms: 100,
                until_ms: 200,
                group_by: vec![],
                tenant: None,
            })
            .unwrap();
        assert!(none.is_empty());
    }
}
