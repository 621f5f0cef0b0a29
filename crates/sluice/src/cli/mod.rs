//! The command line: `serve`, `demo`, `mock`, `keys …`, `tenants …`, `audit …` and `usage`.
//!
//! `keys`, `tenants` and `audit` work on the state database directly (the default: on the
//! gateway's host, or while it is down; changes are audited as `cli:USER` and reach a running
//! gateway through the generation counters it polls), or, with `--admin-url`, through a
//! running gateway's admin API (from anywhere that can reach it; audited as the token's name).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use sluice_config::Config;
use sluice_store::{GroupBy, NewEvent, Store, UsageQuery};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Sluice: a drop-in gateway in front of the Claude API.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// Config file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "sluice.toml",
        env = "SLUICE_CONFIG"
    )]
    pub config: PathBuf,
    /// State database (overrides `store.path` from the config).
    #[arg(long, global = true, env = "SLUICE_DB")]
    pub db: Option<PathBuf>,
    /// `keys`, `tenants`, `audit`: use this gateway's admin API instead of the database.
    #[arg(long, global = true, env = "SLUICE_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// The admin token for `--admin-url`.
    #[arg(
        long,
        global = true,
        env = "SLUICE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (production).
    Serve(ServeArgs),
    /// Start a fake upstream and the gateway with a demo tenant, and print a key to try it.
    Demo(DemoArgs),
    /// Run the Anthropic-compatible fake upstream (for tests, demos and benchmarks).
    Mock(MockArgs),
    /// Manage gateway keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Usage totals from the ledger.
    Usage(UsageArgs),
    /// Reports over the ledger (`capacity`).
    #[command(subcommand)]
    Report(ReportCommand),
    /// Manage tenants kept in the state database (overlaid on the config file's).
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `sluice tenants …`.
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// List the effective tenants (file + database).
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant as JSON.
    Show {
        /// Tenant name.
        name: String,
    },
    /// Create a tenant in the state database.
    Create {
        /// Tenant name.
        name: String,
        /// Settings as `KEY=VALUE` (`[[tenants]]` keys; dotted for nested ones, e.g.
        /// `limits.requests_per_minute=100`, `priority=batch`); VALUE is JSON, else a string.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Change a tenant (a file tenant gets a database row overriding it).
    Update {
        /// Tenant name.
        name: String,
        /// As for `create`; `KEY=null` resets a key to its default.
        #[arg(long = "set", value_name = "KEY=VALUE", required = true)]
        set: Vec<String>,
    },
    /// Disable a tenant (its keys get 403; `update NAME --set enabled=true` restores it).
    Disable {
        /// Tenant name.
        name: String,
    },
    /// Delete a tenant's database row (a file tenant reverts to the file's definition).
    Delete {
        /// Tenant name.
        name: String,
    },
}

/// `sluice audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Show events, oldest first.
    List {
        /// Only events since: a duration ago (`24h`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Recompute the hash chain; exits non-zero naming the first broken event.
    Verify,
}

/// `sluice serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address (overrides `server.listen`).
    #[arg(long)]
    pub listen: Option<String>,
}

/// `sluice demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Gateway listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Fake upstream listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub mock_listen: String,
    /// Demo database.
    #[arg(long, default_value = "./sluice-demo.db")]
    pub demo_db: PathBuf,
}

/// `sluice mock`.
#[derive(Debug, Args)]
pub struct MockArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: String,
    /// Delay before response headers.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Delay between SSE events.
    #[arg(long, default_value_t = 0)]
    pub event_interval_ms: u64,
    /// Do not send `anthropic-ratelimit-*` headers.
    #[arg(long)]
    pub no_ratelimit_headers: bool,
    /// Require this `x-api-key`.
    #[arg(long, env = "SLUICE_MOCK_API_KEY")]
    pub api_key: Option<String>,
    /// Keep recent requests for `GET /_mock/requests`.
    #[arg(long)]
    pub record: bool,
    /// Fixed output token count.
    #[arg(long)]
    pub output_tokens: Option<u64>,
}

/// `sluice keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a tenant; the key is printed once, alone on the last line of stdout.
    Create {
        /// Tenant (must be declared in the config).
        #[arg(long)]
        tenant: String,
        /// Free-text label (who or what uses the key).
        #[arg(long, default_value = "")]
        label: String,
        /// Expire the key after this long (e.g. `90d`, `12h`).
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
    },
    /// List keys (never the keys themselves).
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id; a running gateway refuses it within `auth.key_refresh_ms`.
    Revoke {
        /// Key id (`key_…`).
        id: String,
    },
    /// A new key for the same tenant; the old one keeps working for `--overlap`, then expires.
    Rotate {
        /// Key id (`key_…`).
        id: String,
        /// How long the old key keeps working (e.g. `1h`, `7d`).
        #[arg(long, default_value = "1h")]
        overlap: humantime::Duration,
    },
}

/// `sluice usage`.
#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    /// Start: a duration ago (`24h`, `7d`) or an RFC 3339 time.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// End: a duration ago or an RFC 3339 time (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Group by any of tenant, feature, model, key, day, hour (comma-separated; days and hours
    /// are UTC).
    #[arg(long, default_value = "tenant,feature,model", value_delimiter = ',')]
    pub by: Vec<String>,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Output: `table`, `csv` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Same as `--format json`.
    #[arg(long)]
    pub json: bool,
}

/// `sluice report …`.
#[derive(Debug, Clone, Subcommand)]
pub enum ReportCommand {
    /// Per model class: sustained and peak per-minute traffic, 429s by reason, prompt-cache hit
    /// rate and savings, and the upstream tier the measured p95 traffic needs.
    Capacity(CapacityArgs),
}

/// `sluice report capacity`.
#[derive(Debug, Clone, Args)]
pub struct CapacityArgs {
    /// Start: a duration ago (`7d`) or an RFC 3339 time.
    #[arg(long, default_value = "7d")]
    pub since: String,
    /// End: a duration ago or an RFC 3339 time (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Output: `table`, `csv` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

/// Load the config; a missing default config file means "all defaults".
pub fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let explicit = cli.config != Path::new("sluice.toml");
    let mut cfg = if cli.config.exists() || explicit {
        Config::load(&cli.config)?
    } else {
        Config::default()
    };
    if let Some(db) = &cli.db {
        cfg.store.path = db.display().to_string();
    }
    Ok(cfg)
}

/// Now, in Unix ms.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn fmt_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parse `24h` (ago) or an RFC 3339 time into Unix ms.
pub fn parse_when(s: &str, now: i64) -> anyhow::Result<i64> {
    if let Ok(d) = humantime::parse_duration(s) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        return Ok(now.saturating_sub(ms));
    }
    let t = humantime::parse_rfc3339_weak(s)
        .with_context(|| format!("{s:?} is neither a duration (24h) nor an RFC 3339 time"))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0))
}

/// `sluice keys …`.
pub fn keys(cli: &Cli, cmd: &KeysCommand) -> anyhow::Result<()> {
    if cli.admin_url.is_some() {
        return keys_remote(cli, cmd);
    }
    let cfg = load_config(cli)?;
    let store = open_state(&cfg)?;
    let actor = cli_actor();
    let audit = |action: &str, target: &str, before: Option<Value>, after: Option<Value>| {
        store.append_audit(&NewEvent {
            ts_ms: now_ms(),
            actor: actor.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            before: before.map(|v| v.to_string()),
            after: after.map(|v| v.to_string()),
        })
    };
    match cmd {
        KeysCommand::Create {
            tenant,
            label,
            expires_in,
        } => {
            let (effective, _) = sluice_admin::reload::startup_config(&store, &cfg)?;
            if effective.tenant(tenant).is_none() {
                anyhow::bail!(
                    "tenant {tenant:?} is neither declared in {} nor created with `sluice tenants create`",
                    cli.config.display()
                );
            }
            let now = now_ms();
            let expires = expires_in
                .map(|d| now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
            let k = store.create_key(tenant, label, expires, now)?;
            audit(
                "key.create",
                &k.record.id,
                None,
                Some(key_json(&k.record, now)),
            )?;
            println!("Created key {} for tenant {tenant}.", k.record.id);
            println!("It is shown once; store it now:");
            println!("{}", k.secret);
        }
        KeysCommand::Rotate { id, overlap } => {
            let now = now_ms();
            let before = store.get_key(id)?;
            if before.revoked_ms.is_some() || before.expires_ms.is_some_and(|e| e <= now) {
                anyhow::bail!("key {id} is revoked or expired; create a new key instead");
            }
            let ms = i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX);
            let (old, new) = store.rotate_key(id, ms, now)?;
            audit(
                "key.rotate",
                id,
                Some(key_json(&before, now)),
                Some(
                    serde_json::json!({"old": key_json(&old, now), "new": key_json(&new.record, now)}),
                ),
            )?;
            println!(
                "Rotated key {id}: it keeps working until {}.",
                old.expires_ms.map(fmt_ms).unwrap_or_default()
            );
            println!(
                "New key {} for tenant {}, shown once; store it now:",
                new.record.id, new.record.tenant
            );
            println!("{}", new.secret);
        }
        KeysCommand::List { json } => {
            let keys = store.list_keys()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<18} {:<16} {:<16} {:<21} {:<21} {:<8} LABEL",
                    "ID", "TENANT", "PREFIX", "CREATED", "EXPIRES", "STATUS"
                );
                let now = now_ms();
                for k in keys {
                    let status = if k.revoked_ms.is_some() {
                        "revoked"
                    } else if k.expires_ms.is_some_and(|e| e <= now) {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<18} {:<16} {:<16} {:<21} {:<21} {:<8} {}",
                        k.id,
                        k.tenant,
                        format!("{}…", k.prefix),
                        fmt_ms(k.created_ms),
                        k.expires_ms.map(fmt_ms).unwrap_or_else(|| "-".into()),
                        status,
                        k.label
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            let now = now_ms();
            let before = store.get_key(id)?;
            let k = store.revoke_key(id, now)?;
            if before.revoked_ms.is_none() {
                audit(
                    "key.revoke",
                    id,
                    Some(key_json(&before, now)),
                    Some(key_json(&k, now)),
                )?;
            }
            println!("Revoked key {} of tenant {}.", k.id, k.tenant);
        }
    }
    Ok(())
}

/// Who the CLI's direct changes are audited as: `cli:` and the OS user.
fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// A key's record as the admin API shows it.
fn key_json(k: &sluice_store::KeyRecord, now: i64) -> Value {
    sluice_admin::api::key_json(k, now)
}

/// A client of a gateway's admin API (`--admin-url`, `--admin-token`).
struct Remote {
    url: String,
    token: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Remote {
    fn new(cli: &Cli) -> anyhow::Result<Self> {
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
    fn call(
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

fn keys_remote(cli: &Cli, cmd: &KeysCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let r = Remote::new(cli)?;
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    match cmd {
        KeysCommand::Create {
            tenant,
            label,
            expires_in,
        } => {
            let mut body = serde_json::json!({"tenant": tenant, "label": label});
            if let Some(d) = expires_in {
                body["expires_in_secs"] = d.as_secs().into();
            }
            let v = r.call(Method::POST, "/admin/v1/keys", Some(body))?;
            println!("Created key {} for tenant {tenant}.", s(&v["key"]["id"]));
            println!("It is shown once; store it now:");
            println!("{}", s(&v["secret"]));
        }
        KeysCommand::List { json } => {
            let v = r.call(Method::GET, "/admin/v1/keys", None)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v["data"])?);
            } else {
                for k in v["data"].as_array().into_iter().flatten() {
                    println!(
                        "{:<18} {:<16} {:<16} {:<8} {}",
                        s(&k["id"]),
                        s(&k["tenant"]),
                        format!("{}…", s(&k["prefix"])),
                        s(&k["status"]),
                        s(&k["label"])
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            let body = Some(serde_json::json!({}));
            let v = r.call(Method::POST, &format!("/admin/v1/keys/{id}/revoke"), body)?;
            println!("Revoked key {id} of tenant {}.", s(&v["tenant"]));
        }
        KeysCommand::Rotate { id, overlap } => {
            let body = Some(serde_json::json!({"overlap_secs": overlap.as_secs()}));
            let v = r.call(Method::POST, &format!("/admin/v1/keys/{id}/rotate"), body)?;
            println!(
                "Rotated key {id}: it keeps working until {}.",
                v["old"]["expires_ms"]
                    .as_i64()
                    .map(fmt_ms)
                    .unwrap_or_default()
            );
            println!("New key {}, shown once; store it now:", s(&v["key"]["id"]));
            println!("{}", s(&v["secret"]));
        }
    }
    Ok(())
}

/// `--set KEY=VALUE` pairs as a JSON merge patch (dotted keys nest; VALUE is JSON, else a
/// string).
pub fn settings_patch(set: &[String]) -> anyhow::Result<Value> {
    let mut patch = Value::Object(serde_json::Map::new());
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv:?}: use KEY=VALUE"))?;
        let mut leaf = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        for part in k.split('.').rev() {
            let mut m = serde_json::Map::new();
            m.insert(part.to_owned(), leaf);
            leaf = Value::Object(m);
        }
        merge_set(&mut patch, leaf);
    }
    Ok(patch)
}

/// Merge `--set` pieces; unlike a merge patch, a `null` is kept (it resets the key).
fn merge_set(into: &mut Value, piece: Value) {
    match (into, piece) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_set(existing, v)
                    }
                    _ => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, piece) => *slot = piece,
    }
}

/// `sluice tenants …`.
pub fn tenants(cli: &Cli, cmd: &TenantsCommand) -> anyhow::Result<()> {
    use sluice_admin::tenants::{self as t, Change};
    let change = match cmd {
        TenantsCommand::List { .. } | TenantsCommand::Show { .. } => None,
        TenantsCommand::Create { name, set } => {
            let mut v = settings_patch(set)?;
            v["name"] = Value::String(name.clone());
            Some(Change::Create(v))
        }
        TenantsCommand::Update { name, set } => {
            Some(Change::Update(name.clone(), settings_patch(set)?))
        }
        TenantsCommand::Disable { name } => Some(Change::Update(
            name.clone(),
            serde_json::json!({"enabled": false}),
        )),
        TenantsCommand::Delete { name } => Some(Change::Delete(name.clone())),
    };
    if cli.admin_url.is_some() {
        use reqwest::Method;
        let r = Remote::new(cli)?;
        let v = match (&change, cmd) {
            (Some(Change::Create(v)), _) => {
                r.call(Method::POST, "/admin/v1/tenants", Some(v.clone()))?
            }
            (Some(Change::Update(n, v)), _) => r.call(
                Method::PATCH,
                &format!("/admin/v1/tenants/{n}"),
                Some(v.clone()),
            )?,
            (Some(Change::Delete(n)), _) => {
                r.call(Method::DELETE, &format!("/admin/v1/tenants/{n}"), None)?
            }
            (None, TenantsCommand::Show { name }) => {
                r.call(Method::GET, &format!("/admin/v1/tenants/{name}"), None)?
            }
            (None, _) => r.call(Method::GET, "/admin/v1/tenants", None)?,
        };
        return print_tenants(cmd, &v);
    }
    let file = load_config(cli)?;
    let store = open_state(&file)?;
    let rows = store.tenant_rows()?;
    let v = match &change {
        Some(c) => {
            let planned = t::plan(&file, &rows, c)?;
            t::commit(&store, &planned, &cli_actor(), now_ms())?;
            serde_json::json!({"tenant": planned.after, "before": planned.before})
        }
        None => {
            let cfg = t::overlay(&file, &rows)?;
            let data: Vec<Value> = cfg
                .tenants
                .iter()
                .map(|x| {
                    let mut j = t::tenant_json(x);
                    j["source"] = t::source(&file, &rows, &x.name).into();
                    j
                })
                .collect();
            match cmd {
                TenantsCommand::Show { name } => data
                    .into_iter()
                    .find(|j| j["name"] == name.as_str())
                    .with_context(|| format!("tenant {name:?} not found"))?,
                _ => serde_json::json!({ "data": data }),
            }
        }
    };
    print_tenants(cmd, &v)
}

fn print_tenants(cmd: &TenantsCommand, v: &Value) -> anyhow::Result<()> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    match cmd {
        TenantsCommand::List { json: false } => {
            println!(
                "{:<24} {:<8} {:<9} {:<7} {:<30} DESCRIPTION",
                "NAME", "ENABLED", "PRIORITY", "WEIGHT", "SOURCE"
            );
            for t in v["data"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<8} {:<9} {:<7} {:<30} {}",
                    s(&t["name"]),
                    t["enabled"].to_string(),
                    s(&t["priority"]),
                    t["weight"].to_string(),
                    s(&t["source"]),
                    s(&t["description"])
                );
            }
        }
        TenantsCommand::List { json: true } => {
            println!("{}", serde_json::to_string_pretty(&v["data"])?)
        }
        TenantsCommand::Show { .. } => println!("{}", serde_json::to_string_pretty(v)?),
        _ => {
            println!("{}", serde_json::to_string_pretty(&v["tenant"])?);
            eprintln!("Done. A running gateway applies it within auth.key_refresh_ms.");
        }
    }
    Ok(())
}

/// `sluice audit …`.
pub fn audit(cli: &Cli, cmd: &AuditCommand) -> anyhow::Result<()> {
    let (events, verification): (Vec<Value>, Option<Value>) = if cli.admin_url.is_some() {
        let r = Remote::new(cli)?;
        match cmd {
            AuditCommand::List { since, .. } => {
                let q = since
                    .as_ref()
                    .map(|s| format!("?since={s}"))
                    .unwrap_or_default();
                let v = r.call(reqwest::Method::GET, &format!("/admin/v1/audit{q}"), None)?;
                (v["data"].as_array().cloned().unwrap_or_default(), None)
            }
            AuditCommand::Verify => {
                let v = r.call(reqwest::Method::GET, "/admin/v1/audit/verify", None)?;
                (Vec::new(), Some(v))
            }
        }
    } else {
        let cfg = load_config(cli)?;
        let store = open_state(&cfg)?;
        match cmd {
            AuditCommand::List { since, .. } => {
                let since = since
                    .as_deref()
                    .map(|s| parse_when(s, now_ms()))
                    .transpose()?;
                let ev = store.audit_events(since, usize::MAX)?;
                (ev.iter().map(sluice_admin::api::event_json).collect(), None)
            }
            AuditCommand::Verify => {
                let v = store.verify_audit()?;
                let out = serde_json::json!({
                    "ok": v.broken.is_none(), "events": v.events, "head": v.head, "broken": v.broken,
                });
                (Vec::new(), Some(out))
            }
        }
    };
    if let Some(v) = verification {
        if v["ok"] == Value::Bool(true) {
            println!(
                "audit chain OK: {} events, head {}",
                v["events"],
                v["head"].as_str().unwrap_or("")
            );
            return Ok(());
        }
        anyhow::bail!(
            "audit chain BROKEN at event {}: {} ({} events verify before it)",
            v["broken"]["id"],
            v["broken"]["reason"].as_str().unwrap_or(""),
            v["events"]
        );
    }
    if matches!(cmd, AuditCommand::List { json: true, .. }) {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    for e in &events {
        println!(
            "{:>6} {} {:<20} {:<16} {}",
            e["id"].to_string(),
            e["ts_ms"].as_i64().map(fmt_ms).unwrap_or_default(),
            e["actor"].as_str().unwrap_or(""),
            e["action"].as_str().unwrap_or(""),
            e["target"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `sluice usage`.
pub fn usage(cli: &Cli, args: &UsageArgs) -> anyhow::Result<()> {
    let cfg = load_config(cli)?;
    print!("{}", usage_report(&cfg, args, now_ms())?);
    Ok(())
}

/// The state store of `cfg`: PostgreSQL when `store.database_url` is set (shared with the
/// running replicas), else the SQLite database at `store.path`.
fn open_state(cfg: &Config) -> anyhow::Result<Store> {
    match cfg.store.database_url() {
        Some(url) => Store::open_postgres(url)
            .context("cannot open the state store in PostgreSQL (store.database_url)"),
        None => Store::open(&cfg.store.path)
            .with_context(|| format!("cannot open the state database {}", cfg.store.path)),
    }
}

/// The ledger of `cfg`: Postgres when `store.database_url` is set, else the state database.
fn open_ledger(cfg: &Config) -> anyhow::Result<sluice_store::LedgerDb> {
    if let Some(url) = cfg.store.database_url() {
        // No SQLite file is needed (nor created) when everything is in Postgres.
        return sluice_store::LedgerDb::postgres(url)
            .context("cannot open the Postgres ledger (store.database_url)");
    }
    let store = Store::open(&cfg.store.path)
        .with_context(|| format!("cannot open the state database {}", cfg.store.path))?;
    Ok(sluice_store::LedgerDb::open(&store, None)?)
}

fn time_range(since: &str, until: Option<&str>, now: i64) -> anyhow::Result<(i64, i64)> {
    let since = parse_when(since, now)?;
    let until = match until {
        Some(u) => parse_when(u, now)?,
        None => now.saturating_add(1),
    };
    Ok((since, until))
}

/// Output of `sluice usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Csv,
    Json,
}

fn format_of(format: &str, json: bool) -> anyhow::Result<Format> {
    if json {
        return Ok(Format::Json);
    }
    match format {
        "table" => Ok(Format::Table),
        "csv" => Ok(Format::Csv),
        "json" => Ok(Format::Json),
        other => anyhow::bail!("unknown format {other:?}: use table, csv or json"),
    }
}

/// A CSV field, quoted when it needs to be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// What `sluice usage` prints for `args` against `cfg`'s ledger (either backend), with `now`
/// as the reference for relative times. Totals are integer sums of ledger rows.
pub fn usage_report(cfg: &Config, args: &UsageArgs, now: i64) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let format = format_of(&args.format, args.json)?;
    let (since, until) = time_range(&args.since, args.until.as_deref(), now)?;
    let names: Vec<&str> = args
        .by
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    let group_by = names
        .iter()
        .map(|s| {
            GroupBy::parse(s).with_context(|| {
                format!("cannot group by {s:?}: use tenant, feature, model, key, day, hour")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rows = open_ledger(cfg)?.usage(&UsageQuery {
        since_ms: since,
        until_ms: until,
        group_by,
        tenant: args.tenant.clone(),
    })?;
    let mut total = sluice_store::UsageRow::default();
    for r in &rows {
        total.add(r);
    }
    let mut out = String::new();
    match format {
        Format::Json => {
            let v = serde_json::json!({
                "since": fmt_ms(since),
                "until": fmt_ms(until),
                "group_by": names,
                "rows": rows,
                "total": total,
            });
            out = serde_json::to_string_pretty(&v)?;
            out.push('\n');
        }
        Format::Csv => {
            let mut head: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            if head.is_empty() {
                head.push("all".into());
            }
            head.extend(
                [
                    "requests",
                    "errors",
                    "input_tokens",
                    "output_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                    "cost_micros",
                    "cost_usd",
                ]
                .map(String::from),
            );
            let _ = writeln!(out, "{}", head.join(","));
            for r in &rows {
                let mut f: Vec<String> = r.group.iter().map(|g| csv_field(g)).collect();
                f.extend([
                    r.requests.to_string(),
                    r.errors.to_string(),
                    r.input_tokens.to_string(),
                    r.output_tokens.to_string(),
                    r.cache_creation_input_tokens.to_string(),
                    r.cache_read_input_tokens.to_string(),
                    r.cost_micros.to_string(),
                    fmt_usd(r.cost_micros).trim_start_matches('$').to_owned(),
                ]);
                let _ = writeln!(out, "{}", f.join(","));
            }
        }
        Format::Table => {
            let _ = writeln!(out, "Usage from {} to {}", fmt_ms(since), fmt_ms(until));
            let head: Vec<String> = if names.is_empty() {
                vec!["ALL".into()]
            } else {
                names.iter().map(|n| n.to_uppercase()).collect()
            };
            let nums = |r: &sluice_store::UsageRow| {
                format!(
                    "{:>9} {:>7} {:>12} {:>12} {:>12} {:>12} {:>15}",
                    r.requests,
                    r.errors,
                    r.input_tokens,
                    r.output_tokens,
                    r.cache_creation_input_tokens,
                    r.cache_read_input_tokens,
                    fmt_usd(r.cost_micros)
                )
            };
            let mut line = head.iter().map(|h| format!("{h:<24}")).collect::<String>();
            line.push_str(&format!(
                "{:>9} {:>7} {:>12} {:>12} {:>12} {:>12} {:>15}",
                "REQUESTS", "ERRORS", "INPUT", "OUTPUT", "CACHE_WRITE", "CACHE_READ", "COST"
            ));
            let _ = writeln!(out, "{line}");
            for r in &rows {
                let mut l = r
                    .group
                    .iter()
                    .map(|g| format!("{g:<24}"))
                    .collect::<String>();
                l.push_str(&nums(r));
                let _ = writeln!(out, "{l}");
            }
            let mut l = format!("{:<w$}", "TOTAL", w = 24 * head.len());
            l.push_str(&nums(&total));
            let _ = writeln!(out, "{l}");
        }
    }
    Ok(out)
}

/// `sluice report …`.
pub fn report(cli: &Cli, cmd: &ReportCommand) -> anyhow::Result<()> {
    let cfg = load_config(cli)?;
    match cmd {
        ReportCommand::Capacity(a) => print!("{}", capacity_report(&cfg, a, now_ms())?),
    }
    Ok(())
}

/// The limiter's view of models (classes, prices) and the shipped tier presets, for the
/// capacity report.
struct LimitsPolicy {
    policy: sluice_limits::limiter::Policy,
    /// The classes are the presets' (so are the presets' cache-read rules).
    builtin_classes: bool,
}

/// The current tier ladder of `presets.toml`, smallest first.
const TIER_LADDER: [&str; 3] = ["start", "build", "scale"];

impl sluice_store::report::CapacityPolicy for LimitsPolicy {
    fn class_of(&self, model: &str) -> String {
        self.policy.class_of(model).to_string()
    }

    fn cache_reads_count(&self, class: &str) -> bool {
        self.builtin_classes && sluice_limits::presets::Presets::builtin().cache_reads_count(class)
    }

    fn cache_saving_per_mtok(&self, model: &str) -> Option<u64> {
        let p = self.policy.prices().lookup(model)?;
        Some(p.base.input.saturating_sub(p.base.cache_read))
    }

    fn tiers(&self) -> Vec<sluice_store::report::TierLimits> {
        let presets = sluice_limits::presets::Presets::builtin();
        TIER_LADDER
            .iter()
            .filter_map(|name| {
                let t = presets.tier(name)?;
                Some(sluice_store::report::TierLimits {
                    name: (*name).to_owned(),
                    classes: t
                        .iter()
                        .map(|(class, l)| {
                            let limits = sluice_store::report::ClassLimits {
                                requests_per_minute: l.requests_per_minute,
                                input_tokens_per_minute: l.input_tokens_per_minute,
                                output_tokens_per_minute: l.output_tokens_per_minute,
                            };
                            (class.clone(), limits)
                        })
                        .collect(),
                })
            })
            .collect()
    }
}

/// What `sluice report capacity` prints for `args` against `cfg`'s ledger (either backend).
pub fn capacity_report(cfg: &Config, args: &CapacityArgs, now: i64) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let format = format_of(&args.format, false)?;
    let (since, until) = time_range(&args.since, args.until.as_deref(), now)?;
    let policy = LimitsPolicy {
        policy: sluice_limits::limiter::Policy::build(cfg)
            .context("invalid limits in the config")?,
        builtin_classes: cfg.limits.classes.is_empty(),
    };
    let rep = open_ledger(cfg)?.capacity(
        &sluice_store::report::CapacityQuery {
            since_ms: since,
            until_ms: until,
        },
        &policy,
    )?;
    let mut out = String::new();
    let rates = |s: &sluice_store::report::RateStats| format!("{}/{}/{}", s.p50, s.p95, s.peak);
    match format {
        Format::Json => {
            let mut v = serde_json::to_value(&rep)?;
            v["since"] = fmt_ms(since).into();
            v["until"] = fmt_ms(until).into();
            out = serde_json::to_string_pretty(&v)?;
            out.push('\n');
        }
        Format::Csv => {
            let _ = writeln!(
                out,
                "class,active_minutes,rpm_p50,rpm_p95,rpm_peak,itpm_p50,itpm_p95,itpm_peak,\
                 otpm_p50,otpm_p95,otpm_peak,peak_minute,limited_tenant,limited_org,\
                 limited_budget,upstream_429,uncached_input_tokens,cache_write_tokens,\
                 cache_read_tokens,cache_hit_rate,cache_savings_micros,tier_for_p95,tier_for_peak"
            );
            for c in &rep.classes {
                let (r, i, o) = (
                    &c.requests_per_minute,
                    &c.input_tokens_per_minute,
                    &c.output_tokens_per_minute,
                );
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.4},{},{},{}",
                    csv_field(&c.class),
                    c.active_minutes,
                    r.p50,
                    r.p95,
                    r.peak,
                    i.p50,
                    i.p95,
                    i.peak,
                    o.p50,
                    o.p95,
                    o.peak,
                    c.peak_minute.as_deref().unwrap_or(""),
                    c.limited_tenant,
                    c.limited_org,
                    c.limited_budget,
                    c.upstream_429,
                    c.uncached_input_tokens,
                    c.cache_write_tokens,
                    c.cache_read_tokens,
                    c.cache_hit_rate,
                    c.cache_savings_micros,
                    csv_field(&c.tier_for_p95),
                    csv_field(&c.tier_for_peak),
                );
            }
        }
        Format::Table => {
            let _ = writeln!(
                out,
                "Capacity from {} to {} (per UTC minute with traffic: p50/p95/peak; tiers: {})",
                fmt_ms(since),
                fmt_ms(until),
                rep.tiers.join(" < ")
            );
            let _ = writeln!(
                out,
                "{:<12} {:>7} {:>16} {:>26} {:>22} {:>19} {:>6} {:>14} {:>13} {:>13}",
                "CLASS",
                "MINUTES",
                "REQ/MIN",
                "INPUT TOK/MIN",
                "OUTPUT TOK/MIN",
                "429 TEN/ORG/BUD/UP",
                "CACHE",
                "CACHE SAVED",
                "TIER (P95)",
                "TIER (PEAK)"
            );
            for c in &rep.classes {
                let _ = writeln!(
                    out,
                    "{:<12} {:>7} {:>16} {:>26} {:>22} {:>19} {:>5.1}% {:>14} {:>13} {:>13}",
                    c.class,
                    c.active_minutes,
                    rates(&c.requests_per_minute),
                    rates(&c.input_tokens_per_minute),
                    rates(&c.output_tokens_per_minute),
                    format!(
                        "{}/{}/{}/{}",
                        c.limited_tenant, c.limited_org, c.limited_budget, c.upstream_429
                    ),
                    c.cache_hit_rate * 100.0,
                    fmt_usd(i64::try_from(c.cache_savings_micros).unwrap_or(i64::MAX)),
                    c.tier_for_p95,
                    c.tier_for_peak
                );
            }
            if let Some(t) = &cfg.org.tier {
                let _ = writeln!(out, "Configured org.tier: {t}");
            }
        }
    }
    Ok(out)
}

/// Micro-dollars as dollars with all six decimals (`$12.345678`), from the integer so no float
/// rounding can make a total disagree with the ledger.
fn fmt_usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}${}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// Options of the fake upstream from `sluice mock`'s flags.
pub fn mock_options(a: &MockArgs) -> sluice_mock::MockOptions {
    sluice_mock::MockOptions {
        latency: Duration::from_millis(a.latency_ms),
        event_interval: Duration::from_millis(a.event_interval_ms),
        ratelimit_headers: !a.no_ratelimit_headers,
        api_key: a.api_key.clone(),
        record: a.record,
        output_tokens: a.output_tokens,
        ..sluice_mock::MockOptions::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn when_accepts_durations_and_times() {
        assert_eq!(
            parse_when("1h", 10_000_000).unwrap(),
            10_000_000 - 3_600_000
        );
        assert_eq!(parse_when("1970-01-01T00:00:01Z", 0).unwrap(), 1000);
        assert!(parse_when("yesterday-ish", 0).is_err());
    }

    #[test]
    fn costs_print_as_exact_dollars() {
        assert_eq!(fmt_usd(0), "$0.000000");
        assert_eq!(fmt_usd(5943), "$0.005943");
        assert_eq!(fmt_usd(12_345_678), "$12.345678");
        assert_eq!(fmt_usd(-1), "-$0.000001");
        assert_eq!(fmt_usd(i64::MIN), "-$9223372036854.775808");
    }
}
