//! The command line: `serve`, `demo`, `mock`, `keys …`, `tenants …`, `audit …` and `usage`.
//! This module holds the clap tree and what the commands share (the config, the clock, the
//! state store); each group of subcommands lives in its own module with its arguments.
//!
//! `keys`, `tenants` and `audit` work on the state database directly (the default: on the
//! gateway's host, or while it is down; changes are audited as `cli:USER` and reach a running
//! gateway through the generation counters it polls), or, with `--admin-url`, through a
//! running gateway's admin API (from anywhere that can reach it; audited as the token's name).

mod audit;
mod keys;
#[cfg(feature = "mock")]
mod mock;
mod remote;
mod serve;
mod tenants;
mod usage;

pub use audit::{AuditCommand, audit};
pub use keys::{KeysCommand, NewKeyArgs, keys};
#[cfg(feature = "mock")]
pub use mock::{DemoArgs, MockArgs, demo, mock, mock_options};
pub use serve::{ServeArgs, serve};
pub use tenants::{TenantsCommand, settings_patch, tenants};
pub use usage::{
    CapacityArgs, ReportCommand, UsageArgs, capacity_report, report, usage, usage_report,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_config::Config;
use sluice_store::Store;
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
    #[cfg(feature = "mock")]
    Demo(DemoArgs),
    /// Run the Anthropic-compatible fake upstream (for tests, demos and benchmarks).
    #[cfg(feature = "mock")]
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

/// Who the CLI's direct changes are audited as: `cli:` and the OS user.
fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
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
}
