//! `sluice keys …`: create, list, revoke and rotate gateway keys, in the database or through
//! the admin API.

use super::remote::Remote;
use super::{Cli, cli_actor, fmt_ms, load_config, now_ms, open_state};
use clap::{Args, Subcommand};
use serde_json::Value;
use sluice_store::NewEvent;

/// `sluice keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a tenant; the key is printed once, alone on the last line of stdout.
    Create(NewKeyArgs),
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

/// `sluice keys create`: the same arguments whether the key is made in the database or
/// through the admin API.
#[derive(Debug, Args)]
pub struct NewKeyArgs {
    /// Tenant (must be declared in the config).
    #[arg(long)]
    pub tenant: String,
    /// Free-text label (who or what uses the key).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Expire the key after this long (e.g. `90d`, `12h`).
    #[arg(long)]
    pub expires_in: Option<humantime::Duration>,
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
        KeysCommand::Create(NewKeyArgs {
            tenant,
            label,
            expires_in,
        }) => {
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
            print_created(&k.record.id, tenant, &k.secret);
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

/// A new key for the operator, alone on the last line of stdout (scripts take that line).
fn print_created(id: &str, tenant: &str, secret: &str) {
    println!("Created key {id} for tenant {tenant}.");
    println!("It is shown once; store it now:");
    println!("{secret}");
}

/// A key's record as the admin API shows it.
fn key_json(k: &sluice_store::KeyRecord, now: i64) -> Value {
    sluice_admin::api::key_json(k, now)
}

fn keys_remote(cli: &Cli, cmd: &KeysCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let r = Remote::new(cli)?;
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    match cmd {
        KeysCommand::Create(NewKeyArgs {
            tenant,
            label,
            expires_in,
        }) => {
            let mut body = serde_json::json!({"tenant": tenant, "label": label});
            if let Some(d) = expires_in {
                body["expires_in_secs"] = d.as_secs().into();
            }
            let v = r.call(Method::POST, "/admin/v1/keys", Some(body))?;
            print_created(&s(&v["key"]["id"]), tenant, &s(&v["secret"]));
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
