//! `--admin-url`: the client through which `keys`, `tenants` and `audit` use a running
//! gateway's admin API instead of the database.

use super::Cli;
use anyhow::Context;
use serde_json::Value;

/// A client of a gateway's admin API (`--admin-url`, `--admin-token`).
pub(super) struct Remote {
    url: String,
    token: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Remote {
    pub(super) fn new(cli: &Cli) -> anyhow::Result<Self> {
        let url = cli
            .admin_url
            .clone()
            .context("--admin-url is required")?
            .trim_end_matches('/')
            .to_owned();
        let token = cli
            .admin_token
            .clone()
            .context("--admin-url needs an admin token: --admin-token or SLUICE_ADMIN_TOKEN")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Self {
            url,
            token,
            http: reqwest::Client::new(),
            rt,
        })
    }

    /// One call; an error reply becomes an error naming its type and message.
    pub(super) fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.rt.block_on(async {
            let r = req
                .send()
                .await
                .with_context(|| format!("cannot reach the admin API at {}", self.url))?;
            let status = r.status();
            let v: Value = r
                .json()
                .await
                .context("the admin API did not answer JSON")?;
            if !status.is_success() {
                anyhow::bail!(
                    "{} ({status}): {}",
                    v["error"]["type"].as_str().unwrap_or("error"),
                    v["error"]["message"].as_str().unwrap_or("")
                );
            }
            Ok(v)
        })
    }
}
