//! The gateway with its ledger in PostgreSQL, end to end: real calls through the gateway to the
//! fake upstream while the database goes away and comes back (a tokio TCP proxy between the
//! gateway and Postgres is cut: open connections closed, new ones refused; the machine's
//! Postgres is never touched), then `sluice usage` and `sluice report capacity` read the same
//! ledger. Each test uses a private schema, dropped at the end. Skips, saying so, only when
//! Postgres is unreachable and `CI` is unset.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use sluice::cli::{CapacityArgs, UsageArgs};
use sluice::gateway;
use sluice_config::Config;
use sluice_store::Store;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const UPSTREAM_KEY: &str = "sk-ant-ledger-pg-upstream";

use common::pg::test_db;

/// A TCP proxy to Postgres that can be cut and restored.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(target: (String, u16)) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (c2, k2) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if c2.load(Ordering::SeqCst) {
                    drop(client); // refused: closed before a byte is exchanged
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) =
                        tokio::net::TcpStream::connect((target.0.as_str(), target.1)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                k2.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { addr, cut, conns }
    }

    /// Close every open connection and refuse new ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn config(mock: &str, db_path: &str, database_url: &str, spool: &str) -> Config {
    Config::from_toml(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_secs = 5
[upstream]
base_url = "{mock}"
[store]
path = {db_path:?}
ledger_flush_interval_ms = 10
database_url = {database_url:?}
spool_dir = {spool:?}
[auth]
key_refresh_ms = 50
[[tenants]]
name = "web"
[[tenants]]
name = "email"
"#
    ))
    .unwrap()
}

fn segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn gateway_loses_no_ledger_row_across_a_postgres_outage_and_reports_read_it() {
    let Some(db) = test_db() else {
        return;
    };
    let db = Arc::new(db);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let db_path = dir.path().join("sluice.db");

    let (cfg_direct, ok_calls) = rt.block_on(async {
        let mock = sluice_mock::spawn(
            "127.0.0.1:0".parse().unwrap(),
            sluice_mock::MockOptions {
                api_key: Some(UPSTREAM_KEY.into()),
                ..sluice_mock::MockOptions::default()
            },
        )
        .await
        .unwrap();
        let proxy = Proxy::start(db.target()).await;
        let cfg = config(
            &mock.url(),
            &db_path.display().to_string(),
            &db.url(Some(proxy.addr)),
            &spool.display().to_string(),
        );
        // The keys live in Postgres with the ledger (the state store follows database_url), so
        // the gateway starts with the database up to load them; it is cut right after.
        let (web, email) = {
            let url = db.url(None);
            tokio::task::spawn_blocking(move || {
                let store = Store::open_postgres(&url).unwrap();
                (
                    store.create_key("web", "t", None, 0).unwrap().secret,
                    store.create_key("email", "t", None, 0).unwrap().secret,
                )
            })
            .await
            .unwrap()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw = gateway::start(
            cfg.clone(),
            sluice_core::SecretString::new(UPSTREAM_KEY),
            listener,
        )
        .await
        .unwrap();
        let base = format!("http://{}", gw.addr());
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if http
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The database goes away under a running gateway: it must keep serving (from its key
        // ring) and spool the ledger.
        proxy.cut();

        // 6 clients, about 4.5 s of calls: the database comes back at 1.5 s, goes away again
        // at 2.5 s for 1.5 s, and is back for the rest.
        let ok = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..6)
            .map(|c| {
                let (http, base, ok, stop) = (http.clone(), base.clone(), ok.clone(), stop.clone());
                let key = if c % 2 == 0 { web.clone() } else { email.clone() };
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let body = format!(
                            r#"{{"model":"claude-sonnet-4-5","max_tokens":16,"stream":{},"messages":[{{"role":"user","content":"call {c} {i}"}}]}}"#,
                            i.is_multiple_of(3)
                        );
                        let r = http
                            .post(format!("{base}/v1/messages"))
                            .header("x-api-key", &key)
                            .header("anthropic-version", "2023-06-01")
                            .header("content-type", "application/json")
                            .header("x-sluice-feature", if c < 3 { "chat" } else { "search" })
                            .body(body)
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), 200, "the gateway must keep serving");
                        r.bytes().await.unwrap();
                        ok.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(segments(&spool) > 0, "nothing was spooled while the database was away");
        proxy.restore();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.restore();
        let restored = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
        let calls = ok.load(Ordering::Relaxed);
        // Every row reaches Postgres without a restart: the spool drains on its own.
        let d = db.clone();
        let start = Instant::now();
        loop {
            let d = d.clone();
            let n = tokio::task::spawn_blocking(move || d.scalar("SELECT count(*) FROM ledger"))
                .await
                .unwrap();
            if n as u64 >= calls && segments(&spool) == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "spool not drained: {n} of {calls} rows in Postgres"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "gateway: {calls} calls; spool drained {:?} after the database came back",
            restored.elapsed()
        );
        gw.shutdown().await.unwrap();
        let direct = config(
            &mock.url(),
            &db_path.display().to_string(),
            &db.url(None),
            &spool.display().to_string(),
        );
        (direct, calls)
    });

    assert!(ok_calls > 100, "too little load: {ok_calls} calls");
    assert_eq!(db.scalar("SELECT count(*) FROM ledger"), ok_calls as i64);
    assert_eq!(
        db.scalar("SELECT count(DISTINCT request_id) FROM ledger"),
        ok_calls as i64,
        "a row was stored twice"
    );
    assert_eq!(segments(&spool), 0, "spool files left behind");
    // Nothing went to SQLite: with database_url the gateway does not even create the file
    // (the ledger and the state store are both in Postgres).
    assert!(!db_path.exists(), "the gateway created a SQLite database");

    // `sluice usage` on the Postgres ledger: totals equal SUM over the ledger, to the µ$.
    let args = UsageArgs {
        since: "1h".into(),
        until: None,
        by: vec![
            "tenant".into(),
            "feature".into(),
            "model".into(),
            "day".into(),
        ],
        tenant: None,
        format: "json".into(),
        json: false,
    };
    let now = sluice::cli::now_ms();
    let out: serde_json::Value =
        serde_json::from_str(&sluice::cli::usage_report(&cfg_direct, &args, now).unwrap()).unwrap();
    let total = &out["total"];
    assert_eq!(total["requests"].as_i64().unwrap(), ok_calls as i64);
    assert_eq!(
        total["cost_micros"].as_i64().unwrap(),
        db.scalar("SELECT CAST(sum(cost_micros) AS BIGINT) FROM ledger")
    );
    assert!(db.scalar("SELECT CAST(sum(cost_micros) AS BIGINT) FROM ledger") > 0);
    assert_eq!(
        total["input_tokens"].as_i64().unwrap(),
        db.scalar("SELECT CAST(sum(input_tokens) AS BIGINT) FROM ledger")
    );
    let rows = out["rows"].as_array().unwrap();
    // 2 tenants × 2 features, one model, one UTC day (two if the run crossed midnight).
    assert!(rows.len() == 4 || rows.len() == 8, "{rows:?}");
    let csv = sluice::cli::usage_report(
        &cfg_direct,
        &UsageArgs {
            format: "csv".into(),
            ..args.clone()
        },
        now,
    )
    .unwrap();
    assert!(
        csv.starts_with("tenant,feature,model,day,requests,"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), rows.len() + 1);
    let table = sluice::cli::usage_report(
        &cfg_direct,
        &UsageArgs {
            format: "table".into(),
            ..args
        },
        now,
    )
    .unwrap();
    assert!(
        table.lines().last().unwrap().starts_with("TOTAL"),
        "{table}"
    );

    // `sluice report capacity` on the same ledger.
    let cap = sluice::cli::capacity_report(
        &cfg_direct,
        &CapacityArgs {
            since: "1h".into(),
            until: None,
            format: "json".into(),
        },
        now,
    )
    .unwrap();
    let cap: serde_json::Value = serde_json::from_str(&cap).unwrap();
    let classes = cap["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 1, "{cap}");
    let sonnet = &classes[0];
    assert_eq!(sonnet["class"], "sonnet-4");
    assert!(sonnet["requests_per_minute"]["peak"].as_u64().unwrap() > 0);
    // Thousands of calls in a minute or two: more than `start` allows (1,000 requests per
    // minute for Sonnet 4.x), well within `build`.
    let peak = sonnet["requests_per_minute"]["peak"].as_u64().unwrap();
    let want = if peak > 1_000 { "build" } else { "start" };
    assert_eq!(sonnet["tier_for_peak"], want, "{sonnet}");
    assert!(
        sonnet["input_tokens_per_minute"]["peak"].as_i64().unwrap()
            <= db.scalar("SELECT CAST(sum(input_tokens) AS BIGINT) FROM ledger")
    );
    let table = sluice::cli::capacity_report(
        &cfg_direct,
        &CapacityArgs {
            since: "1h".into(),
            until: None,
            format: "table".into(),
        },
        now,
    )
    .unwrap();
    assert!(table.contains("sonnet-4"), "{table}");
}
