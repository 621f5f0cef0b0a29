//! Hot reload: the one place that swaps the gateway's config snapshot. A new snapshot is the
//! config file (re-read on `POST /admin/v1/reload`, SIGHUP or a change on disk) with the state
//! database's tenants overlaid, validated as a whole, then published with one atomic store;
//! requests in flight keep the `Arc<Config>` they started with. Settings that are read only at
//! startup (listeners, the store, the upstream pool, logging, the limiter backend) keep their
//! running values in the snapshot, and a change to them is logged as needing a restart.
//!
//! Every method here is blocking (file and SQLite I/O) and serialised by one mutex that is
//! never held across an `.await`: call them from `spawn_blocking` or a CLI.

use crate::auth::{ResolvedToken, TokenResolver};
use crate::error::AdminError;
use crate::tenants::{self, Change, Planned};
use arc_swap::ArcSwap;
use serde_json::{Value, json};
use sluice_config::{Config, SharedConfig};
use sluice_proxy::AppState;
use sluice_store::{AuditEvent, NewEvent, Store};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// The file read (`None`: no file; only the database's tenants were re-applied).
    pub path: Option<String>,
    /// Changed settings that only apply after a restart (kept at their running values).
    pub restart_needed: Vec<String>,
    /// Tenants in the new snapshot.
    pub tenants: usize,
}

struct State {
    /// The file's config at startup, which the restart-only settings came from: a reloaded
    /// file that differs from it there needs a restart (reported on every reload until then).
    boot: Config,
    /// The file's config as last loaded (before the overlay and before restart-only settings
    /// were pinned): the baseline a new file is compared with.
    file: Config,
    /// The file's text last loaded, so a watch event that changed nothing is ignored.
    file_text: Option<String>,
    /// The tenants generation the current snapshot was built from.
    tenants_gen: i64,
    /// Recently replaced snapshots, kept alive a little longer: the limiter caches its policy
    /// against a snapshot's address, so an address must not be reused by a new snapshot while
    /// that cache may still point at it.
    retired: VecDeque<Arc<Config>>,
    /// Tenant deletions already applied to the limiter (name → deletion time), since
    /// `deletions_from`: a deleted tenant's spend is dropped once, when this gateway first
    /// sees the deletion, and never again (that would drop a re-created tenant's spend).
    deletions_seen: HashMap<String, i64>,
    /// Deletions before this time were accounted for at startup (budgets are read back from
    /// the ledger only from a tenant's deletion on).
    deletions_from: i64,
}

/// Owns reloads of one running gateway.
pub struct Reloader {
    app: AppState,
    shared: SharedConfig,
    store: Store,
    path: Option<PathBuf>,
    resolver: TokenResolver,
    tokens: ArcSwap<Vec<ResolvedToken>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish()
    }
}

/// Sections (and keys) read once at startup, as (name, accessor for comparison, copy from the
/// running config). A changed value is reported and kept at the running one.
type Pin = (
    &'static str,
    fn(&Config) -> String,
    fn(&mut Config, &Config),
);

const PINNED: &[Pin] = &[
    (
        "server.listen",
        |c| c.server.listen.clone(),
        |n, r| n.server.listen.clone_from(&r.server.listen),
    ),
    (
        "server.shutdown_grace_secs",
        |c| c.server.shutdown_grace_secs.to_string(),
        |n, r| n.server.shutdown_grace_secs = r.server.shutdown_grace_secs,
    ),
    (
        "upstream",
        |c| format!("{:?}", c.upstream),
        |n, r| n.upstream = r.upstream.clone(),
    ),
    (
        "store",
        |c| format!("{:?}", c.store),
        |n, r| n.store = r.store.clone(),
    ),
    (
        "auth",
        |c| format!("{:?}", c.auth),
        |n, r| n.auth = r.auth.clone(),
    ),
    (
        "log",
        |c| format!("{:?}", c.log),
        |n, r| n.log = r.log.clone(),
    ),
    (
        "limits backend (backend, redis_*, fail_mode, fallback_share)",
        |c| {
            let l = &c.limits;
            format!(
                "{:?} {} {} {} {:?} {}",
                l.backend,
                l.redis_url,
                l.redis_prefix,
                l.redis_timeout_ms,
                l.fail_mode,
                l.fallback_share
            )
        },
        |n, r| {
            let (l, o) = (&mut n.limits, &r.limits);
            l.backend = o.backend;
            l.redis_url.clone_from(&o.redis_url);
            l.redis_prefix.clone_from(&o.redis_prefix);
            l.redis_timeout_ms = o.redis_timeout_ms;
            l.fail_mode = o.fail_mode;
            l.fallback_share = o.fallback_share;
        },
    ),
    (
        "admin (enabled, listen, watch_config, watch_debounce_ms)",
        |c| {
            let a = &c.admin;
            format!(
                "{} {} {} {}",
                a.enabled, a.listen, a.watch_config, a.watch_debounce_ms
            )
        },
        |n, r| {
            let (a, o) = (&mut n.admin, &r.admin);
            a.enabled = o.enabled;
            a.listen.clone_from(&o.listen);
            a.watch_config = o.watch_config;
            a.watch_debounce_ms = o.watch_debounce_ms;
        },
    ),
];

/// Load the database's tenants over `file` at startup; the result is what the gateway starts
/// with. An overlay that no longer validates against the file is a startup error naming why.
pub fn startup_config(store: &Store, file: &Config) -> Result<(Config, i64), AdminError> {
    let tenants_gen = store.tenants_generation()?;
    let rows = store.tenant_rows()?;
    let cfg = tenants::overlay(file, &rows).map_err(|e| {
        AdminError::Invalid(format!(
            "{e} (tenants from the state database over the config file; fix with `sluice tenants update` or `sluice tenants delete`)"
        ))
    })?;
    Ok((cfg, tenants_gen))
}

impl Reloader {
    /// A reloader for a gateway running `shared` (which holds the result of
    /// [`startup_config`]): `file` is the file's config as loaded (without the overlay),
    /// `path` the file to re-read (`None`: reloads re-apply the database only), `resolver`
    /// turns `[[admin.tokens]]` into token hashes (it reads the environment, so the binary
    /// provides it).
    pub fn new(
        app: AppState,
        shared: SharedConfig,
        store: Store,
        path: Option<PathBuf>,
        file: Config,
        tenants_gen: i64,
        resolver: TokenResolver,
    ) -> Result<Self, AdminError> {
        let tokens = resolver(&shared.load().admin.tokens).map_err(AdminError::Invalid)?;
        let file_text = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
        let deletions_from = app.clock().unix_ms();
        Ok(Self {
            app,
            shared,
            store,
            path,
            resolver,
            tokens: ArcSwap::from_pointee(tokens),
            state: Mutex::new(State {
                boot: file.clone(),
                file,
                file_text,
                tenants_gen,
                retired: VecDeque::new(),
                deletions_seen: HashMap::new(),
                deletions_from,
            }),
        })
    }

    /// The admin tokens of the current snapshot.
    pub fn tokens(&self) -> Arc<Vec<ResolvedToken>> {
        self.tokens.load_full()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The data plane's state.
    pub fn app(&self) -> &AppState {
        &self.app
    }

    /// The config file, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, AdminError> {
        self.state
            .lock()
            .map_err(|_| AdminError::Internal("reload lock poisoned".into()))
    }

    /// The file's config with restart-only settings pinned to the running ones.
    fn pinned_file(&self, st: &State) -> Config {
        let running = self.shared.load_full();
        let mut f = st.file.clone();
        for (_, _, copy) in PINNED {
            copy(&mut f, &running);
        }
        f
    }

    /// Publish `cfg` (already validated) as the new snapshot.
    fn publish(&self, st: &mut State, cfg: Config) -> Result<(), AdminError> {
        let tokens = (self.resolver)(&cfg.admin.tokens).map_err(AdminError::Invalid)?;
        // A deleted tenant's keys (revoked with it) leave the ring, and its spend the
        // limiter, before a snapshot that may hold a new tenant of the same name is live.
        if let Err(e) = self.app.keys().refresh(&self.store) {
            tracing::warn!(target: "sluice::reload", error = %e, "key ring refresh failed; keeping the last ring");
        }
        self.forget_deleted_spend(st);
        let new = Arc::new(cfg);
        let old = self.shared.swap(new.clone());
        self.tokens.store(Arc::new(tokens));
        // Re-derive the limiter's policy now, against the new snapshot (see `State::retired`).
        let _ = self.app.limiter().policy(&new);
        st.retired.push_back(old);
        while st.retired.len() > 16 {
            st.retired.pop_front();
        }
        Ok(())
    }

    /// Drop the limiter's spend of tenants deleted since this gateway last looked, here or by
    /// another process, so that one re-created under the same name starts its budgets from
    /// zero (the ledger keeps the old rows as history).
    fn forget_deleted_spend(&self, st: &mut State) {
        let deletions = match self.store.tenant_deletions_since(st.deletions_from) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(target: "sluice::reload", error = %e, "cannot read tenant deletions; a re-created tenant may keep its old budget consumption until a restart");
                return;
            }
        };
        let now = self.app.clock().unix_ms();
        for (name, at) in deletions {
            if st.deletions_seen.get(&name).is_some_and(|&seen| seen >= at) {
                continue;
            }
            self.app.limiter().forget_spend(&name, now);
            st.deletions_seen.insert(name, at);
        }
    }

    /// Re-read the config file (if there is one) and the database's tenants, validate, swap.
    /// `force`: reload even if the file's text did not change (a watch event that changed
    /// nothing is skipped: `Ok(None)`). On error nothing changes.
    pub fn reload(&self, actor: &str, force: bool) -> Result<Option<ReloadReport>, AdminError> {
        let mut st = self.lock()?;
        let (file, text) = match &self.path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    AdminError::Invalid(format!("cannot read config file {}: {e}", p.display()))
                })?;
                if !force && st.file_text.as_deref() == Some(text.as_str()) {
                    return Ok(None);
                }
                let cfg = Config::from_toml(&text)
                    .map_err(|e| AdminError::Invalid(format!("{} (in {})", e, p.display())))?;
                (cfg, Some(text))
            }
            None => (st.file.clone(), None),
        };
        let restart_needed: Vec<String> = PINNED
            .iter()
            .filter(|(_, get, _)| get(&st.boot) != get(&file))
            .map(|(name, _, _)| (*name).to_owned())
            .collect();
        let running = self.shared.load_full();
        let mut pinned = file.clone();
        for (_, _, copy) in PINNED {
            copy(&mut pinned, &running);
        }
        let tenants_gen = self.store.tenants_generation()?;
        let rows = self.store.tenant_rows()?;
        let next = tenants::overlay(&pinned, &rows)?;
        let report = ReloadReport {
            path: self.path.as_ref().map(|p| p.display().to_string()),
            restart_needed,
            tenants: next.tenants.len(),
        };
        let before = summary(&running);
        let after = summary(&next);
        self.publish(&mut st, next)?;
        st.file = file;
        st.file_text = text;
        st.tenants_gen = tenants_gen;
        drop(st);
        if !report.restart_needed.is_empty() {
            tracing::warn!(
                target: "sluice::reload",
                changed = ?report.restart_needed,
                "config reloaded, but these settings only apply after a restart; they keep their running values"
            );
        }
        tracing::info!(target: "sluice::reload", actor, tenants = report.tenants, "config reloaded");
        let mut after = after;
        if let Value::Object(m) = &mut after {
            m.insert("restart_needed".into(), json!(report.restart_needed));
        }
        self.audit(NewEvent {
            ts_ms: self.app.clock().unix_ms(),
            actor: actor.to_owned(),
            action: "config.reload".into(),
            target: report.path.clone().unwrap_or_else(|| "(no file)".into()),
            before: Some(before.to_string()),
            after: Some(after.to_string()),
        });
        Ok(Some(report))
    }

    /// Re-apply the database's tenants if another process (the CLI) changed them since the
    /// current snapshot was built. Returns whether a new snapshot was published.
    pub fn refresh_tenants(&self) -> Result<bool, AdminError> {
        let mut st = self.lock()?;
        let tenants_gen = self.store.tenants_generation()?;
        if tenants_gen == st.tenants_gen {
            return Ok(false);
        }
        let rows = self.store.tenant_rows()?;
        let next = tenants::overlay(&self.pinned_file(&st), &rows)?;
        self.publish(&mut st, next)?;
        st.tenants_gen = tenants_gen;
        Ok(true)
    }

    /// Plan, validate, write (with its audit event) and publish one tenant change. Nothing
    /// is written when the result would be invalid.
    pub fn change_tenant(
        &self,
        actor: &str,
        change: &Change,
    ) -> Result<(Planned, AuditEvent), AdminError> {
        let mut st = self.lock()?;
        let file = self.pinned_file(&st);
        let rows = self.store.tenant_rows()?;
        let planned = tenants::plan(&file, &rows, change)?;
        let event = tenants::commit(&self.store, &planned, actor, self.app.clock().unix_ms())?;
        // Rebuild from what is stored now, which includes any change another process made
        // meanwhile.
        let tenants_gen = self.store.tenants_generation()?;
        let rows = self.store.tenant_rows()?;
        let next = tenants::overlay(&file, &rows)?;
        self.publish(&mut st, next)?;
        st.tenants_gen = tenants_gen;
        Ok((planned, event))
    }

    /// The file's config (restart-only settings at their running values) and the database's
    /// rows: the inputs of the current snapshot's tenants.
    pub fn sources(&self) -> Result<(Config, Vec<sluice_store::TenantRow>), AdminError> {
        let st = self.lock()?;
        Ok((self.pinned_file(&st), self.store.tenant_rows()?))
    }

    /// Append an audit event; a failure is logged (the change itself already happened).
    pub fn audit(&self, ev: NewEvent) {
        if let Err(e) = self.store.append_audit(&ev) {
            tracing::error!(target: "sluice::audit", error = %e, action = %ev.action, "cannot write the audit event");
        }
    }
}

fn summary(c: &Config) -> Value {
    json!({"tenants": c.tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>()})
}
