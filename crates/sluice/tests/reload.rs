//! Hot reload under load: a client loop calls through the gateway while the config file is
//! rewritten (a tenant's limit changes each time, seen in its `anthropic-ratelimit-*-limit`
//! header) and once made invalid; no call fails, each new limit shows, the invalid file is
//! refused (log + the reload endpoint's 422) and the old limit stays. Also: tenants created in
//! the database by another process reach the running gateway, restart-only changes are
//! reported, and refused calls become rate-limited `auth.failed` audit events.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{SMALL, UPSTREAM_KEY};
use serde_json::{Value, json};
use sluice::gateway::{self, ControlOptions, Running};
use sluice_store::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const TOKEN: &str = "reload-test-admin-token";

struct Env {
    _mock: sluice_mock::MockHandle,
    _dir: tempfile::TempDir,
    path: PathBuf,
    db: PathBuf,
    gw: Running,
    base: String,
    admin: String,
    key: String,
    mock_url: String,
    http: reqwest::Client,
}

fn config(mock: &str, db: &Path, rpm: u64, listen: &str) -> String {
    let hash: String = sluice_admin::auth::hash_token(TOKEN)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "[server]\nlisten = \"{listen}\"\nshutdown_grace_secs = 5\n\
         [upstream]\nbase_url = \"{mock}\"\n\
         [store]\npath = {db:?}\nledger_flush_interval_ms = 10\n\
         [auth]\nkey_refresh_ms = 50\n\
         [admin]\nlisten = \"127.0.0.1:0\"\nwatch_debounce_ms = 100\n\
         [[admin.tokens]]\nname = \"ops-reload\"\ntoken_sha256 = \"{hash}\"\n\
         [[tenants]]\nname = \"web\"\nlimits = {{ requests_per_minute = {rpm} }}\n",
    )
}

async fn start(window: Duration) -> Env {
    let mock_opts = sluice_mock::MockOptions {
        api_key: Some(UPSTREAM_KEY.into()),
        ..sluice_mock::MockOptions::default()
    };
    let mock = sluice_mock::spawn("127.0.0.1:0".parse().unwrap(), mock_opts)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sluice.db");
    let path = dir.path().join("sluice.toml");
    let mock_url = mock.url();
    std::fs::write(&path, config(&mock_url, &db, 100_000, "127.0.0.1:0")).unwrap();
    let cfg = sluice_config::Config::load(&path).unwrap();
    let key = Store::open(&db)
        .unwrap()
        .create_key("web", "t", None, 0)
        .unwrap()
        .secret;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = gateway::start_with(
        cfg,
        sluice_core::SecretString::new(UPSTREAM_KEY),
        listener,
        ControlOptions {
            config_path: Some(path.clone()),
            auth_failure_window: window,
            ..ControlOptions::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", gw.addr());
    let admin = format!("http://{}", gw.admin_addr().unwrap());
    let http = reqwest::Client::new();
    for _ in 0..100 {
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
    Env {
        _mock: mock,
        _dir: dir,
        path,
        db,
        gw,
        base,
        admin,
        key,
        mock_url,
        http,
    }
}

impl Env {
    async fn limit(&self, key: &str) -> (u16, Option<String>) {
        let r = self
            .http
            .post(format!("{}/v1/messages", self.base))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(SMALL)
            .send()
            .await
            .unwrap();
        let h = r
            .headers()
            .get("anthropic-ratelimit-requests-limit")
            .map(|v| v.to_str().unwrap().to_owned());
        (r.status().as_u16(), h)
    }

    async fn wait_limit(&self, want: u64) {
        let want = want.to_string();
        for _ in 0..200 {
            if self.limit(&self.key).await.1.as_deref() == Some(want.as_str()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("limit {want} never applied");
    }

    async fn admin(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.admin))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_rewrites_apply_under_load_and_an_invalid_file_changes_nothing() {
    let env = Arc::new(start(Duration::from_secs(60)).await);
    env.wait_limit(100_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (env, stop, ok, failed) = (env.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, limit) = env.limit(&env.key).await;
                if status == 200 && limit.is_some() {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let write = |rpm: u64| {
        std::fs::write(
            &env.path,
            config(&env.mock_url, &env.db, rpm, "127.0.0.1:0"),
        )
        .unwrap()
    };
    for rpm in [200_000, 300_000, 400_000] {
        write(rpm);
        env.wait_limit(rpm).await;
    }
    // An invalid file: refused, the running config stays.
    std::fs::write(
        &env.path,
        config(&env.mock_url, &env.db, 1, "127.0.0.1:0").replace(
            "requests_per_minute = 1 ",
            "requests_per_minute = \"lots\" ",
        ),
    )
    .unwrap();
    let (s, v) = env.admin(reqwest::Method::POST, "/admin/v1/reload").await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["type"], "validation_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("requests_per_minute") && msg.contains("sluice.toml"),
        "{msg}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(env.limit(&env.key).await.1.as_deref(), Some("400000"));
    // Fixed again, with a changed listen address: applied, and the address reported.
    std::fs::write(
        &env.path,
        config(&env.mock_url, &env.db, 500_000, "127.0.0.1:1"),
    )
    .unwrap();
    env.wait_limit(500_000).await;
    let (s, v) = env.admin(reqwest::Method::POST, "/admin/v1/reload").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["report"]["restart_needed"], json!(["server.listen"]));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "{failed} calls failed during reloads ({ok} succeeded)"
    );
    assert!(ok > 20, "the load was real: {ok}");
    // The reloads are in the audit trail: the watcher's and the endpoint's.
    let (_, v) = env.admin(reqwest::Method::GET, "/admin/v1/audit").await;
    let actors: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "config.reload")
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert!(actors.contains(&"watch:file"), "{actors:?}");
    assert!(actors.contains(&"ops-reload"), "{actors:?}");
}

#[tokio::test]
async fn tenants_written_by_another_process_reach_the_running_gateway() {
    let env = start(Duration::from_secs(60)).await;
    // The CLI's direct mode, as another process would do it: plan, validate, write, audit.
    let store = Store::open(&env.db).unwrap();
    let file = sluice_config::Config::load(&env.path).unwrap();
    let p = sluice_admin::tenants::plan(
        &file,
        &store.tenant_rows().unwrap(),
        &sluice_admin::tenants::Change::Create(
            json!({"name": "batchy", "limits": {"requests_per_minute": 42}}),
        ),
    )
    .unwrap();
    sluice_admin::tenants::commit(&store, &p, "cli:tester", 1).unwrap();
    let key = store.create_key("batchy", "", None, 1).unwrap().secret;
    let mut seen = None;
    for _ in 0..100 {
        seen = env.limit(&key).await.1;
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(seen.as_deref(), Some("42"));
    let (_, v) = env
        .admin(reqwest::Method::GET, "/admin/v1/tenants/batchy")
        .await;
    assert_eq!(v["source"], "database");
}

#[tokio::test]
async fn refused_calls_become_one_audit_event_per_source_and_window() {
    let env = start(Duration::from_millis(300)).await;
    let state = env.gw.state().unwrap().clone();
    let parts = |ip: &str| {
        let mut req = axum::http::Request::builder()
            .uri("/v1/messages")
            .body(())
            .unwrap();
        let addr: std::net::SocketAddr = format!("{ip}:5000").parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        req.into_parts().0
    };
    let (a, b) = (parts("10.0.0.1"), parts("10.0.0.2"));
    // What the data plane's refusal path calls (see sluice_proxy::AppState::auth_failed).
    for _ in 0..500 {
        state.auth_failed(&a, &sluice_proxy::GatewayError::InvalidKey);
    }
    state.auth_failed(&a, &sluice_proxy::GatewayError::ExpiredKey);
    state.auth_failed(&b, &sluice_proxy::GatewayError::MissingKey);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, v) = env.admin(reqwest::Method::GET, "/admin/v1/audit").await;
    let events: Vec<&Value> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "auth.failed")
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["target"], "10.0.0.1");
    assert_eq!(events[0]["actor"], "gateway");
    assert_eq!(events[0]["after"]["count"], 501);
    assert_eq!(events[0]["after"]["reasons"]["invalid_key"], 500);
    assert_eq!(events[0]["after"]["reasons"]["expired_key"], 1);
    assert_eq!(events[1]["target"], "10.0.0.2");
    assert_eq!(events[1]["after"]["count"], 1);
}
