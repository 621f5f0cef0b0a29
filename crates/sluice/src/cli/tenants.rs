//! `sluice tenants …`: the tenants kept in the state database (overlaid on the config
//! file's), changed directly or through the admin API.

use super::remote::Remote;
use super::{Cli, cli_actor, load_config, now_ms, open_state};
use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

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
