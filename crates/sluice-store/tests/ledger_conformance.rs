//! One ledger suite, two backends: every test here runs against the SQLite state database and
//! against PostgreSQL (a private schema per test), through the same public API the gateway and
//! the CLI use: the writer (`record`, `flush_blocking`, `shutdown`, `stats`), the sinks'
//! idempotent insert, and the reader (`usage`, `spend_since`). The Postgres half skips, saying
//! so, only when the database is unreachable and `CI` is unset.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod pg_support;

use sluice_core::Usage;
use sluice_store::ledger::{LedgerSink, RetryOptions, SqliteSink, StoredRow, UidGen};
use sluice_store::pg::PgSink;
use sluice_store::spool::SpoolOptions;
use sluice_store::{
    GroupBy, LedgerDb, LedgerRow, LedgerWriter, LedgerWriterOptions, Store, UsageQuery,
};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What a test needs from a backend.
trait Backend {
    fn writer(&self, opts: LedgerWriterOptions) -> LedgerWriter;
    fn sink(&self) -> Box<dyn LedgerSink>;
    fn db(&self) -> LedgerDb;
    /// One integer from `sql` run directly on the backend.
    fn scalar(&self, sql: &str) -> i64;
}

struct Sqlite {
    _dir: tempfile::TempDir,
    store: Store,
}

fn sqlite() -> Option<Sqlite> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.db")).unwrap();
    Some(Sqlite { _dir: dir, store })
}

impl Backend for Sqlite {
    fn writer(&self, opts: LedgerWriterOptions) -> LedgerWriter {
        LedgerWriter::start(self.store.path(), opts).unwrap()
    }
    fn sink(&self) -> Box<dyn LedgerSink> {
        Box::new(SqliteSink::open(self.store.path()).unwrap())
    }
    fn db(&self) -> LedgerDb {
        LedgerDb::open(&self.store, None).unwrap()
    }
    fn scalar(&self, sql: &str) -> i64 {
        let c = rusqlite::Connection::open(self.store.path()).unwrap();
        c.query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

struct Pg {
    db: pg_support::TestDb,
    spool: tempfile::TempDir,
}

fn postgres() -> Option<Pg> {
    Some(Pg {
        db: pg_support::test_db()?,
        spool: tempfile::tempdir().unwrap(),
    })
}

impl Backend for Pg {
    fn writer(&self, opts: LedgerWriterOptions) -> LedgerWriter {
        LedgerWriter::start_postgres(
            &self.db.url,
            SpoolOptions::new(self.spool.path()),
            opts,
            RetryOptions::default(),
        )
        .unwrap()
    }
    fn sink(&self) -> Box<dyn LedgerSink> {
        let mut s = PgSink::new(&self.db.url).unwrap();
        s.ensure_ready().unwrap();
        Box::new(s)
    }
    fn db(&self) -> LedgerDb {
        LedgerDb::postgres(&self.db.url).unwrap()
    }
    fn scalar(&self, sql: &str) -> i64 {
        // Sums are numeric in Postgres; the tests cast where needed.
        self.db.scalar(sql)
    }
}

fn row(i: i64) -> LedgerRow {
    LedgerRow {
        ts_ms: 1_000 + i,
        request_id: format!("req_{i}"),
        tenant: "web".into(),
        key_id: "key_1".into(),
        endpoint: "messages",
        status: 200,
        outcome: "ok",
        usage: Usage {
            input_tokens: 10,
            output_tokens: 5,
            ..Usage::default()
        },
        cost_micros: Some(7),
        ..LedgerRow::default()
    }
}

const COUNT: &str = "SELECT CAST(count(*) AS BIGINT) FROM ledger";

fn insert_and_flush(b: &dyn Backend) {
    let w = b.writer(LedgerWriterOptions {
        batch_max: 128,
        ..LedgerWriterOptions::default()
    });
    let s = w.sender();
    for i in 0..500 {
        assert!(s.record(row(i)));
    }
    assert!(s.flush_blocking());
    assert_eq!(b.scalar(COUNT), 500);
    let st = s.stats();
    assert_eq!(st.written.load(Ordering::Relaxed), 500);
    assert_eq!(st.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(st.spool_rows.load(Ordering::Relaxed), 0);
    assert!(st.database_up.load(Ordering::Relaxed));
    // Every column survives the trip.
    let mut full = row(9_999);
    full.feature = Some("chat".into());
    full.model = Some("claude-sonnet-4-5".into());
    full.model_served = Some("claude-sonnet-4-5-20250929".into());
    full.streamed = true;
    full.error_type = Some("overloaded_error".into());
    full.ttfb_ms = Some(12);
    full.latency_ms = 34;
    full.usage.cache_creation_input_tokens = 3;
    full.usage.cache_creation_5m_input_tokens = 2;
    full.usage.cache_creation_1h_input_tokens = 1;
    full.usage.cache_read_input_tokens = 4;
    full.stop_reason = Some("end_turn".into());
    full.upstream = Some("primary".into());
    full.waited_ms = 56;
    full.retries = 2;
    full.provider = Some("bedrock");
    full.fallback = 1;
    full.usage_estimated = true;
    full.prompt_cache_added = true;
    full.saved_micros = -42;
    s.record(full);
    w.shutdown();
    assert_eq!(
        b.scalar(
            "SELECT CAST(count(*) AS BIGINT) FROM ledger WHERE request_id = 'req_9999'
             AND feature = 'chat' AND model = 'claude-sonnet-4-5'
             AND model_served = 'claude-sonnet-4-5-20250929' AND streamed
             AND error_type = 'overloaded_error' AND ttfb_ms = 12 AND latency_ms = 34
             AND cache_creation_input_tokens = 3 AND cache_creation_5m_input_tokens = 2
             AND cache_creation_1h_input_tokens = 1 AND cache_read_input_tokens = 4
             AND stop_reason = 'end_turn' AND upstream = 'primary' AND waited_ms = 56
             AND retries = 2 AND provider = 'bedrock' AND fallback = 1 AND cost_micros = 7
             AND usage_estimated AND prompt_cache_added AND saved_micros = -42
             AND uid IS NOT NULL"
        ),
        1
    );
}

fn shutdown_flushes_every_row(b: &dyn Backend) {
    let w = b.writer(LedgerWriterOptions {
        flush_interval: Duration::from_secs(60),
        batch_max: 64,
        ..LedgerWriterOptions::default()
    });
    let s = w.sender();
    for i in 0..1000 {
        assert!(s.record(row(i)));
    }
    w.shutdown();
    assert_eq!(b.scalar(COUNT), 1000);
    assert_eq!(s.stats().written.load(Ordering::Relaxed), 1000);
}

fn mk(
    ts: i64,
    tenant: &str,
    feature: Option<&str>,
    model: &str,
    i: u64,
    o: u64,
    status: u16,
) -> LedgerRow {
    LedgerRow {
        ts_ms: ts,
        request_id: format!("r{ts}{tenant}"),
        tenant: tenant.into(),
        key_id: format!("key_{tenant}"),
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
            cache_creation_input_tokens: 2,
            ..Usage::default()
        },
        cost_micros: (model != "unpriced").then_some((i * 3 + o * 15) as i64),
        ..LedgerRow::default()
    }
}

const H: i64 = 3_600_000;
const D: i64 = 24 * H;

fn usage_totals(b: &dyn Backend) {
    let w = b.writer(LedgerWriterOptions::default());
    let tx = w.sender();
    // Day 0 (1970-01-01) at 00:xx and 01:xx, day 1 at 05:xx.
    tx.record(mk(10, "web", Some("chat"), "m1", 100, 10, 200));
    tx.record(mk(11, "web", None, "m1", 50, 5, 200));
    tx.record(mk(H + 12, "email", Some("sum"), "m2", 7, 3, 529));
    tx.record(mk(D + 5 * H, "web", Some("chat"), "unpriced", 40, 4, 200));
    tx.record(mk(3 * D, "web", Some("chat"), "m1", 1000, 1000, 200)); // outside the range
    w.shutdown();
    let db = b.db();
    let q = |g: Vec<GroupBy>, tenant: Option<&str>| UsageQuery {
        since_ms: 0,
        until_ms: 2 * D,
        group_by: g,
        tenant: tenant.map(Into::into),
    };
    let all = db.usage(&q(vec![], None)).unwrap();
    assert_eq!(all.len(), 1);
    let a = &all[0];
    assert_eq!((a.requests, a.errors), (4, 1));
    assert_eq!((a.input_tokens, a.output_tokens), (197, 22));
    assert_eq!(
        (a.cache_read_input_tokens, a.cache_creation_input_tokens),
        (4, 8)
    );
    // Costs: the exact integer sum, NULL (no price) counting 0, equal to SUM over the ledger.
    assert_eq!(a.cost_micros, 450 + 225 + 66);
    assert_eq!(
        a.cost_micros,
        b.scalar(&format!(
            "SELECT CAST(COALESCE(sum(cost_micros), 0) AS BIGINT) FROM ledger WHERE ts_ms < {}",
            2 * D
        ))
    );

    let by = db
        .usage(&q(vec![GroupBy::Tenant, GroupBy::Feature], None))
        .unwrap();
    let groups: Vec<Vec<String>> = by.iter().map(|r| r.group.clone()).collect();
    assert_eq!(
        groups,
        vec![
            vec!["web".to_string(), "chat".into()],
            vec!["web".into(), "(none)".into()],
            vec!["email".into(), "sum".into()],
        ]
    );

    let days = db.usage(&q(vec![GroupBy::Day], None)).unwrap();
    let d: Vec<(&str, i64)> = days
        .iter()
        .map(|r| (r.group[0].as_str(), r.requests))
        .collect();
    assert_eq!(d, vec![("1970-01-01", 3), ("1970-01-02", 1)]);

    let hours = db
        .usage(&q(vec![GroupBy::Hour, GroupBy::Tenant], None))
        .unwrap();
    let h: Vec<(&str, &str, i64)> = hours
        .iter()
        .map(|r| (r.group[0].as_str(), r.group[1].as_str(), r.input_tokens))
        .collect();
    assert_eq!(
        h,
        vec![
            ("1970-01-01T00:00Z", "web", 150),
            ("1970-01-01T01:00Z", "email", 7),
            ("1970-01-02T05:00Z", "web", 40),
        ]
    );

    let keys = db
        .usage(&q(vec![GroupBy::Key, GroupBy::Model], Some("web")))
        .unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].group, vec!["key_web", "m1"]);
    assert_eq!(keys[1].group, vec!["key_web", "unpriced"]);
    assert_eq!(keys[1].cost_micros, 0);
    // Any grouping partitions the same rows: the totals are always the ledger's.
    for g in [
        vec![GroupBy::Tenant],
        vec![GroupBy::Model, GroupBy::Day],
        vec![GroupBy::Hour, GroupBy::Key, GroupBy::Feature],
    ] {
        let rows = db.usage(&q(g, None)).unwrap();
        let mut t = sluice_store::UsageRow::default();
        for r in &rows {
            t.add(r);
        }
        t.group = a.group.clone();
        assert_eq!(&t, a);
    }
    assert!(
        db.usage(&UsageQuery {
            since_ms: 10 * D,
            until_ms: 11 * D,
            group_by: vec![],
            tenant: None,
        })
        .unwrap()
        .is_empty()
    );
}

fn spend_since(b: &dyn Backend) {
    let w = b.writer(LedgerWriterOptions::default());
    let tx = w.sender();
    tx.record(mk(100, "web", None, "m1", 10, 0, 200)); // 30
    tx.record(mk(200, "web", None, "m1", 20, 0, 200)); // 60
    tx.record(mk(300, "email", None, "m1", 0, 2, 200)); // 30
    tx.record(mk(400, "email", None, "unpriced", 5, 5, 200)); // NULL
    tx.record(mk(50, "old", None, "m1", 100, 0, 200)); // before
    w.shutdown();
    let db = b.db();
    assert_eq!(
        db.spend_since(100).unwrap(),
        vec![("email".to_string(), 30), ("web".to_string(), 90)]
    );
    assert_eq!(
        db.spend_since(250).unwrap(),
        vec![("email".to_string(), 30)]
    );
    assert!(db.spend_since(1_000).unwrap().is_empty());
}

fn idempotent_replay(b: &dyn Backend) {
    let mut uids = UidGen::new();
    let rows: Vec<StoredRow> = (0..300)
        .map(|i| StoredRow::new(uids.next_uid(), row(i)))
        .collect();
    let mut sink = b.sink();
    sink.insert(&rows[..200]).unwrap();
    // The same batch again (a commit whose acknowledgement was lost), then an overlapping one.
    sink.insert(&rows[..200]).unwrap();
    sink.insert(&rows[100..]).unwrap();
    assert_eq!(b.scalar(COUNT), 300);
    assert_eq!(
        b.scalar("SELECT CAST(count(DISTINCT request_id) AS BIGINT) FROM ledger"),
        300
    );
    // A replayed id keeps the row first stored.
    let mut changed = rows[0].clone();
    changed.input_tokens = 999_999;
    sink.insert(&[changed]).unwrap();
    assert_eq!(
        b.scalar("SELECT CAST(max(input_tokens) AS BIGINT) FROM ledger"),
        10
    );
}

struct Policy;

impl sluice_store::report::CapacityPolicy for Policy {
    fn class_of(&self, model: &str) -> String {
        if model.starts_with("opus") {
            "opus".into()
        } else if model.starts_with("son") {
            "sonnet".into()
        } else {
            "other".into()
        }
    }
    fn cache_reads_count(&self, _class: &str) -> bool {
        false
    }
    fn cache_saving_per_mtok(&self, model: &str) -> Option<u64> {
        model.starts_with("opus").then_some(4_500_000)
    }
    fn tiers(&self) -> Vec<sluice_store::report::TierLimits> {
        use sluice_store::report::{ClassLimits, TierLimits};
        let lim = |r, i, o| ClassLimits {
            requests_per_minute: Some(r),
            input_tokens_per_minute: Some(i),
            output_tokens_per_minute: Some(o),
        };
        vec![
            TierLimits {
                name: "small".into(),
                classes: [
                    ("opus".to_string(), lim(5, 2000, 1000)),
                    ("sonnet".to_string(), lim(5, 100, 100)),
                ]
                .into(),
            },
            TierLimits {
                name: "big".into(),
                classes: [("opus".to_string(), lim(20, 5000, 1000))].into(),
            },
        ]
    }
}

fn capacity_report(b: &dyn Backend) {
    let w = b.writer(LedgerWriterOptions::default());
    let tx = w.sender();
    let mut n = 0;
    let mut call = |minute: i64, model: &str, outcome: &'static str, status: u16| {
        n += 1;
        LedgerRow {
            ts_ms: minute * 60_000 + n,
            request_id: format!("r{n}"),
            tenant: "web".into(),
            key_id: "k".into(),
            endpoint: "messages",
            model: Some(model.into()),
            status,
            outcome,
            ..LedgerRow::default()
        }
    };
    // Opus: 1, 2, 3, 4 and 10 calls in minutes 0-4, 100 input, 10 output, 50 cache reads each.
    for (minute, calls) in [(0, 1), (1, 2), (2, 3), (3, 4), (4, 10)] {
        for _ in 0..calls {
            let mut r = call(minute, "opus-4", "ok", 200);
            r.usage.input_tokens = 100;
            r.usage.output_tokens = 10;
            r.usage.cache_read_input_tokens = 50;
            tx.record(r);
        }
    }
    // Served by Bedrock: not in the rates, in the cache figures.
    let mut r = call(7, "opus-4", "ok", 200);
    r.provider = Some("bedrock");
    r.usage.input_tokens = 1000;
    r.usage.cache_read_input_tokens = 500;
    tx.record(r);
    tx.record(call(8, "opus-4", "limited_tenant", 429));
    tx.record(call(8, "opus-4", "limited_tenant", 429));
    tx.record(call(8, "opus-4", "limited_org", 429));
    // Sonnet: one cached call and one upstream 429 in minute 0, one budget refusal.
    let mut r = call(0, "sonnet-4", "ok", 200);
    r.usage.input_tokens = 10;
    r.usage.cache_creation_input_tokens = 30;
    r.usage.cache_read_input_tokens = 60;
    r.usage.output_tokens = 5;
    tx.record(r);
    tx.record(call(0, "sonnet-4", "upstream_error", 429));
    tx.record(call(9, "sonnet-4", "limited_budget", 429));
    tx.record(call(100_000, "opus-4", "ok", 200)); // outside the range
    w.shutdown();

    let rep = b
        .db()
        .capacity(
            &sluice_store::report::CapacityQuery {
                since_ms: 0,
                until_ms: 60 * 60_000,
            },
            &Policy,
        )
        .unwrap();
    assert_eq!(rep.tiers, vec!["small", "big"]);
    let names: Vec<&str> = rep.classes.iter().map(|c| c.class.as_str()).collect();
    assert_eq!(names, vec!["opus", "sonnet"]);
    let o = &rep.classes[0];
    assert_eq!(o.active_minutes, 5);
    let rs = |s: &sluice_store::report::RateStats| (s.p50, s.p95, s.peak);
    assert_eq!(rs(&o.requests_per_minute), (3, 10, 10));
    assert_eq!(rs(&o.input_tokens_per_minute), (300, 1000, 1000));
    assert_eq!(rs(&o.output_tokens_per_minute), (30, 100, 100));
    assert_eq!(o.peak_minute.as_deref(), Some("1970-01-01T00:04Z"));
    assert_eq!(
        (
            o.limited_tenant,
            o.limited_org,
            o.limited_budget,
            o.upstream_429
        ),
        (2, 1, 0, 0)
    );
    assert_eq!((o.uncached_input_tokens, o.cache_read_tokens), (3000, 1500));
    assert!((o.cache_hit_rate - 1.0 / 3.0).abs() < 1e-9);
    // 1500 reads × $4.50/MTok saved = $0.00675.
    assert_eq!(o.cache_savings_micros, 6750);
    assert_eq!(
        (o.tier_for_p95.as_str(), o.tier_for_peak.as_str()),
        ("big", "big")
    );
    let s = &rep.classes[1];
    assert_eq!(rs(&s.requests_per_minute), (2, 2, 2));
    assert_eq!(rs(&s.input_tokens_per_minute), (40, 40, 40));
    assert_eq!(
        (
            s.limited_tenant,
            s.limited_org,
            s.limited_budget,
            s.upstream_429
        ),
        (0, 0, 1, 1)
    );
    assert!((s.cache_hit_rate - 0.6).abs() < 1e-9);
    assert_eq!(
        (s.cache_savings_micros, s.unpriced_cache_read_tokens),
        (0, 60)
    );
    assert_eq!(s.tier_for_p95, "small");
}

/// A call with the given tokens and `saved_micros`, for the savings tests.
#[allow(clippy::too_many_arguments)]
fn saving(
    ts: i64,
    tenant: &str,
    model: &str,
    outcome: &'static str,
    input: u64,
    cache_write: u64,
    cache_read: u64,
    saved: i64,
) -> LedgerRow {
    LedgerRow {
        ts_ms: ts,
        request_id: format!("s{ts}"),
        tenant: tenant.into(),
        key_id: format!("key_{tenant}"),
        feature: Some("chat".into()),
        endpoint: "messages",
        model: Some(model.into()),
        status: 200,
        outcome,
        usage: Usage {
            input_tokens: input,
            output_tokens: 10,
            cache_creation_input_tokens: cache_write,
            cache_read_input_tokens: cache_read,
            ..Usage::default()
        },
        cost_micros: Some(if outcome == "cache_hit" { 0 } else { 99 }),
        saved_micros: saved,
        ..LedgerRow::default()
    }
}

/// The rows of the savings tests: a 3,000-token prompt on a $3/MTok model written once (the
/// 5-minute premium, 3000 × 0.75 µ$, is a negative saving), read once (3000 × 2.7 µ$), then
/// answered twice from the response cache, plus another tenant's uncached call.
fn seed_savings(b: &dyn Backend) {
    let w = b.writer(LedgerWriterOptions::default());
    let tx = w.sender();
    tx.record(saving(60_000, "web", "opus-4", "ok", 100, 3_000, 0, -2_250));
    tx.record(saving(60_001, "web", "opus-4", "ok", 50, 0, 3_000, 8_100));
    // A response-cache hit keeps the stored reply's usage; it never reached an upstream, so its
    // tokens stay out of the prompt-cache hit rate.
    tx.record(saving(
        60_002,
        "web",
        "opus-4",
        "cache_hit",
        50,
        0,
        3_000,
        9_000,
    ));
    tx.record(saving(120_000, "email", "sonnet-4", "ok", 1_000, 0, 0, 0));
    tx.record(saving(
        120_001,
        "email",
        "sonnet-4",
        "cache_hit",
        0,
        0,
        0,
        500,
    ));
    // Outside the window.
    tx.record(saving(
        10 * D,
        "web",
        "opus-4",
        "cache_hit",
        0,
        0,
        0,
        1_000_000,
    ));
    w.shutdown();
}

fn usage_cache_savings(b: &dyn Backend) {
    seed_savings(b);
    let db = b.db();
    let q = |g: Vec<GroupBy>| UsageQuery {
        since_ms: 0,
        until_ms: D,
        group_by: g,
        tenant: None,
    };
    let all = db.usage(&q(vec![])).unwrap();
    assert_eq!(all.len(), 1);
    let a = &all[0];
    assert_eq!(a.requests, 5);
    assert_eq!(a.errors, 0, "a response-cache hit is not an error");
    // -2250 + 8100 + 0: the write premium counts against the reads' discount.
    assert_eq!(a.prompt_cache_saved_micros, 5_850);
    assert_eq!(a.response_cache_saved_micros, 9_500);
    assert_eq!(a.response_cache_hits, 2);
    // Reads 3000 of 3100 + 3050 + 1000 prompt tokens that reached an upstream.
    assert_eq!(a.prompt_cache_hit_rate, 3_000.0 / 7_150.0);
    // The existing columns still count every row.
    assert_eq!(a.input_tokens, 1_200);
    assert_eq!(a.cache_read_input_tokens, 6_000);
    assert_eq!(
        a.prompt_cache_saved_micros + a.response_cache_saved_micros,
        b.scalar(&format!(
            "SELECT CAST(sum(saved_micros) AS BIGINT) FROM ledger WHERE ts_ms < {D}"
        ))
    );

    let by = db.usage(&q(vec![GroupBy::Tenant, GroupBy::Model])).unwrap();
    let got: Vec<(Vec<String>, i64, i64, i64, f64)> = by
        .iter()
        .map(|r| {
            (
                r.group.clone(),
                r.prompt_cache_saved_micros,
                r.response_cache_saved_micros,
                r.response_cache_hits,
                r.prompt_cache_hit_rate,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                vec!["web".to_string(), "opus-4".into()],
                5_850,
                9_000,
                1,
                3_000.0 / 6_150.0
            ),
            (vec!["email".into(), "sonnet-4".into()], 0, 500, 1, 0.0),
        ]
    );
    // A total recomputes the rate from the tokens; it never adds or averages rates.
    let mut t = sluice_store::UsageRow::default();
    for r in &by {
        t.add(r);
    }
    t.group = a.group.clone();
    assert_eq!(&t, a);
    let json = serde_json::to_value(a).unwrap();
    for k in [
        "requests",
        "cost_micros",
        "prompt_cache_saved_micros",
        "response_cache_saved_micros",
        "response_cache_hits",
        "prompt_cache_hit_rate",
    ] {
        assert!(json.get(k).is_some(), "{k} missing from {json}");
    }
    assert!(json.get("hit_rate_parts").is_none(), "{json}");
}

fn capacity_cache_savings(b: &dyn Backend) {
    seed_savings(b);
    let rep = b
        .db()
        .capacity(
            &sluice_store::report::CapacityQuery {
                since_ms: 0,
                until_ms: D,
            },
            &Policy,
        )
        .unwrap();
    let names: Vec<&str> = rep.classes.iter().map(|c| c.class.as_str()).collect();
    assert_eq!(names, vec!["opus", "sonnet"]);
    let o = &rep.classes[0];
    // The response-cache hit used no upstream capacity: two calls in minute 1, not three.
    assert_eq!(o.requests_per_minute.peak, 2);
    assert_eq!(o.input_tokens_per_minute.peak, 3_150);
    assert_eq!(
        (
            o.uncached_input_tokens,
            o.cache_write_tokens,
            o.cache_read_tokens
        ),
        (150, 3_000, 3_000)
    );
    assert_eq!(o.cache_hit_rate, 3_000.0 / 6_150.0);
    // Gross read discount (the policy's 4.5 µ$ a token) vs the ledger's net figure.
    assert_eq!(o.cache_savings_micros, 13_500);
    assert_eq!(o.prompt_cache_saved_micros, 5_850);
    assert_eq!(
        (o.response_cache_saved_micros, o.response_cache_hits),
        (9_000, 1)
    );
    let s = &rep.classes[1];
    assert_eq!(
        (s.response_cache_saved_micros, s.response_cache_hits),
        (500, 1)
    );
    assert_eq!(s.cache_hit_rate, 0.0);
    let c = &rep.cache;
    assert_eq!(c.cache_hit_rate, 3_000.0 / 7_150.0);
    assert_eq!(
        (
            c.uncached_input_tokens,
            c.cache_write_tokens,
            c.cache_read_tokens
        ),
        (1_150, 3_000, 3_000)
    );
    assert_eq!(c.prompt_cache_saved_micros, 5_850);
    assert_eq!(c.response_cache_saved_micros, 9_500);
    assert_eq!(c.response_cache_hits, 2);
    assert_eq!(c.saved_micros, 15_350);
}

macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            #[test]
            fn insert_and_flush() {
                let Some(b) = super::$backend() else { return };
                super::insert_and_flush(&b);
            }
            #[test]
            fn shutdown_flushes_every_row() {
                let Some(b) = super::$backend() else { return };
                super::shutdown_flushes_every_row(&b);
            }
            #[test]
            fn usage_totals() {
                let Some(b) = super::$backend() else { return };
                super::usage_totals(&b);
            }
            #[test]
            fn spend_since() {
                let Some(b) = super::$backend() else { return };
                super::spend_since(&b);
            }
            #[test]
            fn capacity_report() {
                let Some(b) = super::$backend() else { return };
                super::capacity_report(&b);
            }
            #[test]
            fn usage_cache_savings() {
                let Some(b) = super::$backend() else { return };
                super::usage_cache_savings(&b);
            }
            #[test]
            fn capacity_cache_savings() {
                let Some(b) = super::$backend() else { return };
                super::capacity_cache_savings(&b);
            }
            #[test]
            fn idempotent_replay() {
                let Some(b) = super::$backend() else { return };
                super::idempotent_replay(&b);
            }
        }
    };
}

conformance!(sqlite);
conformance!(postgres);
