//! Tenants as the control plane sees them: the config file's `[[tenants]]` with the state
//! database's rows overlaid (a row replaces the file's tenant of the same name, or adds one).
//! Every change is planned first — the whole resulting config is validated with the same rules
//! as a config file — and only a valid plan is written, together with its audit event. Both the
//! admin API and the CLI's direct mode go through [`plan`] and [`commit`].

use crate::error::AdminError;
use serde_json::{Map, Value, json};
use sluice_config::{Config, LimitSet, TenantConfig};
use sluice_store::{AuditEvent, NewEvent, Store, TenantRow};

/// A tenant as JSON, with the same keys as its `[[tenants]]` table, every one present (so a
/// stored row keeps its meaning if a default changes; keys added later get their defaults).
pub fn tenant_json(t: &TenantConfig) -> Value {
    let classes: Map<String, Value> = t
        .class_limits
        .iter()
        .map(|(k, v)| (k.clone(), limits_json(v)))
        .collect();
    json!({
        "name": t.name,
        "description": t.description,
        "enabled": t.enabled,
        "log_bodies": t.log_bodies,
        "limits": limits_json(&t.limits),
        "class_limits": classes,
        "priority": t.priority.as_str(),
        "weight": t.weight,
        "max_wait_ms": t.max_wait_ms,
        "budget_daily_usd": t.budget_daily_usd,
        "budget_monthly_usd": t.budget_monthly_usd,
        "count_tokens_per_minute": t.count_tokens_per_minute,
        "prompt_cache": t.prompt_cache.as_str(),
        "prompt_cache_ttl": t.prompt_cache_ttl.as_str(),
        "class_prompt_cache": t
            .class_prompt_cache
            .iter()
            .map(|(k, o)| {
                (
                    k.clone(),
                    json!({
                        "prompt_cache": o.prompt_cache.map(|m| m.as_str()),
                        "prompt_cache_ttl": o.prompt_cache_ttl.map(|t| t.as_str()),
                    }),
                )
            })
            .collect::<Map<String, Value>>(),
        "response_cache": t.response_cache.map(|r| json!({
            "ttl_secs": r.ttl_secs,
            "max_entry_bytes": r.max_entry_bytes,
        })),
    })
}

fn limits_json(l: &LimitSet) -> Value {
    let mut m = Map::new();
    for (k, v) in [
        ("requests_per_minute", l.requests_per_minute),
        ("input_tokens_per_minute", l.input_tokens_per_minute),
        ("output_tokens_per_minute", l.output_tokens_per_minute),
        ("requests_burst", l.requests_burst),
        ("input_tokens_burst", l.input_tokens_burst),
        ("output_tokens_burst", l.output_tokens_burst),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), v.into());
        }
    }
    Value::Object(m)
}

/// A tenant from JSON with `[[tenants]]` keys; unknown keys and wrong types are refused.
pub fn tenant_from_json(v: Value) -> Result<TenantConfig, AdminError> {
    // JSON null means "unset" for optional keys; serde's defaults cover the rest.
    let v = match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    };
    serde_json::from_value(v).map_err(|e| AdminError::Invalid(format!("invalid tenant: {e}")))
}

/// Where a tenant's effective definition comes from.
pub fn source(file: &Config, rows: &[TenantRow], name: &str) -> &'static str {
    let in_file = file.tenants.iter().any(|t| t.name == name);
    let in_db = rows.iter().any(|r| r.name == name);
    match (in_file, in_db) {
        (true, true) => "database (overrides the file)",
        (false, true) => "database",
        _ => "file",
    }
}

/// The effective config: `file` with `rows` overlaid, validated as a whole.
pub fn overlay(file: &Config, rows: &[TenantRow]) -> Result<Config, AdminError> {
    let mut cfg = file.clone();
    for r in rows {
        let v: Value = serde_json::from_str(&r.config).map_err(|e| {
            AdminError::Invalid(format!(
                "tenant {:?} in the state database is not JSON: {e}",
                r.name
            ))
        })?;
        let t = tenant_from_json(v).map_err(|e| {
            AdminError::Invalid(format!("tenant {:?} in the state database: {e}", r.name))
        })?;
        if t.name != r.name {
            return Err(AdminError::Invalid(format!(
                "tenant row {:?} holds a tenant named {:?}",
                r.name, t.name
            )));
        }
        match cfg.tenants.iter_mut().find(|f| f.name == t.name) {
            Some(slot) => *slot = t,
            None => cfg.tenants.push(t),
        }
    }
    cfg.validated()
        .map_err(|e| AdminError::Invalid(e.to_string()))
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes a key (its default
/// applies), anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// A requested change to the tenants.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new tenant (a JSON object with `[[tenants]]` keys; `name` required).
    Create(Value),
    /// Merge-patch an existing tenant (RFC 7386: given keys replace, `null` resets to the
    /// default); a file tenant gets a database row that overrides it.
    Update(String, Value),
    /// Remove the tenant's database row (a file tenant then reverts to the file's definition;
    /// a tenant only in the database is deleted for good, see [`Store::retire_tenant`]).
    Delete(String),
}

/// A validated change, ready to write.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The tenant.
    pub name: String,
    /// `tenant.create`, `tenant.update` or `tenant.delete`.
    pub action: &'static str,
    /// The new row (`None`: delete the row).
    pub row: Option<String>,
    /// The effective tenant before (`None`: did not exist).
    pub before: Option<Value>,
    /// The effective tenant after (`None`: no longer exists).
    pub after: Option<Value>,
    /// The whole effective config after the change.
    pub config: Config,
}

/// Plan `change` against `file` + `rows`: the result is validated, nothing is written.
pub fn plan(file: &Config, rows: &[TenantRow], change: &Change) -> Result<Planned, AdminError> {
    let current = overlay(file, rows)?;
    let find = |name: &str| current.tenants.iter().find(|t| t.name == name);
    let (name, action, row) = match change {
        Change::Create(v) => {
            let t = tenant_from_json(v.clone())?;
            if find(&t.name).is_some() {
                return Err(AdminError::Conflict(format!(
                    "tenant {:?} already exists; update it instead",
                    t.name
                )));
            }
            (t.name.clone(), "tenant.create", Some(tenant_json(&t)))
        }
        Change::Update(name, patch) => {
            let Some(t) = find(name) else {
                return Err(AdminError::NotFound(format!("tenant {name:?} not found")));
            };
            let Value::Object(patch) = patch else {
                return Err(AdminError::Invalid(
                    "an update is a JSON object of the keys to change".into(),
                ));
            };
            if let Some(n) = patch.get("name")
                && n.as_str() != Some(name)
            {
                return Err(AdminError::Invalid(
                    "a tenant cannot be renamed; create a new one".into(),
                ));
            }
            let mut merged = tenant_json(t);
            merge_patch(&mut merged, &Value::Object(patch.clone()));
            let t = tenant_from_json(merged)?;
            (name.clone(), "tenant.update", Some(tenant_json(&t)))
        }
        Change::Delete(name) => {
            if !rows.iter().any(|r| &r.name == name) {
                if file.tenants.iter().any(|t| &t.name == name) {
                    return Err(AdminError::Conflict(format!(
                        "tenant {name:?} is defined in the config file: remove it there, or disable it (enabled = false)"
                    )));
                }
                return Err(AdminError::NotFound(format!("tenant {name:?} not found")));
            }
            (name.clone(), "tenant.delete", None)
        }
    };
    let before = find(&name).map(tenant_json);
    let mut next: Vec<TenantRow> = rows.iter().filter(|r| r.name != name).cloned().collect();
    if let Some(v) = &row {
        next.push(TenantRow {
            name: name.clone(),
            config: v.to_string(),
            updated_ms: 0,
        });
    }
    let config = overlay(file, &next)?;
    let after = config
        .tenants
        .iter()
        .find(|t| t.name == name)
        .map(tenant_json);
    Ok(Planned {
        name,
        action,
        row: row.map(|v| v.to_string()),
        before,
        after,
        config,
    })
}

/// Write a planned change and its audit event (one transaction).
pub fn commit(
    store: &Store,
    p: &Planned,
    actor: &str,
    now_ms: i64,
) -> Result<AuditEvent, AdminError> {
    let ev = NewEvent {
        ts_ms: now_ms,
        actor: actor.to_owned(),
        action: p.action.to_owned(),
        target: p.name.clone(),
        before: p.before.as_ref().map(Value::to_string),
        after: p.after.as_ref().map(Value::to_string),
    };
    Ok(match (&p.row, &p.after) {
        (Some(row), _) => store.put_tenant(&p.name, row, &ev)?,
        // The row overrode a file tenant, which stays: only the override goes.
        (None, Some(_)) => store.delete_tenant(&p.name, &ev)?,
        // The tenant is gone: its keys and batches go with it, so that a tenant created later
        // under the same name inherits nothing.
        (None, None) => store.retire_tenant(&p.name, &ev)?.event,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn file() -> Config {
        Config::from_toml(
            "[[tenants]]\nname = \"web\"\nweight = 2\nlimits = { requests_per_minute = 10 }\nclass_limits.opus-4 = { output_tokens_per_minute = 5 }\nbudget_daily_usd = 1.5\n",
        )
        .unwrap()
    }

    #[test]
    fn json_round_trips_every_key() {
        let t = file().tenants[0].clone();
        let back = tenant_from_json(tenant_json(&t)).unwrap();
        assert_eq!(format!("{t:?}"), format!("{back:?}"));
    }

    #[test]
    fn plans_are_validated_and_overlay_the_file() {
        let f = file();
        let p = plan(
            &f,
            &[],
            &Change::Update("web".into(), json!({"limits": {"requests_per_minute": 99}})),
        )
        .unwrap();
        assert_eq!(
            p.before.as_ref().unwrap()["limits"]["requests_per_minute"],
            10
        );
        assert_eq!(
            p.after.as_ref().unwrap()["limits"]["requests_per_minute"],
            99
        );
        assert_eq!(p.after.as_ref().unwrap()["weight"], 2, "other keys kept");
        let rows = vec![TenantRow {
            name: "web".into(),
            config: p.row.clone().unwrap(),
            updated_ms: 1,
        }];
        let eff = overlay(&f, &rows).unwrap();
        assert_eq!(
            eff.tenant("web").unwrap().limits.requests_per_minute,
            Some(99)
        );
        // A file tenant without a row cannot be deleted; with one, deleting reverts it.
        assert!(matches!(
            plan(&f, &[], &Change::Delete("web".into())),
            Err(AdminError::Conflict(_))
        ));
        let d = plan(&f, &rows, &Change::Delete("web".into())).unwrap();
        assert_eq!(d.after.unwrap()["limits"]["requests_per_minute"], 10);
        // Invalid results are refused before anything is written.
        for bad in [
            json!({"name": "Bad Name"}),
            json!({"name": "x", "weight": "heavy"}),
            json!({"name": "x", "nope": 1}),
            json!({"name": "x", "budget_daily_usd": -1}),
        ] {
            assert!(
                matches!(
                    plan(&f, &[], &Change::Create(bad.clone())),
                    Err(AdminError::Invalid(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            plan(&f, &[], &Change::Create(json!({"name": "web"}))),
            Err(AdminError::Conflict(_))
        ));
        assert!(matches!(
            plan(&f, &[], &Change::Update("nope".into(), json!({}))),
            Err(AdminError::NotFound(_))
        ));
    }
}
