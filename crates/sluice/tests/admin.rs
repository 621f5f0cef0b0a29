//! The admin API through the real gateway (fake upstream, loopback): bearer tokens, every
//! route's happy path and one failure, tenants created and changed live, keys shown once and
//! rotated with an overlap, the audit chain written for each change (and `sluice audit verify`
//! finding an edited row), and the OpenAPI document matching the router.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Env, Opts, SMALL, env_with};
use serde_json::{Value, json};
use std::time::Duration;

const ALICE: &str = "admin-token-alice-0123456789";
const BOB: &str = "admin-token-bob-readonly-42";

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

struct Admin {
    env: Env,
    base: String,
}

async fn admin_env(web_extra: &str) -> Admin {
    let sections = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[admin.tokens]]\nname = \"ops-alice\"\ntoken_sha256 = \"{}\"\n\
         [[admin.tokens]]\nname = \"bob-ro\"\ntoken_sha256 = \"{}\"\nread_only = true\n",
        hex(&sluice_admin::auth::hash_token(ALICE)),
        hex(&sluice_admin::auth::hash_token(BOB)),
    );
    let env = env_with(Opts {
        sections,
        web_extra: web_extra.into(),
        ..Opts::default()
    })
    .await;
    let addr = env
        .gw
        .as_ref()
        .unwrap()
        .admin_addr()
        .expect("admin listener");
    Admin {
        env,
        base: format!("http://{addr}"),
    }
}

impl Admin {
    fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let r = self
            .env
            .http
            .request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.req(method, path, Some(ALICE));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn audit(&self) -> Vec<Value> {
        let (s, v) = self.get("/admin/v1/audit").await;
        assert_eq!(s, 200, "{v}");
        v["data"].as_array().unwrap().clone()
    }
}

fn assert_error(status: u16, v: &Value, want_status: u16, want_type: &str) {
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["error"]["type"], want_type, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert_eq!(v.as_object().unwrap().len(), 1, "only `error`: {v}");
}

async fn wait_status(env: &Env, key: &str, want: u16) -> reqwest::Response {
    let mut last = 0;
    for _ in 0..100 {
        let r = env.post_messages(key, SMALL).send().await.unwrap();
        last = r.status().as_u16();
        if last == want {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!("gateway never answered {want} (last {last})");
}

#[tokio::test]
async fn tokens_are_required_named_and_read_only_ones_cannot_change_anything() {
    let a = admin_env("").await;
    let r = a
        .req(reqwest::Method::GET, "/admin/v1/tenants", None)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"sluice-admin\""
    );
    let s = r.status().as_u16();
    assert_error(s, &r.json().await.unwrap(), 401, "authentication_error");
    for bad in [
        "wrong",
        "admin-token-alice-012345678",
        "",
        ALICE.trim_end_matches('9'),
    ] {
        let r = a
            .req(reqwest::Method::GET, "/admin/v1/tenants", Some(bad))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        assert_error(s, &r.json().await.unwrap(), 401, "authentication_error");
    }
    // A gateway key is not an admin token.
    let r = a
        .req(
            reqwest::Method::GET,
            "/admin/v1/tenants",
            Some(&a.env.web_key),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Read-only: reads work, changes are 403 and change nothing.
    let r = a
        .req(reqwest::Method::GET, "/admin/v1/tenants", Some(BOB))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = a
        .req(reqwest::Method::POST, "/admin/v1/tenants", Some(BOB))
        .json(&json!({"name": "sneaky"}))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert_error(s, &r.json().await.unwrap(), 403, "permission_error");
    assert_eq!(a.get("/admin/v1/tenants/sneaky").await.0, 404);
    // /metrics and the document need no token.
    let r = a
        .req(reqwest::Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let r = a
        .req(reqwest::Method::GET, "/admin/openapi.json", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Unknown routes are 404 in the same shape.
    let (s, v) = a.get("/admin/v1/nope").await;
    assert_error(s, &v, 404, "not_found_error");
}

#[tokio::test]
async fn tenants_are_created_and_changed_live_and_invalid_changes_change_nothing() {
    let a = admin_env("limits = { requests_per_minute = 100 }").await;
    let (s, v) = a.get("/admin/v1/tenants").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "email", "legacy"]);
    assert_eq!(v["data"][0]["source"], "file");

    // Create a tenant and a key for it: calls work at once.
    let (s, v) = a
        .post("/admin/v1/tenants", json!({"name": "search", "description": "search team", "limits": {"requests_per_minute": 50}}))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["tenant"]["limits"]["requests_per_minute"], 50);
    assert_eq!(v["before"], Value::Null);
    let (s, v) = a
        .post("/admin/v1/keys", json!({"tenant": "search", "label": "ci"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let key = v["secret"].as_str().unwrap().to_owned();
    let r = wait_status(&a.env, &key, 200).await;
    assert_eq!(r.headers()["anthropic-ratelimit-requests-limit"], "50");
    let (s, v) = a.get("/admin/v1/tenants/search").await;
    assert_eq!((s, v["source"].as_str()), (200, Some("database")));

    // Update a file tenant: the database row overrides it; the new limit shows on replies.
    let (s, v) = a
        .call(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/web",
            Some(json!({"limits": {"requests_per_minute": 7}, "weight": 3})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["before"]["limits"]["requests_per_minute"], 100);
    let r = a
        .env
        .post_messages(&a.env.web_key, SMALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["anthropic-ratelimit-requests-limit"], "7");
    assert_eq!(
        a.get("/admin/v1/tenants/web").await.1["source"],
        "database (overrides the file)"
    );

    // Invalid: refused with 422, nothing changes.
    for bad in [
        json!({"limits": {"requests_per_minute": "lots"}}),
        json!({"priority": "urgent"}),
        json!({"budget_daily_usd": -5}),
        json!({"unknown_key": 1}),
        json!({"name": "renamed"}),
    ] {
        let (s, v) = a
            .call(
                reqwest::Method::PATCH,
                "/admin/v1/tenants/web",
                Some(bad.clone()),
            )
            .await;
        assert_error(s, &v, 422, "validation_error");
    }
    let r = a
        .env
        .post_messages(&a.env.web_key, SMALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["anthropic-ratelimit-requests-limit"], "7");
    // Malformed JSON is 400; duplicates 409; unknown 404; a file tenant cannot be deleted.
    let r = a
        .req(reqwest::Method::POST, "/admin/v1/tenants", Some(ALICE))
        .body("{nope")
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert_error(s, &r.json().await.unwrap(), 400, "invalid_request_error");
    let (s, v) = a.post("/admin/v1/tenants", json!({"name": "search"})).await;
    assert_error(s, &v, 409, "conflict_error");
    let (s, v) = a.get("/admin/v1/tenants/nobody").await;
    assert_error(s, &v, 404, "not_found_error");
    let (s, v) = a
        .call(reqwest::Method::DELETE, "/admin/v1/tenants/email", None)
        .await;
    assert_error(s, &v, 409, "conflict_error");

    // Disable, then delete: the key is refused (403), then the tenant is gone.
    let (s, _) = a
        .call(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/search",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, 200);
    wait_status(&a.env, &key, 403).await;
    let (s, v) = a
        .call(reqwest::Method::DELETE, "/admin/v1/tenants/search", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tenant"], Value::Null);
    assert_eq!(a.get("/admin/v1/tenants/search").await.0, 404);
    // Deleting web's row reverts it to the file's definition.
    let (s, v) = a
        .call(reqwest::Method::DELETE, "/admin/v1/tenants/web", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tenant"]["limits"]["requests_per_minute"], 100);

    // Every change is in the audit trail, with the actor and before/after.
    let events = a.audit().await;
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "key.create",
            "tenant.update",
            "tenant.update",
            "tenant.delete",
            "tenant.delete"
        ]
    );
    assert!(events.iter().all(|e| e["actor"] == "ops-alice"));
    assert_eq!(events[2]["target"], "web");
    assert_eq!(events[2]["before"]["limits"]["requests_per_minute"], 100);
    assert_eq!(events[2]["after"]["limits"]["requests_per_minute"], 7);
    assert_eq!(events[2]["after"]["weight"], 3);
    assert!(
        !events[1].to_string().contains(&key),
        "the secret is never audited"
    );
    assert_eq!(events[1]["prev_hash"], events[0]["hash"]);
    let (s, v) = a.get("/admin/v1/audit/verify").await;
    assert_eq!((s, &v["ok"], &v["events"]), (200, &json!(true), &json!(6)));
}

#[tokio::test]
async fn keys_are_shown_once_revoked_and_rotated_with_an_overlap() {
    let a = admin_env("").await;
    let (s, v) = a
        .post(
            "/admin/v1/keys",
            json!({"tenant": "web", "label": "rot", "expires_in_secs": 3600}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let secret = v["secret"].as_str().unwrap().to_owned();
    let id = v["key"]["id"].as_str().unwrap().to_owned();
    assert!(v["key"]["expires_ms"].as_i64().is_some());
    // Listing and getting never show the secret (or its hash).
    let (s, list) = a.get("/admin/v1/keys?tenant=web").await;
    assert_eq!(s, 200);
    assert!(!list.to_string().contains(&secret));
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["tenant"] == "web" && k.get("hash").is_none())
    );
    let (s, one) = a.get(&format!("/admin/v1/keys/{id}")).await;
    assert_eq!((s, one["status"].as_str()), (200, Some("active")));
    assert!(!one.to_string().contains(&secret));
    wait_status(&a.env, &secret, 200).await;

    // Errors: unknown tenant 422, unknown key 404, bad body 422.
    let (s, v) = a.post("/admin/v1/keys", json!({"tenant": "nobody"})).await;
    assert_error(s, &v, 422, "validation_error");
    let (s, v) = a
        .post("/admin/v1/keys/key_nope/rotate", json!({"overlap_secs": 1}))
        .await;
    assert_error(s, &v, 404, "not_found_error");
    let (s, v) = a
        .post(
            &format!("/admin/v1/keys/{id}/rotate"),
            json!({"overlap": 1}),
        )
        .await;
    assert_error(s, &v, 422, "validation_error");

    // Rotate with a 1 s overlap: both work, then the old one stops.
    let (s, v) = a
        .post(
            &format!("/admin/v1/keys/{id}/rotate"),
            json!({"overlap_secs": 1}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let new_secret = v["secret"].as_str().unwrap().to_owned();
    assert_eq!(v["key"]["tenant"], "web");
    assert_eq!(v["key"]["label"], "rot");
    let old_expiry = v["old"]["expires_ms"].as_i64().unwrap();
    assert!(old_expiry - v["key"]["created_ms"].as_i64().unwrap() <= 1000);
    wait_status(&a.env, &new_secret, 200).await;
    let r = a.env.post_messages(&secret, SMALL).send().await.unwrap();
    assert_eq!(r.status(), 200, "old key still works inside the overlap");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = a.env.post_messages(&secret, SMALL).send().await.unwrap();
    assert_eq!(r.status(), 401, "old key expired after the overlap");
    let r = a
        .env
        .post_messages(&new_secret, SMALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Revoke: 200, then 409 the second time; the key stops working.
    let new_id = v["key"]["id"].as_str().unwrap().to_owned();
    let (s, v) = a
        .post(&format!("/admin/v1/keys/{new_id}/revoke"), json!({}))
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("revoked")), "{v}");
    let (s, v) = a
        .post(&format!("/admin/v1/keys/{new_id}/revoke"), json!({}))
        .await;
    assert_error(s, &v, 409, "conflict_error");
    wait_status(&a.env, &new_secret, 401).await;

    let events = a.audit().await;
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["key.create", "key.rotate", "key.revoke"]);
    assert_eq!(events[1]["after"]["new"]["tenant"], "web");
    assert_eq!(events[2]["before"]["status"], "active");
    assert_eq!(events[2]["after"]["status"], "revoked");
    let all = serde_json::to_string(&events).unwrap();
    assert!(
        !all.contains(&secret) && !all.contains(&new_secret),
        "no secret in the audit trail (only the recognisable prefix)"
    );
}

#[tokio::test]
async fn usage_upstream_and_reload_answer() {
    let a = admin_env("").await;
    for _ in 0..3 {
        let r = a
            .env
            .post_messages(&a.env.web_key, SMALL)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut rows = Value::Null;
    for _ in 0..50 {
        let (s, v) = a
            .get("/admin/v1/usage?since=1h&group_by=tenant,model")
            .await;
        assert_eq!(s, 200, "{v}");
        rows = v["rows"].clone();
        if rows.as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rows[0]["group"], json!(["web", "claude-sonnet-4-5"]));
    assert_eq!(rows[0]["requests"], 3);
    let (s, v) = a.get("/admin/v1/usage?group_by=colour").await;
    assert_error(s, &v, 400, "invalid_request_error");
    let (s, v) = a.get("/admin/v1/usage?since=yesterday-ish").await;
    assert_error(s, &v, 400, "invalid_request_error");

    let (s, v) = a.get("/admin/v1/upstream").await;
    assert_eq!(s, 200);
    assert_eq!(v["members"][0]["name"], "anthropic");
    assert_eq!(v["members"][0]["provider"], "anthropic");
    assert_eq!(v["members"][0]["state"], "closed");
    assert!(!v.to_string().contains(common::UPSTREAM_KEY));

    // No config file (an in-process gateway): a reload re-applies the database's tenants.
    let (s, v) = a.post("/admin/v1/reload", json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["report"]["tenants"], 3);
    let r = a
        .req(reqwest::Method::POST, "/admin/v1/reload", Some(BOB))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn the_openapi_document_and_the_router_agree() {
    let a = admin_env("").await;
    let doc: Value = a
        .req(reqwest::Method::GET, "/admin/openapi.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let ops = sluice_admin::openapi::operations().unwrap();
    assert!(ops.len() >= 17, "{ops:?}");
    for (method, path) in &ops {
        let concrete = path
            .replace("{name}", "web")
            .replace("{id}", "key_doesnotexist");
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = a.req(m, &concrete, Some(BOB));
        if method != "GET" {
            r = r.json(&json!({}));
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: not routed");
        // 404 only as the route's own answer (an unknown key), never "no such route".
        assert!(
            !body.contains("no such admin route"),
            "{method} {path}: {status} {body}"
        );
    }
    // Every route the router has is documented: probe every method on every documented path,
    // and every path segment the router knows, for methods the document does not list.
    for path in [
        "/admin/v1/tenants",
        "/admin/v1/tenants/web",
        "/admin/v1/keys",
        "/admin/v1/keys/key_x",
        "/admin/v1/keys/key_x/revoke",
        "/admin/v1/keys/key_x/rotate",
        "/admin/v1/usage",
        "/admin/v1/upstream",
        "/admin/v1/reload",
        "/admin/v1/audit",
        "/admin/v1/audit/verify",
        "/metrics",
        "/admin/openapi.json",
    ] {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let resp = a
                .req(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    path,
                    Some(BOB),
                )
                .send()
                .await
                .unwrap();
            let routed =
                resp.status() != 405 && !resp.text().await.unwrap().contains("no such admin route");
            let template = path.replace("/web", "/{name}").replace("key_x", "{id}");
            let documented = ops.iter().any(|(m, p)| m == method && p == &template);
            assert_eq!(
                routed, documented,
                "{method} {path}: routed={routed} documented={documented}"
            );
        }
    }
}

#[tokio::test]
async fn audit_verify_in_the_cli_finds_an_edited_row() {
    let a = admin_env("").await;
    a.post("/admin/v1/tenants", json!({"name": "t1"})).await;
    a.call(
        reqwest::Method::PATCH,
        "/admin/v1/tenants/t1",
        Some(json!({"weight": 2})),
    )
    .await;
    a.post("/admin/v1/keys", json!({"tenant": "t1"})).await;
    let bin = env!("CARGO_BIN_EXE_sluice");
    let verify = || {
        std::process::Command::new(bin)
            .args(["audit", "verify", "--db"])
            .arg(&a.env.db)
            .output()
            .unwrap()
    };
    let out = verify();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 events"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Someone edits the actor of event 2 in SQLite.
    let c = rusqlite::Connection::open(&a.env.db).unwrap();
    c.execute("UPDATE audit SET actor = 'mallory' WHERE id = 2", [])
        .unwrap();
    let out = verify();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("event 2"), "{text}");
    let (s, v) = a.get("/admin/v1/audit/verify").await;
    assert_eq!(
        (s, &v["ok"], &v["broken"]["id"]),
        (200, &json!(false), &json!(2))
    );
    // `audit list --json` shows the chain.
    let out = std::process::Command::new(bin)
        .args(["audit", "list", "--json", "--db"])
        .arg(&a.env.db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert_eq!(v[0]["action"], "tenant.create");
}

/// Spend `key`'s tenant's small daily budget: calls until the limiter refuses one (429).
async fn spend_budget(env: &Env, key: &str) {
    for _ in 0..100 {
        let r = env.post_messages(key, SMALL).send().await.unwrap();
        match r.status().as_u16() {
            200 => {}
            429 => {
                let v: Value = r.json().await.unwrap();
                assert!(v.to_string().contains("budget"), "{v}");
                return;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    panic!("the budget never ran out: make it smaller");
}

#[tokio::test]
async fn a_tenant_re_created_after_deletion_inherits_no_key_batch_or_spend() {
    let a = admin_env("").await;
    let tenant = json!({"name": "search", "budget_daily_usd": 0.01});
    let (s, v) = a.post("/admin/v1/tenants", tenant.clone()).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = a
        .post("/admin/v1/keys", json!({"tenant": "search", "label": "ci"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let old_key = v["secret"].as_str().unwrap().to_owned();
    wait_status(&a.env, &old_key, 200).await;
    let create = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/batch_create_request.json"
    ))
    .unwrap();
    let r = a
        .env
        .http
        .post(a.env.url("/v1/messages/batches"))
        .header("x-api-key", &old_key)
        .body(create)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let batch = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let get_batch = |key: String| {
        let (http, url) = (
            a.env.http.clone(),
            a.env.url(&format!("/v1/messages/batches/{batch}")),
        );
        async move {
            let r = http.get(url).header("x-api-key", key).send().await.unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(get_batch(old_key.clone()).await, 200);
    spend_budget(&a.env, &old_key).await;

    // Delete, then create the same name again, with a key of its own.
    let (s, v) = a
        .call(reqwest::Method::DELETE, "/admin/v1/tenants/search", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = a.get("/admin/v1/keys?tenant=search").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"][0]["status"], "revoked", "{v}");
    let (s, v) = a.post("/admin/v1/tenants", tenant).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = a
        .post("/admin/v1/keys", json!({"tenant": "search", "label": "ci"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let new_key = v["secret"].as_str().unwrap().to_owned();

    // The new tenant's budget starts from zero: its first call is admitted.
    let r = wait_status(&a.env, &new_key, 200).await;
    assert_eq!(r.status(), 200);
    // The old key is refused as unknown, and stays refused.
    for _ in 0..5 {
        let r = a.env.post_messages(&old_key, SMALL).send().await.unwrap();
        assert_eq!(r.status(), 401);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The old tenant's batch does not exist for the new one.
    assert_eq!(get_batch(new_key.clone()).await, 404);
    let list: Value = a
        .env
        .http
        .get(a.env.url("/v1/messages/batches"))
        .header("x-api-key", &new_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]), "{list}");
}

#[tokio::test]
async fn usage_shows_what_the_caches_saved_as_documented() {
    let a = admin_env("").await;
    // Rows as the data plane records them, long before the gateway's own: a cache write (its
    // premium a negative saving), a read, and a response-cache hit.
    let w =
        sluice_store::LedgerWriter::start(&a.env.db, sluice_store::LedgerWriterOptions::default())
            .unwrap();
    let tx = w.sender();
    let row =
        |i: i64, outcome: &'static str, cw: u64, cr: u64, saved: i64| sluice_store::LedgerRow {
            ts_ms: 1_000 + i,
            request_id: format!("req_seed_{i}"),
            tenant: "web".into(),
            key_id: a.env.web_key_id.clone(),
            endpoint: "messages",
            model: Some("claude-sonnet-4-5".into()),
            status: 200,
            outcome,
            usage: sluice_core::Usage {
                input_tokens: 200,
                cache_creation_input_tokens: cw,
                cache_read_input_tokens: cr,
                ..sluice_core::Usage::default()
            },
            saved_micros: saved,
            ..sluice_store::LedgerRow::default()
        };
    tx.record(row(0, "ok", 3_000, 0, -2_250));
    tx.record(row(1, "ok", 0, 3_000, 8_100));
    tx.record(row(2, "cache_hit", 0, 3_000, 6_000));
    w.shutdown();

    let (s, v) = a
        .get("/admin/v1/usage?since=0&until=100000&group_by=tenant")
        .await;
    assert_eq!(s, 200, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    let r = &rows[0];
    assert_eq!(r["requests"], 3);
    assert_eq!(r["prompt_cache_saved_micros"], 5_850);
    assert_eq!(r["response_cache_saved_micros"], 6_000);
    assert_eq!(r["response_cache_hits"], 1);
    assert_eq!(
        r["prompt_cache_hit_rate"].as_f64().unwrap(),
        3_000.0 / 6_400.0
    );
    // Every key the route returns is documented, and every documented key is returned.
    let doc: Value = serde_json::from_str(sluice_admin::openapi::DOCUMENT).unwrap();
    let mut documented: Vec<&str> = doc["components"]["schemas"]["UsageRow"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut returned: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    documented.sort_unstable();
    returned.sort_unstable();
    assert_eq!(returned, documented);
    let top: Vec<&String> = doc["paths"]["/admin/v1/usage"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    for k in top {
        assert!(v.get(k).is_some(), "{k} documented, not returned: {v}");
    }
}
