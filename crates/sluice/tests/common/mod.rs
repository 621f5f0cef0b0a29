//! Test harness: a fake upstream and a gateway in this process, on loopback ports, with a fresh
//! state database, three tenants (`web`, `email`, disabled `legacy`) and a key for each.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod pg;

use sluice::gateway::{self, Running};
use sluice_config::Config;
use sluice_mock::{MockHandle, MockOptions};
use sluice_store::Store;
use std::path::PathBuf;

/// The upstream key the gateway holds. Tests assert it never leaks.
pub const UPSTREAM_KEY: &str = "sk-ant-UPSTREAM-SECRET-never-leak-0123456789";

pub struct Env {
    pub mock: MockHandle,
    pub gw: Option<Running>,
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub base: String,
    pub web_key: String,
    pub web_key_id: String,
    pub email_key: String,
    pub legacy_key: String,
    pub http: reqwest::Client,
}

pub struct Opts {
    /// Lines added to `[server]`.
    pub extra_config: String,
    /// Lines added to `[upstream]`.
    pub upstream_extra: String,
    pub upstream_override: Option<String>,
    pub mock: MockOptions,
    /// Whole top-level tables (`[limits]`, `[org]`, `[[prices]]`) placed before the tenants.
    pub sections: String,
    /// Lines added to the `web` tenant.
    pub web_extra: String,
    /// Lines added to the `email` tenant.
    pub email_extra: String,
    /// Lines added to `[store]` (e.g. `database_url`).
    pub store_extra: String,
    /// Create the test keys in this Postgres state store instead of the SQLite database (set it
    /// to the `database_url` given in `store_extra`).
    pub state_url: Option<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            extra_config: String::new(),
            upstream_extra: String::new(),
            upstream_override: None,
            mock: MockOptions {
                api_key: Some(UPSTREAM_KEY.into()),
                record: true,
                ..MockOptions::default()
            },
            sections: String::new(),
            web_extra: String::new(),
            email_extra: String::new(),
            store_extra: String::new(),
            state_url: None,
        }
    }
}

pub async fn env() -> Env {
    env_with(Opts::default()).await
}

pub async fn env_with(opts: Opts) -> Env {
    let mock = sluice_mock::spawn("127.0.0.1:0".parse().unwrap(), opts.mock)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sluice.db");
    // Members on other providers point at the mock too; Vertex ones need a service-account
    // file whose token endpoint is the mock's.
    let mut upstream_extra = opts.upstream_extra.replace("{MOCK}", &mock.url());
    if upstream_extra.contains("{VERTEX_SA}") {
        let mut sa: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sluice_mock::VERTEX_SA_FIXTURE).unwrap())
                .unwrap();
        sa["token_uri"] = format!("{}/token", mock.url()).into();
        let file = dir.path().join("vertex-sa.json");
        std::fs::write(&file, sa.to_string()).unwrap();
        upstream_extra = upstream_extra.replace("{VERTEX_SA}", &file.display().to_string());
    }
    let upstream = opts
        .upstream_override
        .unwrap_or_else(|| format!("http://{}", mock.addr));
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
{grace}{extra}
[upstream]
base_url = "{upstream}"
{upstream_extra}
[store]
path = {db:?}
ledger_flush_interval_ms = 10
{store_extra}
[auth]
key_refresh_ms = 50
{admin}{sections}
[[tenants]]
name = "web"
{web_extra}
[[tenants]]
name = "email"
log_bodies = true
{email_extra}
[[tenants]]
name = "legacy"
enabled = false
"#,
        // A test may set its own grace.
        grace = if opts.extra_config.contains("shutdown_grace_secs") {
            ""
        } else {
            "shutdown_grace_secs = 5\n"
        },
        extra = opts.extra_config,
        upstream_extra = upstream_extra,
        // Every gateway of a test run gets its own admin port (unless the test sets its own).
        admin = if opts.sections.contains("[admin]") {
            ""
        } else {
            "[admin]\nlisten = \"127.0.0.1:0\"\n"
        },
        sections = opts.sections,
        web_extra = opts.web_extra,
        email_extra = opts.email_extra,
        store_extra = opts.store_extra,
        db = db.display().to_string(),
    );
    let cfg = Config::from_toml(&toml).unwrap();
    let (web, email, legacy) = {
        let (db, url) = (db.clone(), opts.state_url.clone());
        // Blocking: the Postgres client must not run on a runtime worker.
        tokio::task::spawn_blocking(move || {
            let store = match url {
                Some(url) => Store::open_postgres(&url).unwrap(),
                None => Store::open(&db).unwrap(),
            };
            (
                store.create_key("web", "test", None, 0).unwrap(),
                store.create_key("email", "test", None, 0).unwrap(),
                store.create_key("legacy", "test", None, 0).unwrap(),
            )
        })
        .await
        .unwrap()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = gateway::start(cfg, sluice_core::SecretString::new(UPSTREAM_KEY), listener)
        .await
        .unwrap();
    let base = format!("http://{}", gw.addr());
    let http = reqwest::Client::builder().build().unwrap();
    // Wait until the gateway answers.
    for _ in 0..100 {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Env {
        mock,
        gw: Some(gw),
        dir,
        db,
        base,
        web_key: web.secret,
        web_key_id: web.record.id,
        email_key: email.secret,
        legacy_key: legacy.secret,
        http,
    }
}

/// A ledger row as read back.
#[derive(Debug, Clone)]
pub struct Row {
    pub request_id: String,
    pub tenant: String,
    pub key_id: String,
    pub feature: Option<String>,
    pub endpoint: String,
    pub model: Option<String>,
    pub model_served: Option<String>,
    pub streamed: bool,
    pub status: i64,
    pub outcome: String,
    pub error_type: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub stop_reason: Option<String>,
    pub cost_micros: Option<i64>,
    pub waited_ms: i64,
    pub retries: i64,
    pub usage_estimated: bool,
}

impl Env {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A messages call as the SDK makes it.
    pub fn post_messages(&self, key: &str, body: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.url("/v1/messages"))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(body.to_owned())
    }

    /// Stop the gateway (flushing the ledger) and read every ledger row.
    pub async fn finish(&mut self) -> Vec<Row> {
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await.unwrap();
        }
        self.rows()
    }

    pub fn rows(&self) -> Vec<Row> {
        let c = rusqlite::Connection::open(&self.db).unwrap();
        let mut s = c
            .prepare(
                "SELECT request_id, tenant, key_id, feature, endpoint, model, model_served, streamed,
                 status, outcome, error_type, input_tokens, output_tokens,
                 cache_creation_input_tokens, cache_read_input_tokens, stop_reason, cost_micros,
                 waited_ms, retries, usage_estimated
                 FROM ledger ORDER BY id",
            )
            .unwrap();
        s.query_map([], |r| {
            Ok(Row {
                request_id: r.get(0)?,
                tenant: r.get(1)?,
                key_id: r.get(2)?,
                feature: r.get(3)?,
                endpoint: r.get(4)?,
                model: r.get(5)?,
                model_served: r.get(6)?,
                streamed: r.get(7)?,
                status: r.get(8)?,
                outcome: r.get(9)?,
                error_type: r.get(10)?,
                input_tokens: r.get(11)?,
                output_tokens: r.get(12)?,
                cache_creation_input_tokens: r.get(13)?,
                cache_read_input_tokens: r.get(14)?,
                stop_reason: r.get(15)?,
                cost_micros: r.get(16)?,
                waited_ms: r.get(17)?,
                retries: r.get(18)?,
                usage_estimated: r.get(19)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// Requests the fake upstream received.
    pub async fn upstream_requests(&self) -> Vec<serde_json::Value> {
        serde_json::from_value(self.mock_json("/_mock/requests").await).unwrap()
    }

    /// The fake upstream's counters.
    pub async fn mock_stats(&self) -> serde_json::Value {
        self.mock_json("/_mock/stats").await
    }

    async fn mock_json(&self, path: &str) -> serde_json::Value {
        let url = format!("http://{}{path}", self.mock.addr);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

pub const SMALL: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hello"}]}"#;

pub fn stream_body(max_tokens: u32) -> String {
    format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":{max_tokens},"stream":true,"messages":[{{"role":"user","content":"Tell me a story"}}]}}"#
    )
}

/// Parse an SSE body into (event, data JSON) pairs.
pub fn sse_events(body: &str) -> Vec<(String, serde_json::Value)> {
    body.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut ev = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    ev = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            (
                ev,
                serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
            )
        })
        .collect()
}
