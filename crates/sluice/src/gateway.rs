//! Assemble the gateway from a config and run it: open the state database, load the key ring,
//! start the ledger writer, build the upstream client, serve, and on shutdown drain in-flight
//! calls (streams included, up to `shutdown_grace_secs`) and flush every ledger row.

use anyhow::Context;
use sluice_config::{Config, LimiterBackend};
use sluice_config::{Provider, UpstreamMember};
use sluice_core::Clock;
use sluice_core::SecretString;
use sluice_core::SystemClock;
use sluice_limits::backend::Period;
use sluice_limits::limiter::{Backend, Limiter, day_and_month, period_starts};
use sluice_limits::local::LocalBackend;
use sluice_limits::redis::{RedisBackend, RedisOptions};
use sluice_proxy::{AppState, KeyRing, Parts};
use sluice_store::ledger::RetryOptions;
use sluice_store::{LedgerWriter, LedgerWriterOptions, Store};
use sluice_upstream::bedrock::BedrockOptions;
use sluice_upstream::vertex::{VertexCredentials, VertexOptions};
use sluice_upstream::{
    BreakerPolicy, MemberKind, MemberOptions, RetryPolicy, StepSpec, Upstream, UpstreamOptions,
};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub use crate::transport::raise_nofile_limit;

/// Resolve the upstream key: `upstream.api_key`, else the variable named by `api_key_env`.
pub fn upstream_key(cfg: &Config) -> anyhow::Result<SecretString> {
    if let Some(k) = &cfg.upstream.api_key {
        return Ok(k.clone());
    }
    match std::env::var(&cfg.upstream.api_key_env) {
        Ok(k) if !k.is_empty() => Ok(SecretString::new(k)),
        _ => anyhow::bail!(
            "no upstream API key: set {} (or upstream.api_key in the config)",
            cfg.upstream.api_key_env
        ),
    }
}

/// The upstream's members with their keys: the `[[upstream.members]]` (each key from its
/// `api_key`, else its `api_key_env` variable), or, when none is declared, one member named
/// `anthropic` holding `default_key` (else the key [`upstream_key`] resolves).
pub fn upstream_members(
    cfg: &Config,
    default_key: Option<SecretString>,
) -> anyhow::Result<Vec<MemberOptions>> {
    if cfg.upstream.members.is_empty() {
        let api_key = match default_key {
            Some(k) => k,
            None => upstream_key(cfg)?,
        };
        return Ok(vec![MemberOptions {
            name: "anthropic".into(),
            weight: 1,
            models: Default::default(),
            kind: MemberKind::Anthropic {
                api_key,
                base_url: None,
            },
        }]);
    }
    let timeout = Duration::from_millis(cfg.upstream.connect_timeout_ms.max(1000) * 2);
    cfg.upstream
        .members
        .iter()
        .map(|m| {
            let kind = match m.provider {
                Provider::Anthropic => MemberKind::Anthropic {
                    api_key: secret(m, "API key", m.api_key.as_ref(), m.api_key_env.as_deref())?,
                    base_url: m.base_url.clone(),
                },
                Provider::Bedrock => MemberKind::Bedrock(BedrockOptions {
                    region: m.region.clone().unwrap_or_default(),
                    endpoint: m.base_url.clone(),
                    access_key_id: secret(
                        m,
                        "AWS access key id",
                        m.aws_access_key_id.as_ref(),
                        Some(
                            m.aws_access_key_id_env
                                .as_deref()
                                .unwrap_or("AWS_ACCESS_KEY_ID"),
                        ),
                    )?
                    .expose()
                    .to_owned(),
                    secret_access_key: secret(
                        m,
                        "AWS secret access key",
                        m.aws_secret_access_key.as_ref(),
                        Some(
                            m.aws_secret_access_key_env
                                .as_deref()
                                .unwrap_or("AWS_SECRET_ACCESS_KEY"),
                        ),
                    )?,
                    session_token: std::env::var(
                        m.aws_session_token_env
                            .as_deref()
                            .unwrap_or("AWS_SESSION_TOKEN"),
                    )
                    .ok()
                    .filter(|t| !t.is_empty())
                    .map(SecretString::new),
                }),
                Provider::Vertex => MemberKind::Vertex(VertexOptions {
                    project: m.project.clone().unwrap_or_default(),
                    region: m.region.clone().unwrap_or_default(),
                    base_url: m.base_url.clone(),
                    credentials: match &m.credentials_file {
                        Some(f) => VertexCredentials::ServiceAccountFile(f.into()),
                        None => VertexCredentials::Metadata {
                            base_url: m.metadata_url.clone(),
                        },
                    },
                    timeout,
                }),
            };
            Ok(MemberOptions {
                name: m.name.clone(),
                weight: m.weight,
                models: m.models.clone(),
                kind,
            })
        })
        .collect()
}

/// A member's credential: inline, else from its environment variable.
fn secret(
    m: &UpstreamMember,
    what: &str,
    inline: Option<&SecretString>,
    var: Option<&str>,
) -> anyhow::Result<SecretString> {
    match (inline, var) {
        (Some(k), _) => Ok(k.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(k) if !k.is_empty() => Ok(SecretString::new(k)),
            _ => anyhow::bail!(
                "no {what} for upstream member '{}': set {var} (or put it in the config)",
                m.name
            ),
        },
        // Validation refuses a member without either; say so rather than panic.
        (None, None) => anyhow::bail!("upstream member '{}' has no {what}", m.name),
    }
}

/// The fallback chains of `cfg`, for the upstream client.
fn fallbacks(cfg: &Config) -> Vec<(String, Vec<StepSpec>)> {
    cfg.upstream
        .fallbacks
        .iter()
        .map(|f| {
            let steps = f
                .then
                .iter()
                .map(|st| StepSpec {
                    model: st.model.clone(),
                    provider: st.provider,
                    member: st.member.clone(),
                })
                .collect();
            (f.model.clone(), steps)
        })
        .collect()
}

/// The limiter of `cfg`'s backend, with every tenant's spend so far this day and month read
/// back from the ledger (so a restart does not reset budgets), counted from a tenant's latest
/// deletion when it was deleted in the period (so a re-created one does not inherit it).
async fn build_limiter(cfg: &Arc<Config>, store: &Store) -> anyhow::Result<Limiter> {
    let backend = match cfg.limits.backend {
        LimiterBackend::Local => Backend::Local(LocalBackend::new()),
        LimiterBackend::Redis => Backend::Redis(RedisBackend::connect(RedisOptions {
            url: cfg.limits.redis_url.expose().to_owned(),
            prefix: cfg.limits.redis_prefix.clone(),
            timeout: Duration::from_millis(cfg.limits.redis_timeout_ms),
            fail_mode: cfg.limits.fail_mode,
            fallback_share: cfg.limits.fallback_share,
            ..RedisOptions::default()
        })),
    };
    let limiter = Limiter::new(cfg, backend).context("invalid limits in the config")?;
    let now = SystemClock.unix_ms();
    let (day, month) = day_and_month(now);
    let (day_start, month_start) = period_starts(now);
    let s = store.clone();
    let url = cfg.store.database_url().map(str::to_owned);
    let spend = tokio::task::spawn_blocking(move || {
        let db = sluice_store::LedgerDb::open(&s, url.as_deref())?;
        let mut daily = db.spend_since(day_start)?;
        let mut monthly = db.spend_since(month_start)?;
        // A tenant deleted this month may have been re-created under the same name: its
        // budgets count only what was spent after the deletion (the old rows stay, as history).
        for (tenant, deleted) in s.tenant_deletions_since(month_start)? {
            for (rows, start) in [(&mut daily, day_start), (&mut monthly, month_start)] {
                if deleted >= start {
                    let since = db.tenant_spend_since(&tenant, deleted)?;
                    rows.retain(|(t, _)| *t != tenant);
                    rows.push((tenant.clone(), since));
                }
            }
        }
        Ok::<_, sluice_store::StoreError>((daily, monthly))
    })
    .await?;
    let (daily, monthly) = match spend {
        Ok(spend) => spend,
        // An unreachable shared ledger must not keep the gateway down (its rows are spooled
        // meanwhile); this replica's budgets then count from zero until its next start.
        Err(e) if cfg.store.database_url.is_some() => {
            tracing::error!(
                error = %e,
                "cannot read spend so far from the Postgres ledger; budgets start from zero"
            );
            (Vec::new(), Vec::new())
        }
        Err(e) => {
            return Err(anyhow::Error::from(e).context("cannot read spend so far from the ledger"));
        }
    };
    for (tenant, micros) in daily {
        let m = u64::try_from(micros).unwrap_or(0);
        limiter.add_spend(&tenant, Period::Day, day, m).await;
    }
    for (tenant, micros) in monthly {
        let m = u64::try_from(micros).unwrap_or(0);
        limiter.add_spend(&tenant, Period::Month, month, m).await;
    }
    Ok(limiter)
}

/// Start the ledger writer `[store]` asks for: into PostgreSQL with an on-disk spool when
/// `database_url` is set, else into the SQLite state database at `sqlite`. On a blocking thread:
/// opening a spool counts the rows an earlier run left in it.
async fn start_ledger(
    store: &sluice_config::StoreConfig,
    sqlite: std::path::PathBuf,
) -> anyhow::Result<LedgerWriter> {
    let opts = LedgerWriterOptions {
        queue_capacity: store.ledger_queue_capacity,
        batch_max: store.ledger_batch_max,
        flush_interval: Duration::from_millis(store.ledger_flush_interval_ms),
    };
    let url = store.database_url().map(str::to_owned);
    let spool = sluice_store::spool::SpoolOptions {
        max_bytes: store.spool_max_bytes,
        ..sluice_store::spool::SpoolOptions::new(store.spool_dir())
    };
    let writer = tokio::task::spawn_blocking(move || match url {
        Some(url) => LedgerWriter::start_postgres(&url, spool, opts, RetryOptions::default()),
        None => LedgerWriter::start(&sqlite, opts),
    })
    .await?
    .context("cannot start the ledger writer")?;
    if store.database_url.is_some() {
        tracing::info!(spool_dir = %store.spool_dir(), "ledger: PostgreSQL, spooling to disk while it is unreachable");
    }
    Ok(writer)
}

/// A gateway running in this process.
pub struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The data plane's state, once assembled (metrics and other in-process inspection).
    state: Arc<std::sync::OnceLock<AppState>>,
    admin_addr: Option<SocketAddr>,
}

impl Running {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The data plane's state, once the gateway has assembled it (it is by the time it
    /// answers calls).
    pub fn state(&self) -> Option<&AppState> {
        self.state.get()
    }

    /// Where the admin API listens (`None`: disabled, or its address was taken).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Shut down gracefully and wait until every ledger row is written.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.context("gateway task failed")?
    }
}

/// Start the gateway on `listener` in a background task. `key` is the single member's key when
/// no `[[upstream.members]]` are declared (see [`upstream_members`]).
pub async fn start(
    cfg: Config,
    key: impl Into<Option<SecretString>>,
    listener: TcpListener,
) -> anyhow::Result<Running> {
    start_with(cfg, key, listener, ControlOptions::default()).await
}

/// [`start`] with control-plane options (the config file to reload, the admin listener).
pub async fn start_with(
    cfg: Config,
    key: impl Into<Option<SecretString>>,
    listener: TcpListener,
    control: ControlOptions,
) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    // A missing member key is a startup error, not one found at shutdown.
    let members = upstream_members(&cfg, key.into())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let state = Arc::new(std::sync::OnceLock::new());
    let slot = Some(state.clone());
    let mut control = control;
    if control.admin_listener.is_none() {
        control.admin_listener = bind_admin(&cfg).await;
    }
    let admin_addr = control
        .admin_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok());
    let task = tokio::spawn(serve(cfg, members, listener, slot, control, async move {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        stop: Some(tx),
        task,
        state,
        admin_addr,
    })
}

/// Run the gateway until `shutdown` resolves, then drain and flush. `key` as in [`start`].
pub async fn run(
    cfg: Config,
    key: impl Into<Option<SecretString>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(cfg, key, listener, ControlOptions::default(), shutdown).await
}

/// [`run`] with control-plane options (`sluice serve`: the config file, SIGHUP).
pub async fn run_with(
    cfg: Config,
    key: impl Into<Option<SecretString>>,
    listener: TcpListener,
    mut control: ControlOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let members = upstream_members(&cfg, key.into())?;
    if control.admin_listener.is_none() {
        control.admin_listener = bind_admin(&cfg).await;
    }
    serve(cfg, members, listener, None, control, shutdown).await
}

async fn serve(
    cfg: Config,
    members: Vec<MemberOptions>,
    listener: TcpListener,
    slot: Option<Arc<std::sync::OnceLock<AppState>>>,
    control: ControlOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // With `database_url` the state store (keys, batches, tenants, audit) is in PostgreSQL,
    // shared with every other replica; else in the SQLite database beside the ledger.
    let (store_path, url) = (
        cfg.store.path.clone(),
        cfg.store.database_url().map(str::to_owned),
    );
    let store =
        tokio::task::spawn_blocking(move || Store::open_config(&store_path, url.as_deref()))
            .await?
            .with_context(|| match &cfg.store.database_url {
                Some(_) => {
                    "cannot open the state store in PostgreSQL (store.database_url)".to_owned()
                }
                None => format!("cannot open the state database {}", cfg.store.path),
            })?;
    let (cfg, file_cfg, tenants_gen) = with_db_tenants(&store, cfg).await?;
    let keys = Arc::new(KeyRing::new());
    {
        let (k, s) = (keys.clone(), store.clone());
        tokio::task::spawn_blocking(move || k.refresh(&s))
            .await?
            .context("cannot load gateway keys")?;
    }
    let refresher = sluice_proxy::spawn_refresher(
        keys.clone(),
        store.clone(),
        Duration::from_millis(cfg.auth.key_refresh_ms.max(50)),
    );
    let writer = start_ledger(&cfg.store, store.path().to_path_buf()).await?;
    let upstream = Upstream::new(UpstreamOptions {
        name: "anthropic".into(),
        base_url: cfg.upstream.base_url.clone(),
        members,
        fallbacks: fallbacks(&cfg),
        affinity: cfg.upstream.affinity,
        affinity_load_factor: cfg.upstream.affinity_load_factor,
        breaker: BreakerPolicy {
            failures: cfg.upstream.breaker_failures,
            open_for: Duration::from_millis(cfg.upstream.breaker_open_ms),
        },
        connect_timeout: Duration::from_millis(cfg.upstream.connect_timeout_ms),
        first_byte_timeout: Duration::from_millis(cfg.upstream.first_byte_timeout_ms),
        pool_max_idle_per_host: cfg.upstream.pool_max_idle_per_host,
        pool_idle_timeout: Duration::from_secs(cfg.upstream.pool_idle_timeout_secs),
        retry: RetryPolicy {
            max_attempts: cfg.upstream.max_attempts,
            statuses: cfg.upstream.retry_statuses.clone(),
            base: Duration::from_millis(cfg.upstream.retry_base_ms),
            max_backoff: Duration::from_millis(cfg.upstream.retry_max_backoff_ms),
            deadline: Duration::from_millis(cfg.upstream.retry_deadline_ms),
            retry_messages_on_first_byte_timeout: cfg.upstream.retry_on_first_byte_timeout,
        },
    })?;
    let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
    let tenants = cfg.tenants.len();
    let cfg_public_url_unset = cfg.server.public_url.is_none();
    let config = sluice_config::shared(cfg);
    let shared = config.clone();
    let limiter = build_limiter(&config.load_full(), &store).await?;
    let state = AppState::new(Parts {
        limiter,
        config,
        keys,
        upstream,
        ledger: writer.sender(),
        store,
        clock: Arc::new(SystemClock),
    });
    // Alert rules run beside the data plane and stop with it.
    let alerts = sluice_telemetry::alerts::spawn(state.clone());
    if let Some(slot) = slot {
        let _ = slot.set(state.clone());
    }
    let control = start_control(&state, shared, file_cfg, tenants_gen, control)?;
    let app = sluice_proxy::router(state.clone());
    tracing::info!(addr = %listener.local_addr()?, tenants, "sluice listening");
    if cfg_public_url_unset {
        tracing::warn!(
            "server.public_url is not set: batch results_url is built from the client's Host header over http://; set it to the URL clients reach the gateway at"
        );
    }
    if tenants == 0 {
        tracing::warn!(
            "no [[tenants]] in the config: every key will be refused (see examples/sluice.toml)"
        );
    }

    let server_cfg = state.config().server.clone();
    // Validation keeps it within 1..=1_000_000, so the permit count below fits a u32.
    let max = server_cfg.max_connections.max(1);
    let limits = crate::transport::Limits {
        header_read: Duration::from_millis(server_cfg.header_read_timeout_ms),
        idle: Duration::from_secs(server_cfg.idle_timeout_secs),
        max_connections: max,
    };
    let conns = Arc::new(tokio::sync::Semaphore::new(max));
    let stop = crate::transport::Stop::default();
    let accept = tokio::spawn(crate::transport::accept_loop(
        listener,
        app,
        limits,
        conns.clone(),
        stop.clone(),
    ));
    shutdown.await;
    tracing::info!("shutting down: draining in-flight calls");
    stop.drain.cancel();
    let _ = accept.await;
    // Every connection holds a permit until it closes: all of them back means all are closed.
    let permits = u32::try_from(max).unwrap_or(u32::MAX);
    let all_closed = || {
        let c = conns.clone();
        async move { drop(c.acquire_many(permits).await) }
    };
    if tokio::time::timeout(grace, all_closed()).await.is_err() {
        tracing::warn!(?grace, "grace period over; ending the remaining calls");
        // Streams end with an error event and record `shutdown`; give those events a moment
        // to reach their clients, then drop what is left (each dropped call records
        // `shutdown` too), and wait for the drops so every row is queued before the flush.
        state.end_of_grace();
        let _ = tokio::time::timeout(Duration::from_millis(500), all_closed()).await;
        stop.kill.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), all_closed()).await;
    }
    refresher.abort();
    drop(alerts);
    drop(control);
    let stats = writer.sender().stats().clone();
    tokio::task::spawn_blocking(move || writer.shutdown()).await?;
    tracing::info!(
        written = stats.written.load(std::sync::atomic::Ordering::Relaxed),
        dropped = stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        "ledger flushed; stopped"
    );
    Ok(())
}

/// Control-plane options of [`start_with`] and [`run_with`].
#[derive(Debug)]
pub struct ControlOptions {
    /// The config file: reloaded on `POST /admin/v1/reload`, SIGHUP and (with
    /// `admin.watch_config`) when it changes. `None`: reloads re-apply the database's tenants.
    pub config_path: Option<std::path::PathBuf>,
    /// The admin listener; `None`: bind `admin.listen` when `admin.enabled`.
    pub admin_listener: Option<TcpListener>,
    /// Reload on SIGHUP (`sluice serve`; not for gateways inside another program).
    pub sighup: bool,
    /// Window of the failed-authentication audit events (one per source per window).
    pub auth_failure_window: Duration,
}

impl Default for ControlOptions {
    fn default() -> Self {
        Self {
            config_path: None,
            admin_listener: None,
            sighup: false,
            auth_failure_window: Duration::from_secs(60),
        }
    }
}

/// Bind `admin.listen`. A taken address does not stop the gateway (the data plane does not
/// need the admin API); it is logged as an error.
async fn bind_admin(cfg: &Config) -> Option<TcpListener> {
    if !cfg.admin.enabled {
        return None;
    }
    match TcpListener::bind(&cfg.admin.listen).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(
                listen = %cfg.admin.listen,
                error = %e,
                "cannot listen for the admin API; it and /metrics are unavailable (set [admin] listen, or enabled = false)"
            );
            None
        }
    }
}

/// The file's config with the state database's tenants overlaid: (effective, file, tenants
/// generation).
async fn with_db_tenants(store: &Store, file: Config) -> anyhow::Result<(Config, Config, i64)> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        let (cfg, generation) =
            sluice_admin::reload::startup_config(&s, &file).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((cfg, file, generation))
    })
    .await?
}

/// The control plane's tasks; dropping it stops them.
struct Control {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _watch: Option<sluice_admin::watch::FileWatch>,
}

impl Drop for Control {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Start the admin API, the reload triggers and the failed-authentication auditor.
fn start_control(
    state: &AppState,
    shared: sluice_config::SharedConfig,
    file: Config,
    tenants_gen: i64,
    opts: ControlOptions,
) -> anyhow::Result<Control> {
    use sluice_admin::{Admin, Reloader, auth};
    let cfg = shared.load_full();
    let resolver: auth::TokenResolver =
        Arc::new(|t| auth::resolve_tokens(t, |var| std::env::var(var).ok()));
    let reloader = Arc::new(
        Reloader::new(
            state.clone(),
            shared,
            state.store().clone(),
            opts.config_path,
            file,
            tenants_gen,
            resolver,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let mut tasks = Vec::new();
    let (hook, t) = sluice_admin::authfail::spawn(
        state.store().clone(),
        opts.auth_failure_window,
        Arc::new(|| SystemClock.unix_ms()),
    );
    state.set_auth_failure_hook(hook);
    tasks.push(t);
    tasks.push(sluice_admin::watch::poll_tenants(
        reloader.clone(),
        Duration::from_millis(cfg.auth.key_refresh_ms.max(50)),
    ));
    let watch = if cfg.admin.watch_config {
        sluice_admin::watch::watch_file(
            reloader.clone(),
            Duration::from_millis(cfg.admin.watch_debounce_ms),
        )
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "config file not watched (SIGHUP and POST /admin/v1/reload still work)");
            None
        })
    } else {
        None
    };
    if let Some(l) = opts.admin_listener {
        let addr = l.local_addr()?;
        let app = sluice_admin::router(Admin::new(reloader.clone()));
        tracing::info!(admin = %addr, tokens = cfg.admin.tokens.len(), "admin API listening");
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        }));
    }
    #[cfg(unix)]
    if opts.sighup {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let r = reloader.clone();
        tasks.push(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let r = r.clone();
                match tokio::task::spawn_blocking(move || r.reload("signal:SIGHUP", true)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(
                        target: "sluice::reload",
                        error = %e,
                        "config reload on SIGHUP refused; the running config stays"
                    ),
                    Err(e) => tracing::error!(error = %e, "reload task failed"),
                }
            }
        }));
    }
    Ok(Control {
        tasks,
        _watch: watch,
    })
}
