//! The real `sluice` binary: `mock`, `keys create/list/revoke`, `serve` (JSON logs, SIGTERM
//! drain and flush) and `usage`, and a sweep of everything a run produced for the upstream key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const UPSTREAM_KEY: &str = "sk-ant-BINARY-TEST-UPSTREAM-SECRET-42";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sluice(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(dir.join("sluice.toml"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for(url: &str) {
    let c = reqwest::Client::new();
    for _ in 0..200 {
        if c.get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} never answered");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "mock"),
    ignore = "runs `sluice mock`, which only the mock feature builds"
)]
async fn binary_end_to_end_never_leaks_the_upstream_key() {
    let dir = tempfile::tempdir().unwrap();
    let (mock_port, gw_port) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{gw_port}\"\n\
             [upstream]\nbase_url = \"http://127.0.0.1:{mock_port}\"\n\
             [store]\npath = {:?}\n\
             [auth]\nkey_refresh_ms = 50\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [[tenants]]\nname = \"web\"\n[[tenants]]\nname = \"email\"\n",
            dir.path().join("sluice.db").display().to_string()
        ),
    )
    .unwrap();

    // keys create: the key alone on the last line of stdout.
    let out = sluice(
        dir.path(),
        &["keys", "create", "--tenant", "web", "--label", "ci"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.lines().last().unwrap().trim().to_owned();
    assert!(
        key.starts_with("sk-sluice-") && key.len() >= 10 + 22,
        "{key}"
    );
    let out = sluice(dir.path(), &["keys", "create", "--tenant", "nobody"]);
    assert!(!out.status.success(), "unknown tenant accepted");
    let out = sluice(dir.path(), &["keys", "create", "--tenant", "email"]);
    let email_key = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();

    let mock_log = std::fs::File::create(dir.path().join("mock.log")).unwrap();
    let _mock = Kill(
        Command::new(BIN)
            .args([
                "mock",
                "--listen",
                &format!("127.0.0.1:{mock_port}"),
                "--api-key",
                UPSTREAM_KEY,
            ])
            .stdout(mock_log.try_clone().unwrap())
            .stderr(mock_log)
            .spawn()
            .unwrap(),
    );
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let mut gw = Kill(
        Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(dir.path().join("sluice.toml"))
            .env("ANTHROPIC_API_KEY", UPSTREAM_KEY)
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{gw_port}");
    wait_for(&format!("http://127.0.0.1:{mock_port}/v1/models")).await;
    wait_for(&format!("{base}/healthz")).await;

    let http = reqwest::Client::new();
    let mut seen = String::new();
    let small = r#"{"model":"claude-haiku-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    let stream = r#"{"model":"claude-haiku-4-5","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut calls = 0;
    for (k, body, extra) in [
        (&key, small, None),
        (&key, stream, None),
        (&email_key, small, Some(("x-mock-status", "529"))),
        (&key, "{broken", None),
        (&"sk-sluice-wrong".to_owned(), small, None),
        (&key, stream, Some(("x-mock-drop-after", "2"))),
    ] {
        let mut req = http
            .post(format!("{base}/v1/messages"))
            .header("x-api-key", k)
            .header("anthropic-version", "2023-06-01")
            .header("x-sluice-feature", "e2e")
            .body(body);
        if let Some((h, v)) = extra {
            req = req.header(h, v);
        }
        let r = req.send().await.unwrap();
        seen.push_str(&format!("{:?}", r.headers()));
        seen.push_str(&r.text().await.unwrap_or_default());
        if k != "sk-sluice-wrong" {
            calls += 1;
        }
    }
    // In flight at SIGTERM: must finish, and be on the ledger.
    let slow = http
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", &key)
        .header("x-mock-latency-ms", "400")
        .body(small)
        .send();
    let slow = tokio::spawn(slow);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = gw.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || gw.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "gateway exit {status:?}");
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), 200, "in-flight call cut by shutdown");
    calls += 1;

    // Usage totals come from the ledger and count every authenticated call.
    let out = sluice(
        dir.path(),
        &["usage", "--json", "--since", "1h", "--by", "tenant"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let usage: Value = serde_json::from_slice(&out.stdout).unwrap();
    let total: i64 = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_i64().unwrap())
        .sum();
    assert_eq!(total, calls);
    let table = sluice(dir.path(), &["usage", "--since", "1h"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("TOTAL"));
    let list = sluice(dir.path(), &["keys", "list"]);
    let list_out = String::from_utf8(list.stdout).unwrap();
    assert!(
        list_out.contains("web") && !list_out.contains(&key),
        "keys list shows a key"
    );

    // The JSON log has one line per call with the fields operators rely on.
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap();
    let call_lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "sluice::call")
        .collect();
    assert_eq!(call_lines.len() as i64, calls, "{log}");
    for f in [
        "request_id",
        "tenant",
        "feature",
        "model",
        "latency_ms",
        "input_tokens",
        "output_tokens",
        "status",
        "outcome",
    ] {
        assert!(
            call_lines[0].get(f).is_some(),
            "log line lacks {f}: {}",
            call_lines[0]
        );
    }
    assert!(
        !log.contains("\"hi\""),
        "prompt text logged for a tenant that did not ask"
    );

    // Nothing anywhere carries the upstream key: logs, responses, the database and its WAL,
    // and the CLI's output.
    let mut haystack = seen + &log + &list_out + &String::from_utf8_lossy(&out.stdout);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap() != "sluice.toml" && p.file_name().unwrap() != "mock.log" {
            haystack.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    assert!(!haystack.contains(UPSTREAM_KEY), "the upstream key leaked");
    assert!(
        !haystack.contains(&key[10..]),
        "a gateway key was stored or logged"
    );

    // Revocation through the CLI.
    let keys_json: Value =
        serde_json::from_slice(&sluice(dir.path(), &["keys", "list", "--json"]).stdout).unwrap();
    let id = keys_json[0]["id"].as_str().unwrap().to_owned();
    assert!(
        sluice(dir.path(), &["keys", "revoke", &id])
            .status
            .success()
    );
    let again: Value =
        serde_json::from_slice(&sluice(dir.path(), &["keys", "list", "--json"]).stdout).unwrap();
    assert!(again[0]["revoked_ms"].is_i64());
}

/// Three secrets in a config (the upstream key, a Redis password, a Postgres password), and a
/// syntax error on the key's line: whatever the gateway prints (start-up failures, logs while
/// Redis refuses the password, the reload API's 422, the CLI), none of them appears.
#[tokio::test]
async fn secrets_in_the_config_never_reach_logs_errors_or_replies() {
    const KEY: &str = "sk-ant-LEAKTEST-upstream-3f9a1c";
    const REDIS_PW: &str = "redisPW-LEAKTEST-77b2";
    const PG_PW: &str = "pgPW-LEAKTEST-55e8";
    const ADMIN: &str = "admin-token-for-the-leak-test";
    let dir = tempfile::tempdir().unwrap();
    let (gw_port, admin_port) = (free_port(), free_port());
    let mock = sluice_mock::spawn(
        "127.0.0.1:0".parse().unwrap(),
        sluice_mock::MockOptions::default(),
    )
    .await
    .unwrap();
    let conf = |key_line: &str, store_extra: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{gw_port}\"\n\
             [upstream]\nbase_url = \"{}\"\n{key_line}\n\
             [limits]\nbackend = \"redis\"\nredis_url = \"redis://:{REDIS_PW}@127.0.0.1:6379\"\n\
             redis_timeout_ms = 100\n\
             [store]\npath = {:?}\n{store_extra}\n\
             [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
             [[admin.tokens]]\nname = \"ops\"\ntoken_env = \"SLUICE_LEAK_ADMIN\"\n\
             [[tenants]]\nname = \"web\"\n",
            mock.url(),
            dir.path().join("sluice.db").display().to_string()
        )
    };
    let good_key = format!("api_key = \"{KEY}\"");
    // The closing quote is missing: the parser's own message would quote this line.
    let broken_key = format!("api_key = \"{KEY}");
    let pg = format!(
        "database_url = \"postgres://postgres:{PG_PW}@127.0.0.1:5432/sluice_leaktest_no_such_db\""
    );
    let path = dir.path().join("sluice.toml");
    let mut seen = String::new();
    let mut run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .env("SLUICE_LEAK_ADMIN", ADMIN)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        seen.push_str(&text);
        (out.status.success(), text)
    };
    // 1. A syntax error on the key's line: serve and the CLI refuse it, naming the line.
    std::fs::write(&path, conf(&broken_key, &pg)).unwrap();
    let (ok, text) = run(&["serve"]);
    assert!(!ok);
    assert!(text.contains("line "), "{text}");
    let (ok, _) = run(&["tenants", "list"]);
    assert!(!ok);
    // 2. Valid, but the Postgres database does not exist: serve fails at start.
    std::fs::write(&path, conf(&good_key, &pg)).unwrap();
    let (ok, text) = run(&["serve"]);
    assert!(!ok, "{text}");
    let (_, _) = run(&["keys", "list"]);
    // 3. Valid on SQLite; Redis refuses the password, so the limiter logs its outages.
    std::fs::write(&path, conf(&good_key, "")).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .env("SLUICE_LEAK_ADMIN", ADMIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    wait_for(&format!("http://127.0.0.1:{gw_port}/healthz")).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://127.0.0.1:{gw_port}/v1/messages"))
        .header("x-api-key", "sk-sluice-not-a-key")
        .body("{}")
        .send()
        .await
        .unwrap();
    seen.push_str(&r.text().await.unwrap());
    let admin = format!("http://127.0.0.1:{admin_port}");
    for p in ["/admin/v1/upstream", "/admin/openapi.json"] {
        let r = http
            .get(format!("{admin}{p}"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        seen.push_str(&r.text().await.unwrap());
    }
    // The broken file again, reloaded through the API: refused with a 422.
    std::fs::write(&path, conf(&broken_key, "")).unwrap();
    let r = http
        .post(format!("{admin}/admin/v1/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(body.contains("line "), "{body}");
    seen.push_str(&body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    seen.push_str(&String::from_utf8_lossy(&out.stdout));
    seen.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(
        seen.contains("redis"),
        "the Redis outage was not logged: {seen}"
    );
    for secret in [KEY, REDIS_PW, PG_PW, ADMIN] {
        assert!(!seen.contains(secret), "{secret} leaked:\n{seen}");
    }
}
