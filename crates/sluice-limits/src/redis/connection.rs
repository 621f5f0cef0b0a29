//! The connection to Redis and its liveness: connecting (scripts loaded), telling an outage
//! from a bad reply, marking Redis down once per outage, and reconnecting while it is down.

use super::Shared;
use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a replica whose Redis is down tries again.
pub(super) const RETRY_EVERY: Duration = Duration::from_millis(250);

/// The live connection and its generation (so a failure seen on an old connection does not
/// take down a new one).
pub(super) struct Live {
    pub(super) generation: u64,
    pub(super) conn: MultiplexedConnection,
}

/// Why one Redis call failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error("{0}")]
    Redis(#[from] RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply: {0}")]
    Reply(String),
}

impl CallError {
    /// True when the error says Redis is unreachable or unusable (rather than that one script
    /// call went wrong, which a reconnect would not cure).
    pub(super) fn is_outage(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Reply(_) => false,
            Self::Redis(e) => !matches!(
                e.kind(),
                ErrorKind::Server(ServerErrorKind::ResponseError)
                    | ErrorKind::Parse
                    | ErrorKind::UnexpectedReturnType
            ),
        }
    }
}

impl Shared {
    /// Until the first connection attempt has ended (bounded by the timeout), so a call made
    /// just after startup uses Redis rather than the fallback.
    pub(super) async fn wait_started(&self) {
        let started = *self.started.borrow();
        if !started {
            let mut rx = self.started.subscribe();
            let _ = tokio::time::timeout(self.opts.timeout, rx.wait_for(|s| *s)).await;
        }
    }

    /// A call on `live` failed: count it, and on an outage mark Redis down (once per outage,
    /// logged) and wake the reconnect task.
    pub(super) fn failed(&self, live: &Live, e: &CallError, what: &str) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        if !e.is_outage() {
            // Redis answered, wrongly: a reconnect would not help. Logged sparingly, as it
            // would repeat on every call.
            if n.is_multiple_of(1000) {
                tracing::error!(error = %e, what, "Redis limiter call failed; answering by fail_mode");
            }
            return;
        }
        let current = self.live.load();
        let same = current
            .as_ref()
            .is_some_and(|c| c.generation == live.generation);
        if same {
            let prev = self.live.swap(None);
            if prev.is_some() {
                self.outages.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    error = %e,
                    what,
                    fail_mode = ?self.opts.fail_mode,
                    "Redis limiter unreachable; falling back until it answers"
                );
                self.wake.notify_one();
            }
        }
    }

    async fn try_connect(&self, generation: u64) -> Result<Live, CallError> {
        let Some(client) = &self.client else {
            return Err(CallError::Reply("invalid Redis URL".into()));
        };
        let t = self.opts.timeout;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(t))
            .set_response_timeout(Some(t));
        let bounded = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            ::redis::cmd("PING").query_async::<()>(&mut conn).await?;
            // Load the scripts now so the first EVALSHA of each finds it (one round trip).
            for s in [
                &self.scripts.admit,
                &self.scripts.settle,
                &self.scripts.observe,
            ] {
                s.load_async(&mut conn).await?;
            }
            Ok::<_, CallError>(conn)
        };
        match tokio::time::timeout(t * 4, bounded).await {
            Ok(Ok(conn)) => Ok(Live { generation, conn }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CallError::Timeout(t * 4)),
        }
    }
}

/// Connect, and reconnect every [`RETRY_EVERY`] while Redis is down.
pub(super) async fn reconnect_loop(sh: Arc<Shared>) {
    let mut generation = 0u64;
    let mut first = true;
    let mut logged = false;
    loop {
        if sh.shutdown.load(Ordering::SeqCst) {
            sh.live.store(None);
            return;
        }
        if sh.live.load().is_some() {
            sh.wake.notified().await;
            continue;
        }
        generation += 1;
        match sh.try_connect(generation).await {
            Ok(live) => {
                sh.live.store(Some(Arc::new(live)));
                if first {
                    tracing::info!(url = %sluice_core::redact_url(&sh.opts.url), "Redis limiter connected");
                } else {
                    tracing::info!(url = %sluice_core::redact_url(&sh.opts.url), "Redis limiter reachable again; using it");
                }
                logged = false;
            }
            Err(e) => {
                if first && !logged {
                    sh.outages.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        url = %sluice_core::redact_url(&sh.opts.url),
                        error = %e,
                        fail_mode = ?sh.opts.fail_mode,
                        "Redis limiter unreachable at startup; falling back until it answers"
                    );
                    logged = true;
                }
            }
        }
        if first {
            first = false;
            sh.started.send_replace(true);
        }
        if sh.live.load().is_none() {
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}
