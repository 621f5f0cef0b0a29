//! Usage reports over the ledger: totals for a time range, grouped by any of tenant, feature,
//! model, key, UTC day and UTC hour. The totals are sums of ledger rows (integers, costs in
//! micro-dollars), so they match the ledger exactly.
//!
//! Every query here is written once and runs on either ledger backend ([`LedgerDb`]): the
//! SQLite state database or PostgreSQL. The SQL sticks to what both dialects share, casts every
//! sum to `BIGINT` (Postgres widens `sum(bigint)` to `numeric`) and buckets time with integer
//! arithmetic on `ts_ms`, so both give identical answers.
//!
//! Cache savings come from the ledger's `saved_micros`, which the data plane fills in per call
//! (the billing crate's arithmetic): on a row with outcome `cache_hit` it is what the response
//! cache saved, on every other row what the prompt cache saved (negative on a call that only
//! wrote the cache). The prompt-cache hit rate leaves `cache_hit` rows out: they never reached
//! an upstream, so they say nothing about how well its prompt cache worked.

use crate::{Store, StoreError};
use std::sync::Mutex;
use time::{Date, OffsetDateTime};

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
    /// By UTC day of the call's arrival (`2026-01-31`).
    Day,
    /// By UTC hour of the call's arrival (`2026-01-31T13:00Z`).
    Hour,
}

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

impl GroupBy {
    /// Parse one of `tenant`, `feature`, `model`, `key`, `day`, `hour`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tenant" => Self::Tenant,
            "feature" => Self::Feature,
            "model" => Self::Model,
            "key" => Self::Key,
            "day" => Self::Day,
            "hour" => Self::Hour,
            _ => return None,
        })
    }

    fn column(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Feature => "COALESCE(feature, '(none)')",
            Self::Model => "COALESCE(model, '(none)')",
            Self::Key => "key_id",
            // Integer division floors for the (non-negative) timestamps the ledger holds; the
            // bucket's start is formatted as a date afterwards, identically for both backends.
            Self::Day => "CAST((ts_ms / 86400000) * 86400000 AS TEXT)",
            Self::Hour => "CAST((ts_ms / 3600000) * 3600000 AS TEXT)",
        }
    }

    fn is_time(self) -> bool {
        matches!(self, Self::Day | Self::Hour)
    }

    fn label(self, raw: String) -> String {
        let Ok(ms) = raw.parse::<i64>() else {
            return raw;
        };
        match self {
            Self::Day => utc_date(ms),
            Self::Hour => format!(
                "{}T{:02}:00Z",
                utc_date(ms),
                ms.rem_euclid(DAY_MS) / HOUR_MS
            ),
            _ => raw,
        }
    }
}

/// `YYYY-MM-DD` of a Unix time in ms (UTC; proleptic Gregorian). Outside the years `time`
/// holds (±9999), which no ledger row reaches, the nearest it holds.
pub fn utc_date(ms: i64) -> String {
    let d = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).map_or(
        if ms < 0 { Date::MIN } else { Date::MAX },
        OffsetDateTime::date,
    );
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
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
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
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
    /// What the prompt cache saved, in micro-dollars: the sum of `saved_micros` over the rows
    /// that reached an upstream (outcome other than `cache_hit`): the cache reads' discount
    /// minus the cache writes' premium, so it can be negative.
    pub prompt_cache_saved_micros: i64,
    /// What the response cache saved, in micro-dollars: the sum of `saved_micros` over the
    /// rows with outcome `cache_hit` (the cost each stored reply had).
    pub response_cache_saved_micros: i64,
    /// Calls answered from the response cache (outcome `cache_hit`).
    pub response_cache_hits: i64,
    /// Token-weighted prompt-cache hit rate of the calls that reached an upstream: cache reads
    /// / (uncached input + cache writes + cache reads); 0 without prompt tokens.
    pub prompt_cache_hit_rate: f64,
    /// The hit rate's parts (prompt tokens, cache reads, of rows other than `cache_hit`), kept
    /// so that a total recomputes the rate rather than adding rates.
    #[serde(skip)]
    hit_rate_parts: (i64, i64),
}

impl UsageRow {
    /// Add `other`'s counts to these (for totals).
    pub fn add(&mut self, other: &UsageRow) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_creation_input_tokens += other.cache_creation_input_tokens;
        self.cache_read_input_tokens += other.cache_read_input_tokens;
        self.cost_micros += other.cost_micros;
        self.prompt_cache_saved_micros += other.prompt_cache_saved_micros;
        self.response_cache_saved_micros += other.response_cache_saved_micros;
        self.response_cache_hits += other.response_cache_hits;
        self.set_hit_rate_parts(
            self.hit_rate_parts.0 + other.hit_rate_parts.0,
            self.hit_rate_parts.1 + other.hit_rate_parts.1,
        );
    }

    /// Set the prompt tokens and cache reads of the rows that reached an upstream, and the hit
    /// rate they make.
    fn set_hit_rate_parts(&mut self, prompt_tokens: i64, cache_read: i64) {
        self.hit_rate_parts = (prompt_tokens, cache_read);
        self.prompt_cache_hit_rate = hit_rate(cache_read, prompt_tokens);
    }
}

/// `reads / prompt_tokens`, 0 when there are no prompt tokens. Token counts stay far below
/// 2^53, so the float division is exact enough for a rate.
pub(crate) fn hit_rate(reads: i64, prompt_tokens: i64) -> f64 {
    if prompt_tokens <= 0 {
        0.0
    } else {
        reads as f64 / prompt_tokens as f64
    }
}

/// A query argument.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Int(i64),
    Text(String),
}

/// A value read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Int(i64),
    Text(String),
    Null,
}

impl Val {
    pub(crate) fn int(&self) -> i64 {
        match self {
            Self::Int(i) => *i,
            Self::Text(t) => t.parse().unwrap_or(0),
            Self::Null => 0,
        }
    }

    pub(crate) fn text(self) -> String {
        match self {
            Self::Int(i) => i.to_string(),
            Self::Text(t) => t,
            Self::Null => String::new(),
        }
    }
}

/// Where the ledger is read from: the SQLite state database or PostgreSQL. Both answer every
/// query identically (the conformance tests hold them to it).
pub enum LedgerDb {
    /// The `ledger` table of the SQLite state database.
    Sqlite(Store),
    /// The `ledger` table in PostgreSQL (one connection, used by one caller at a time).
    Postgres(Box<Mutex<postgres::Client>>),
}

impl std::fmt::Debug for LedgerDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.backend())
    }
}

impl LedgerDb {
    /// The ledger of this deployment: Postgres when `database_url` is set, else `store`'s.
    /// Connects (and migrates) at once, so an unreachable database is reported here.
    /// Blocking: call it from a thread that may block (`spawn_blocking` in async code).
    pub fn open(store: &Store, database_url: Option<&str>) -> Result<Self, StoreError> {
        match database_url {
            Some(url) => Self::postgres(url),
            None => Ok(Self::Sqlite(store.clone())),
        }
    }

    /// Connect to the Postgres ledger at `database_url`.
    pub fn postgres(database_url: &str) -> Result<Self, StoreError> {
        let cfg = crate::pg::config(database_url)?;
        Ok(Self::Postgres(Box::new(Mutex::new(crate::pg::connect(
            &cfg,
        )?))))
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Run `sql` (written with `?N` placeholders) and return `ncols` values per row.
    pub(crate) fn query(
        &self,
        sql: &str,
        args: &[Arg],
        ncols: usize,
    ) -> Result<Vec<Vec<Val>>, StoreError> {
        match self {
            Self::Sqlite(store) => {
                let conn = store.conn()?;
                let mut stmt = conn.prepare_cached(sql)?;
                let params = args.iter().map(|a| match a {
                    Arg::Int(i) => rusqlite::types::Value::Integer(*i),
                    Arg::Text(t) => rusqlite::types::Value::Text(t.clone()),
                });
                let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| {
                    let mut out = Vec::with_capacity(ncols);
                    for i in 0..ncols {
                        out.push(match r.get_ref(i)? {
                            rusqlite::types::ValueRef::Integer(v) => Val::Int(v),
                            rusqlite::types::ValueRef::Real(v) => Val::Int(v as i64),
                            rusqlite::types::ValueRef::Text(t) => {
                                Val::Text(String::from_utf8_lossy(t).into_owned())
                            }
                            rusqlite::types::ValueRef::Blob(_)
                            | rusqlite::types::ValueRef::Null => Val::Null,
                        });
                    }
                    Ok(out)
                })?;
                rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
            }
            Self::Postgres(client) => {
                let sql = dollar_placeholders(sql);
                let owned: Vec<Box<dyn postgres::types::ToSql + Sync>> = args
                    .iter()
                    .map(|a| -> Box<dyn postgres::types::ToSql + Sync> {
                        match a {
                            Arg::Int(i) => Box::new(*i),
                            Arg::Text(t) => Box::new(t.clone()),
                        }
                    })
                    .collect();
                let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    owned.iter().map(|b| &**b).collect();
                let mut client = client.lock().map_err(|_| StoreError::Poisoned)?;
                let rows = client.query(&sql, &params)?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let mut vals = Vec::with_capacity(ncols);
                    for i in 0..ncols {
                        use postgres::types::Type;
                        let ty = row.columns().get(i).map(|c| c.type_().clone());
                        let v = match ty {
                            Some(Type::INT8) => row.try_get::<_, Option<i64>>(i)?.map(Val::Int),
                            Some(Type::INT4) => row
                                .try_get::<_, Option<i32>>(i)?
                                .map(|v| Val::Int(v.into())),
                            Some(Type::INT2) => row
                                .try_get::<_, Option<i16>>(i)?
                                .map(|v| Val::Int(v.into())),
                            _ => row.try_get::<_, Option<String>>(i)?.map(Val::Text),
                        };
                        vals.push(v.unwrap_or(Val::Null));
                    }
                    out.push(vals);
                }
                Ok(out)
            }
        }
    }

    /// Spend per tenant (micro-dollars) of calls at or after `since_ms`: seeds the limiter's
    /// budget counters at startup.
    pub fn spend_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self.query(
            "SELECT tenant, CAST(COALESCE(sum(cost_micros), 0) AS BIGINT) FROM ledger
             WHERE ts_ms >= ?1 GROUP BY tenant ORDER BY tenant",
            &[Arg::Int(since_ms)],
            2,
        )?;
        Ok(rows
            .into_iter()
            .map(|mut r| {
                let spend = r.get(1).map_or(0, Val::int);
                (r.swap_remove(0).text(), spend)
            })
            .collect())
    }

    /// `tenant`'s spend (micro-dollars) in rows at or after `since_ms`.
    pub fn tenant_spend_since(&self, tenant: &str, since_ms: i64) -> Result<i64, StoreError> {
        let rows = self.query(
            "SELECT CAST(COALESCE(sum(cost_micros), 0) AS BIGINT) FROM ledger
             WHERE tenant = ?1 AND ts_ms >= ?2",
            &[Arg::Text(tenant.to_owned()), Arg::Int(since_ms)],
            1,
        )?;
        Ok(rows.first().and_then(|r| r.first()).map_or(0, Val::int))
    }

    /// Totals for `q`: grouped by time first (chronologically) if a time grouping is asked for,
    /// then largest token users first.
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
                CAST(COALESCE(sum(CASE WHEN status BETWEEN 200 AND 299 AND outcome IN ('ok', 'cache_hit') THEN 0 ELSE 1 END), 0) AS BIGINT),
                CAST(COALESCE(sum(input_tokens), 0) AS BIGINT),
                CAST(COALESCE(sum(output_tokens), 0) AS BIGINT),
                CAST(COALESCE(sum(cache_creation_input_tokens), 0) AS BIGINT),
                CAST(COALESCE(sum(cache_read_input_tokens), 0) AS BIGINT),
                CAST(COALESCE(sum(cost_micros), 0) AS BIGINT),
                CAST(COALESCE(sum(CASE WHEN outcome = 'cache_hit' THEN 0 ELSE saved_micros END), 0) AS BIGINT),
                CAST(COALESCE(sum(CASE WHEN outcome = 'cache_hit' THEN saved_micros ELSE 0 END), 0) AS BIGINT),
                CAST(COALESCE(sum(CASE WHEN outcome = 'cache_hit' THEN 1 ELSE 0 END), 0) AS BIGINT),
                CAST(COALESCE(sum(CASE WHEN outcome = 'cache_hit' THEN 0
                    ELSE input_tokens + cache_creation_input_tokens + cache_read_input_tokens END), 0) AS BIGINT),
                CAST(COALESCE(sum(CASE WHEN outcome = 'cache_hit' THEN 0 ELSE cache_read_input_tokens END), 0) AS BIGINT)
             FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2 {tenant_clause}
             {group_clause}"
        );
        let mut args = vec![Arg::Int(q.since_ms), Arg::Int(q.until_ms)];
        if let Some(t) = &q.tenant {
            args.push(Arg::Text(t.clone()));
        }
        let ngroup = cols.len().max(1);
        let rows = self.query(&sql, &args, ngroup + 12)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut it = r.into_iter();
            let mut group = Vec::with_capacity(ngroup);
            for i in 0..ngroup {
                let raw = it.next().unwrap_or(Val::Null).text();
                group.push(match q.group_by.get(i) {
                    Some(g) => g.label(raw),
                    None => raw,
                });
            }
            let mut int = || it.next().map_or(0, |v| v.int());
            let mut row = UsageRow {
                group,
                requests: int(),
                errors: int(),
                input_tokens: int(),
                output_tokens: int(),
                cache_creation_input_tokens: int(),
                cache_read_input_tokens: int(),
                cost_micros: int(),
                prompt_cache_saved_micros: int(),
                response_cache_saved_micros: int(),
                response_cache_hits: int(),
                ..UsageRow::default()
            };
            let (prompt_tokens, reads) = (int(), int());
            row.set_hit_rate_parts(prompt_tokens, reads);
            out.push(row);
        }
        if cols.is_empty() {
            out.retain(|r| r.requests > 0);
        }
        // Sorted here rather than in SQL: text order in Postgres follows the database's
        // collation, and both backends must list groups identically. Time labels sort
        // chronologically as text.
        let time_idx: Vec<usize> = (0..q.group_by.len())
            .filter(|&i| q.group_by.get(i).is_some_and(|g| g.is_time()))
            .collect();
        out.sort_by(|a, b| {
            let times = |r: &UsageRow| -> Vec<String> {
                time_idx
                    .iter()
                    .filter_map(|&i| r.group.get(i).cloned())
                    .collect()
            };
            let tokens = |r: &UsageRow| {
                r.input_tokens
                    + r.output_tokens
                    + r.cache_creation_input_tokens
                    + r.cache_read_input_tokens
            };
            times(a)
                .cmp(&times(b))
                .then_with(|| tokens(b).cmp(&tokens(a)))
                .then_with(|| a.group.cmp(&b.group))
        });
        Ok(out)
    }
}

/// `?1` → `$1`: the queries are written for SQLite; Postgres numbers its parameters with `$`.
/// (No query here has a `?` inside a string literal.)
fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl Store {
    /// Spend per tenant (micro-dollars) of calls at or after `since_ms`, from this store's
    /// ledger (in PostgreSQL when the store is: a connection per call, these are rare). See [`LedgerDb::spend_since`].
    pub fn spend_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        LedgerDb::open(self, self.database_url())?.spend_since(since_ms)
    }

    /// Totals for `q` from this store's ledger. See [`LedgerDb::usage`].
    pub fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        LedgerDb::open(self, self.database_url())?.usage(q)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::{LedgerRow, LedgerWriter, LedgerWriterOptions};
    use sluice_core::Usage;

    #[test]
    fn utc_dates_of_known_days() {
        for (ms, date) in [
            (0, "1970-01-01"),
            (DAY_MS - 1, "1970-01-01"),
            (-1, "1969-12-31"),
            (-31 * DAY_MS, "1969-12-01"),
            // 2024-02-29 (a leap day) at noon, and the next day.
            (19_782 * DAY_MS + 12 * HOUR_MS, "2024-02-29"),
            (19_783 * DAY_MS, "2024-03-01"),
            // The last millisecond of 2025 and the first of 2026.
            (20_454 * DAY_MS - 1, "2025-12-31"),
            (20_454 * DAY_MS, "2026-01-01"),
            (1_795_277_101_000, "2026-11-21"),
            // Day -719162 is 0001-01-01.
            (-719_162 * DAY_MS, "0001-01-01"),
        ] {
            assert_eq!(utc_date(ms), date, "{ms}");
        }
        assert_eq!(
            GroupBy::Hour.label((19_782 * DAY_MS + 13 * HOUR_MS).to_string()),
            "2024-02-29T13:00Z"
        );
    }

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
