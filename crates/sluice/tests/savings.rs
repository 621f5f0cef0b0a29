//! What the caches saved, where people look: the real `sluice` binary's `usage` (JSON, CSV,
//! table) and `report capacity` (JSON, table) over a ledger seeded with the worked example of
//! docs/caching.md, on SQLite and on PostgreSQL (a private schema, dropped at the end; skipped,
//! saying so, only when Postgres is unreachable and `CI` is unset).
//!
//! The example: a 3,000-token system prompt on claude-sonnet-4-5, written to the prompt cache
//! by the first call and read by the next five, then the same request answered once from the
//! response cache. `saved_micros` is computed with the shipped price table, as the data plane
//! does, and the totals are checked against the hand arithmetic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::Value;
use sluice_core::Usage;
use sluice_store::{LedgerRow, LedgerWriter, LedgerWriterOptions};
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// 2026-01-01T10:00:00Z.
const T0: i64 = 1_767_261_600_000;
const WINDOW: [&str; 4] = [
    "--since",
    "2026-01-01T00:00:00Z",
    "--until",
    "2026-01-02T00:00:00Z",
];
const MODEL: &str = "claude-sonnet-4-5";

/// The example's rows, `saved_micros` and `cost_micros` from the shipped prices.
fn example_rows() -> Vec<LedgerRow> {
    let prices = sluice_billing::PriceTable::builtin();
    let call = |i: i64, usage: Usage, outcome: &'static str| LedgerRow {
        ts_ms: T0 + i * 1_000,
        request_id: format!("req_{i}"),
        tenant: "web".into(),
        key_id: "key_web".into(),
        feature: Some("support".into()),
        endpoint: "messages",
        model: Some(MODEL.into()),
        status: 200,
        outcome,
        usage,
        ..LedgerRow::default()
    };
    let first = Usage {
        input_tokens: 200,
        output_tokens: 300,
        cache_creation_input_tokens: 3_000,
        cache_creation_5m_input_tokens: 3_000,
        ..Usage::default()
    };
    let later = Usage {
        input_tokens: 200,
        output_tokens: 300,
        cache_read_input_tokens: 3_000,
        ..Usage::default()
    };
    let mut rows = Vec::new();
    for i in 0..6 {
        let usage = if i == 0 { first } else { later };
        let mut r = call(i, usage, "ok");
        r.cost_micros = prices
            .cost_micros(MODEL, &usage, false)
            .map(|c| i64::try_from(c).unwrap());
        r.saved_micros = prices
            .prompt_cache_saved_micros(MODEL, &usage, false)
            .unwrap();
        rows.push(r);
    }
    // The seventh call, answered from the response cache: cost 0, and the stored reply's cost
    // saved.
    let stored_cost = rows[5].cost_micros.unwrap();
    let mut hit = call(6, later, "cache_hit");
    hit.cost_micros = Some(0);
    hit.saved_micros = stored_cost;
    rows.push(hit);
    // Another tenant, without any cache, and a row outside the window.
    let plain = Usage {
        input_tokens: 1_000,
        output_tokens: 100,
        ..Usage::default()
    };
    let mut other = call(7, plain, "ok");
    other.tenant = "email".into();
    other.key_id = "key_email".into();
    other.cost_micros = Some(4_500);
    rows.push(other);
    let mut outside = call(0, later, "cache_hit");
    outside.ts_ms = T0 + 2 * 86_400_000;
    outside.saved_micros = 1_000_000;
    rows.push(outside);
    rows
}

fn sluice(config: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(WINDOW)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every report over the example's ledger at `config`.
fn check(config: &Path) {
    // The hand arithmetic (µ$; $3/MTok input is 3 µ$ a token, a read 0.3, a 5-minute write 3.75,
    // output 15). Call 1 pays the write premium: 3000 × 0.75 = 2250 against. Calls 2-6 each save
    // 3000 × (3 − 0.3) = 8100. A later call costs 200 × 3 + 3000 × 0.3 + 300 × 15 = 6000, which
    // the response-cache hit saves whole.
    let prompt_saved = 5 * 8_100 - 2_250;
    assert_eq!(prompt_saved, 38_250);
    let response_saved = 6_000;
    // Reads over prompt tokens of the calls that reached the upstream: 5 × 3000 of
    // 6 × 200 + 3000 + 5 × 3000.
    let web_rate = 15_000.0 / 19_200.0;
    assert_eq!(web_rate, 0.781_25);

    let v: Value = serde_json::from_str(&sluice(config, &["usage", "--json", "--by", "tenant"]))
        .expect("usage --json");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    let web = &rows[0];
    assert_eq!(web["group"], serde_json::json!(["web"]));
    assert_eq!(web["requests"], 7);
    assert_eq!(web["errors"], 0);
    assert_eq!(web["prompt_cache_saved_micros"], prompt_saved);
    assert_eq!(web["response_cache_saved_micros"], response_saved);
    assert_eq!(web["response_cache_hits"], 1);
    assert_eq!(web["prompt_cache_hit_rate"].as_f64().unwrap(), web_rate);
    let email = &rows[1];
    assert_eq!(email["prompt_cache_saved_micros"], 0);
    assert_eq!(email["response_cache_hits"], 0);
    assert_eq!(email["prompt_cache_hit_rate"].as_f64().unwrap(), 0.0);
    let total = &v["total"];
    assert_eq!(total["requests"], 8);
    assert_eq!(total["prompt_cache_saved_micros"], prompt_saved);
    assert_eq!(total["response_cache_saved_micros"], response_saved);
    assert_eq!(total["response_cache_hits"], 1);
    // The total's rate is recomputed from tokens: 15000 of 19200 + 1000.
    assert_eq!(
        total["prompt_cache_hit_rate"].as_f64().unwrap(),
        15_000.0 / 20_200.0
    );

    let csv = sluice(
        config,
        &["usage", "--format", "csv", "--by", "tenant,model"],
    );
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "tenant,model,requests,errors,input_tokens,output_tokens,cache_creation_input_tokens,\
         cache_read_input_tokens,cost_micros,cost_usd,prompt_cache_saved_micros,\
         response_cache_saved_micros,response_cache_hits,prompt_cache_hit_rate"
    );
    let web_line = lines.next().unwrap();
    assert!(
        web_line.starts_with("web,claude-sonnet-4-5,7,0,")
            && web_line.ends_with(",38250,6000,1,0.781250"),
        "{csv}"
    );

    let table = sluice(config, &["usage", "--by", "tenant"]);
    let head = table.lines().nth(1).unwrap();
    for col in ["CACHE_HIT", "PROMPT_SAVED", "RESP_HITS", "RESP_SAVED"] {
        assert!(head.contains(col), "{table}");
    }
    let total_line = table.lines().last().unwrap();
    assert!(total_line.starts_with("TOTAL"), "{table}");
    assert!(
        total_line.contains(" 74.3% ")
            && total_line.contains(" $0.038250 ")
            && total_line.ends_with(" $0.006000"),
        "{table}"
    );

    let cap: Value =
        serde_json::from_str(&sluice(config, &["report", "capacity", "--format", "json"])).unwrap();
    let c = &cap["cache"];
    assert_eq!(c["cache_hit_rate"].as_f64().unwrap(), 15_000.0 / 20_200.0);
    assert_eq!(c["prompt_cache_saved_micros"], prompt_saved);
    assert_eq!(c["response_cache_saved_micros"], response_saved);
    assert_eq!(c["response_cache_hits"], 1);
    assert_eq!(c["saved_micros"], prompt_saved + response_saved);
    let sonnet = &cap["classes"][0];
    assert_eq!(sonnet["class"], "sonnet-4", "{cap}");
    // Every call is in one minute; the response-cache hit never reached the upstream: web's
    // 6 calls and email's 1, not 8.
    assert_eq!(sonnet["requests_per_minute"]["peak"], 7);
    assert_eq!(sonnet["prompt_cache_saved_micros"], prompt_saved);
    // The gross read discount, next to the net figure: 15000 × 2.7.
    assert_eq!(sonnet["cache_savings_micros"], 40_500);

    let table = sluice(config, &["report", "capacity"]);
    assert!(
        table.contains("PROMPT SAVED") && table.contains("RESP SAVED"),
        "{table}"
    );
    assert!(
        table.contains(
            "Caches: prompt-cache hit rate 74.3% (15000 of 20200 prompt tokens read from \
             cache); prompt cache saved $0.038250, response cache saved $0.006000 (1 hit); \
             $0.044250 in all"
        ),
        "{table}"
    );
}

#[test]
fn usage_and_capacity_show_the_savings_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sluice.db");
    // The gateway migrates the database before its writer starts; so does the test.
    sluice_store::Store::open(&db).unwrap();
    let w = LedgerWriter::start(&db, LedgerWriterOptions::default()).unwrap();
    let tx = w.sender();
    for r in example_rows() {
        assert!(tx.record(r));
    }
    w.shutdown();
    assert_eq!(
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM ledger", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        9
    );
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!("[store]\npath = {:?}\n", db.display().to_string()),
    )
    .unwrap();
    check(&config);
}

#[test]
fn usage_and_capacity_show_the_savings_on_postgres() {
    let Some(pg) = common::pg::test_db() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url(None);
    let w = LedgerWriter::start_postgres(
        &url,
        sluice_store::spool::SpoolOptions::new(dir.path().join("spool")),
        LedgerWriterOptions::default(),
        sluice_store::ledger::RetryOptions::default(),
    )
    .unwrap();
    let tx = w.sender();
    for r in example_rows() {
        assert!(tx.record(r));
    }
    w.shutdown();
    assert_eq!(pg.scalar("SELECT count(*) FROM ledger"), 9);
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = {:?}\ndatabase_url = {url:?}\n",
            dir.path().join("unused.db").display().to_string()
        ),
    )
    .unwrap();
    check(&config);
}
