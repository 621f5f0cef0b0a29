//! Two gateways (replicas) on one PostgreSQL schema, end to end: a key created through A's
//! admin API authenticates on B within B's key-refresh interval, a key revoked through B stops
//! working on A, and both replicas' audit events land in one chain that verifies. Each test
//! uses a private schema, dropped at the end. Skips, saying so, only when Postgres is
//! unreachable and `CI` is unset.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Env, Opts, SMALL, env_with};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ALICE: &str = "admin-token-alice-state-pg-0123";

use common::pg::{TestDb, test_db};

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A gateway whose ledger and state store are in `db`, with an admin API that takes `ALICE`.
async fn replica(db: &TestDb) -> (Env, String) {
    let env = env_with(Opts {
        sections: format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[admin.tokens]]\nname = \"ops-alice\"\ntoken_sha256 = \"{}\"\n",
            hex(&sluice_admin::auth::hash_token(ALICE)),
        ),
        store_extra: format!("database_url = {:?}", db.url(None)),
        state_url: Some(db.url(None)),
        ..Opts::default()
    })
    .await;
    let admin = format!("http://{}", env.gw.as_ref().unwrap().admin_addr().unwrap());
    (env, admin)
}

async fn admin_post(env: &Env, admin: &str, path: &str, body: Value) -> (u16, Value) {
    let r = env
        .http
        .post(format!("{admin}{path}"))
        .bearer_auth(ALICE)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn admin_get(env: &Env, admin: &str, path: &str) -> Value {
    let r = env
        .http
        .get(format!("{admin}{path}"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Wait (up to `within`) until `key` gets `status` from `env`; returns how long it took.
async fn wait_status(env: &Env, key: &str, status: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = env.post_messages(key, SMALL).send().await.unwrap();
        if r.status().as_u16() == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "still {} after {within:?}, wanted {status}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn a_key_created_on_one_replica_authenticates_on_the_other() {
    // The schema is made and dropped outside the runtime: the sync Postgres client used for it
    // cannot run on a runtime thread.
    let Some(db) = test_db() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(two_replicas(&db));
    drop(rt);
    drop(db);
}

async fn two_replicas(db: &TestDb) {
    let (a, a_admin) = replica(db).await;
    let (b, b_admin) = replica(db).await;

    // Each replica's harness keys are in the shared store: both replicas know all six.
    wait_status(&b, &a.web_key, 200, Duration::from_secs(2)).await;
    wait_status(&a, &b.email_key, 200, Duration::from_secs(2)).await;

    // Created through A's admin API; B has never seen it and picks it up on its next key-ring
    // refresh (key_refresh_ms = 50 in the harness).
    let (s, v) = admin_post(
        &a,
        &a_admin,
        "/admin/v1/keys",
        json!({"tenant": "web", "label": "replica"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let secret = v["secret"].as_str().unwrap().to_owned();
    let id = v["key"]["id"].as_str().unwrap().to_owned();
    let took = wait_status(&b, &secret, 200, Duration::from_secs(2)).await;
    eprintln!("key created on A authenticated on B after {took:?}");

    // Revoked through B: refused on A.
    let (s, v) = admin_post(
        &b,
        &b_admin,
        &format!("/admin/v1/keys/{id}/revoke"),
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    wait_status(&a, &secret, 401, Duration::from_secs(2)).await;

    // Both replicas' audit events are one chain, and each replica verifies it.
    for (env, admin) in [(&a, &a_admin), (&b, &b_admin)] {
        let v = admin_get(env, admin, "/admin/v1/audit/verify").await;
        assert!(v["broken"].is_null(), "{v}");
        assert!(v["events"].as_u64().unwrap() >= 2, "{v}");
    }
    let events = admin_get(&b, &b_admin, "/admin/v1/audit").await;
    let actions: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"key.create"), "{events}");
    assert!(actions.contains(&"key.revoke"), "{events}");

    // Neither replica opened its SQLite state database.
    assert!(!a.db.exists() && !b.db.exists());
    drop(a);
    drop(b);
}
