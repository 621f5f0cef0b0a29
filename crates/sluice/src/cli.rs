//! The command line: `serve`, `demo`, `mock`, `keys …` and `usage`.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sluice_config::Config;
use sluice_store::{GroupBy, Store, UsageQuery};
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
}

/// `sluice usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Start: a duration ago (`24h`, `7d`) or an RFC 3339 time.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// End: a duration ago or an RFC 3339 time (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Group by any of tenant, feature, model, key (comma-separated).
    #[arg(long, default_value = "tenant,feature,model", value_delimiter = ',')]
    pub by: Vec<String>,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
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
    let cfg = load_config(cli)?;
    let store = Store::open(&cfg.store.path)
        .with_context(|| format!("cannot open the state database {}", cfg.store.path))?;
    match cmd {
        KeysCommand::Create {
            tenant,
            label,
            expires_in,
        } => {
            if cfg.tenant(tenant).is_none() {
                anyhow::bail!(
                    "tenant {tenant:?} is not declared in {} (add a [[tenants]] entry first)",
                    cli.config.display()
                );
            }
            let now = now_ms();
            let expires = expires_in
                .map(|d| now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
            let k = store.create_key(tenant, label, expires, now)?;
            println!("Created key {} for tenant {tenant}.", k.record.id);
            println!("It is shown once; store it now:");
            println!("{}", k.secret);
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
            let k = store.revoke_key(id, now_ms())?;
            println!("Revoked key {} of tenant {}.", k.id, k.tenant);
        }
    }
    Ok(())
}

/// `sluice usage`.
pub fn usage(cli: &Cli, args: &UsageArgs) -> anyhow::Result<()> {
    let cfg = load_config(cli)?;
    let store = Store::open(&cfg.store.path)
        .with_context(|| format!("cannot open the state database {}", cfg.store.path))?;
    let now = now_ms();
    let since = parse_when(&args.since, now)?;
    let until = match &args.until {
        Some(u) => parse_when(u, now)?,
        None => now.saturating_add(1),
    };
    let group_by = args
        .by
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| match s.trim() {
            "tenant" => Ok(GroupBy::Tenant),
            "feature" => Ok(GroupBy::Feature),
            "model" => Ok(GroupBy::Model),
            "key" => Ok(GroupBy::Key),
            other => anyhow::bail!("cannot group by {other:?}: use tenant, feature, model, key"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let names: Vec<&str> = args
        .by
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    let rows = store.usage(&UsageQuery {
        since_ms: since,
        until_ms: until,
        group_by,
        tenant: args.tenant.clone(),
    })?;
    if args.json {
        let out = serde_json::json!({
            "since": fmt_ms(since),
            "until": fmt_ms(until),
            "group_by": names,
            "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("Usage from {} to {}", fmt_ms(since), fmt_ms(until));
    let head: Vec<String> = if names.is_empty() {
        vec!["ALL".into()]
    } else {
        names.iter().map(|n| n.to_uppercase()).collect()
    };
    let mut line = head.iter().map(|h| format!("{h:<24}")).collect::<String>();
    line.push_str(&format!(
        "{:>9} {:>7} {:>12} {:>12} {:>12} {:>12} {:>15}",
        "REQUESTS", "ERRORS", "INPUT", "OUTPUT", "CACHE_WRITE", "CACHE_READ", "COST"
    ));
    println!("{line}");
    let mut total = sluice_store::UsageRow::default();
    for r in &rows {
        let mut l = r
            .group
            .iter()
            .map(|g| format!("{g:<24}"))
            .collect::<String>();
        l.push_str(&format!(
            "{:>9} {:>7} {:>12} {:>12} {:>12} {:>12} {:>15}",
            r.requests,
            r.errors,
            r.input_tokens,
            r.output_tokens,
            r.cache_creation_input_tokens,
            r.cache_read_input_tokens,
            fmt_usd(r.cost_micros)
        ));
        println!("{l}");
        total.requests += r.requests;
        total.errors += r.errors;
        total.input_tokens += r.input_tokens;
        total.output_tokens += r.output_tokens;
        total.cache_creation_input_tokens += r.cache_creation_input_tokens;
        total.cache_read_input_tokens += r.cache_read_input_tokens;
        total.cost_micros += r.cost_micros;
    }
    let mut l = format!("{:<w$}", "TOTAL", w = 24 * head.len());
    l.push_str(&format!(
        "{:>9} {:>7} {:>12} {:>12} {:>12} {:>12} {:>15}",
        total.requests,
        total.errors,
        total.input_tokens,
        total.output_tokens,
        total.cache_creation_input_tokens,
        total.cache_read_input_tokens,
        fmt_usd(total.cost_micros)
    ));
    println!("{l}");
    Ok(())
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
