//! Assemble the gateway from a config and run it: open the state database, load the key ring,
//! start the ledger writer, build the upstream client, serve, and on shutdown drain in-flight
//! calls (streams included, up to `shutdown_grace_secs`) and flush every ledger row.

use anyhow::Context;
use sluice_config::{Config, LimiterBackend};
use sluice_config::{Provider, UpstreamMember};
use sluice_core::Clock;
use sluice_core::SystemClock;
use sluice_limits::backend::Period;
use sluice_limits::limiter::{Backend, Limiter, day_and_month, period_starts};
use sluice_limits::local::LocalBackend;
use sluice_limits::redis::{RedisBackend, RedisOptions};
use sluice_proxy::{AppState, KeyRing, Parts};
use sluice_store::{LedgerWriter, LedgerWriterOptions, Store};
use sluice_upstream::bedrock::BedrockOptions;
use sluice_upstream::vertex::{VertexCredentials, VertexOptions};
use sluice_upstream::{
    BreakerPolicy, MemberKind, MemberOptions, RetryPolicy, Secret, StepSpec, Upstream,
    UpstreamOptions,
};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Resolve the upstream key: `upstream.api_key`, else the variable named by `api_key_env`.
pub fn upstream_key(cfg: &Config) -> anyhow::Result<Secret> {
    if let Some(k) = &cfg.upstream.api_key {
        return Ok(Secret::new(k.clone()));
    }
    match std::env::var(&cfg.upstream.api_key_env) {
        Ok(k) if !k.is_empty() => Ok(Secret::new(k)),
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
    default_key: Option<Secret>,
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
                    .map(Secret::new),
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
    inline: Option<&String>,
    var: Option<&str>,
) -> anyhow::Result<Secret> {
    match (inline, var) {
        (Some(k), _) => Ok(Secret::new(k.clone())),
        (None, Some(var)) => match std::env::var(var) {
            Ok(k) if !k.is_empty() => Ok(Secret::new(k)),
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
    let provider = |p: Provider| match p {
        Provider::Anthropic => sluice_upstream::Provider::Anthropic,
        Provider::Bedrock => sluice_upstream::Provider::Bedrock,
        Provider::Vertex => sluice_upstream::Provider::Vertex,
    };
    cfg.upstream
        .fallbacks
        .iter()
        .map(|f| {
            let steps = f
                .then
                .iter()
                .map(|st| StepSpec {
                    model: st.model.clone(),
                    provider: st.provider.map(provider),
                    member: st.member.clone(),
                })
                .collect();
            (f.model.clone(), steps)
        })
        .collect()
}

/// The limiter of `cfg`'s backend, with every tenant's spend so far this day and month read
/// back from the ledger (so a restart does not reset budgets).
async fn build_limiter(cfg: &Arc<Config>, store: &Store) -> anyhow::Result<Limiter> {
    let backend = match cfg.limits.backend {
        LimiterBackend::Local => Backend::Local(LocalBackend::new()),
        LimiterBackend::Redis => Backend::Redis(RedisBackend::connect(RedisOptions {
            url: cfg.limits.redis_url.clone(),
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
    let (daily, monthly) = tokio::task::spawn_blocking(move || {
        Ok::<_, sluice_store::StoreError>((s.spend_since(day_start)?, s.spend_since(month_start)?))
    })
    .await?
    .context("cannot read spend so far from the ledger")?;
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

/// A gateway running in this process.
pub struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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
    key: impl Into<Option<Secret>>,
    listener: TcpListener,
) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    // A missing member key is a startup error, not one found at shutdown.
    let members = upstream_members(&cfg, key.into())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(cfg, members, listener, async move {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        stop: Some(tx),
        task,
    })
}

/// Run the gateway until `shutdown` resolves, then drain and flush. `key` as in [`start`].
pub async fn run(
    cfg: Config,
    key: impl Into<Option<Secret>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let members = upstream_members(&cfg, key.into())?;
    serve(cfg, members, listener, shutdown).await
}

async fn serve(
    cfg: Config,
    members: Vec<MemberOptions>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store_path = cfg.store.path.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&store_path))
        .await?
        .with_context(|| format!("cannot open the state database {}", cfg.store.path))?;
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
    let writer = LedgerWriter::start(
        store.path(),
        LedgerWriterOptions {
            queue_capacity: cfg.store.ledger_queue_capacity,
            batch_max: cfg.store.ledger_batch_max,
            flush_interval: Duration::from_millis(cfg.store.ledger_flush_interval_ms),
        },
    )
    .context("cannot start the ledger writer")?;
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
        },
    })?;
    let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
    let tenants = cfg.tenants.len();
    let config = sluice_config::shared(cfg);
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
    let app = sluice_proxy::router(state);
    tracing::info!(addr = %listener.local_addr()?, tenants, "sluice listening");
    if tenants == 0 {
        tracing::warn!(
            "no [[tenants]] in the config: every key will be refused (see examples/sluice.toml)"
        );
    }

    let stopping = Arc::new(tokio::sync::Notify::new());
    let notify = stopping.clone();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        // Small request/response exchanges must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight calls");
        notify.notify_one();
    });
    let result = tokio::select! {
        r = server => r.map_err(anyhow::Error::from),
        () = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period over; closing the remaining connections");
            Ok(())
        }
    };
    refresher.abort();
    let stats = writer.sender().stats().clone();
    tokio::task::spawn_blocking(move || writer.shutdown()).await?;
    tracing::info!(
        written = stats.written.load(std::sync::atomic::Ordering::Relaxed),
        dropped = stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        "ledger flushed; stopped"
    );
    result
}
