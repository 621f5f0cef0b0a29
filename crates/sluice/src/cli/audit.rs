//! `sluice audit …`: the audit trail and its hash chain, read from the database or through
//! the admin API.

use super::remote::Remote;
use super::{Cli, fmt_ms, load_config, now_ms, open_state, parse_when};
use clap::Subcommand;
use serde_json::Value;

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
