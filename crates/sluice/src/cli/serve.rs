//! `sluice serve`: the gateway in production, and the shutdown signal every long-running
//! command stops on.

use super::{Cli, load_config};
use crate::gateway;
use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;

/// `sluice serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address (overrides `server.listen`).
    #[arg(long)]
    pub listen: Option<String>,
}

/// Runs the gateway until Ctrl-C or SIGTERM.
pub async fn serve(cli: &Cli, args: &ServeArgs) -> anyhow::Result<()> {
    let mut cfg = load_config(cli)?;
    if let Some(l) = &args.listen {
        cfg.server.listen.clone_from(l);
    }
    let _guard = crate::logging::init(&cfg.log.format, &cfg.log.level);
    // Resolved before listening, so a missing key is reported at once, naming its variable.
    let key = if cfg.upstream.members.is_empty() {
        Some(gateway::upstream_key(&cfg)?)
    } else {
        gateway::upstream_members(&cfg, None)?;
        None
    };
    // Each client connection is a file descriptor.
    gateway::raise_nofile_limit(cfg.server.max_connections);
    let listener = TcpListener::bind(&cfg.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
    // The file is re-read on SIGHUP, on `POST /admin/v1/reload` and when it changes.
    let control = gateway::ControlOptions {
        config_path: cli.config.exists().then(|| cli.config.clone()),
        sighup: true,
        ..gateway::ControlOptions::default()
    };
    gateway::run_with(cfg, key, listener, control, shutdown_signal()).await
}

/// Resolves on Ctrl-C or SIGTERM.
pub(super) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
