//! `sluice`: the one binary. See `sluice --help`.

use anyhow::Context;
use clap::Parser;
use sluice::cli::{self, Cli, Command};
use sluice::gateway;
use sluice_config::Config;
use tokio::net::TcpListener;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Keys(k) => cli::keys(&cli, k),
        Command::Usage(u) => cli::usage(&cli, u),
        Command::Tenants(t) => cli::tenants(&cli, t),
        Command::Audit(a) => cli::audit(&cli, a),
        Command::Report(r) => cli::report(&cli, r),
        Command::Serve(a) => runtime()?.block_on(serve(&cli, a)),
        Command::Demo(a) => runtime()?.block_on(demo(a)),
        Command::Mock(a) => runtime()?.block_on(mock(a)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
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

async fn serve(cli: &Cli, args: &cli::ServeArgs) -> anyhow::Result<()> {
    let mut cfg = cli::load_config(cli)?;
    if let Some(l) = &args.listen {
        cfg.server.listen.clone_from(l);
    }
    let _guard = sluice::logging::init(&cfg.log.format, &cfg.log.level);
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

async fn mock(args: &cli::MockArgs) -> anyhow::Result<()> {
    let _guard = sluice::logging::init("json", "warn");
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "sluice mock upstream listening on http://{}",
        listener.local_addr()?
    );
    sluice_mock::serve(listener, cli::mock_options(args), shutdown_signal()).await?;
    Ok(())
}

async fn demo(args: &cli::DemoArgs) -> anyhow::Result<()> {
    const UPSTREAM_KEY: &str = "sk-ant-demo-upstream-key";
    let mock_listener = TcpListener::bind(&args.mock_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.mock_listen))?;
    let mock_addr = mock_listener.local_addr()?;
    let mock_opts = sluice_mock::MockOptions {
        api_key: Some(UPSTREAM_KEY.into()),
        ..sluice_mock::MockOptions::default()
    };
    tokio::spawn(sluice_mock::serve(
        mock_listener,
        mock_opts,
        std::future::pending(),
    ));

    let toml = format!(
        "[server]\nlisten = {listen:?}\nshutdown_grace_secs = 5\n\
         [upstream]\nbase_url = \"http://{mock_addr}\"\n\
         [store]\npath = {db:?}\n\
         [log]\nformat = \"text\"\n\
         [[tenants]]\nname = \"demo\"\ndescription = \"the demo tenant\"\n",
        listen = args.listen,
        db = args.demo_db.display().to_string(),
    );
    let cfg = Config::from_toml(&toml)?;
    let listener = TcpListener::bind(&cfg.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    let db = cfg.store.path.clone();
    let key = tokio::task::spawn_blocking(move || {
        sluice_store::Store::open(&db)?.create_key("demo", "demo", None, cli::now_ms())
    })
    .await??;
    println!(
        r#"
Sluice demo: gateway on http://{addr}, fake upstream on http://{mock_addr}
Tenant "demo", key {id} (database {db}).

Try it:

  curl -s http://{addr}/v1/messages \
    -H "x-api-key: {secret}" -H "anthropic-version: 2023-06-01" \
    -H "content-type: application/json" -H "x-sluice-feature: demo" \
    -d '{{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{{"role":"user","content":"Hello"}}]}}'

  python3 -c 'import anthropic; c = anthropic.Anthropic(base_url="http://{addr}", api_key="{secret}"); print(c.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[{{"role":"user","content":"Hello"}}]).content[0].text)'

  # TypeScript: new Anthropic({{ baseURL: "http://{addr}", apiKey: "{secret}" }})

Then: sluice usage --db {db}        (Ctrl-C stops the demo; production is `sluice serve`)
Your demo key:
{secret}
"#,
        id = key.record.id,
        secret = key.secret,
        db = args.demo_db.display(),
    );
    let _guard = sluice::logging::init("text", "info");
    gateway::run(
        cfg,
        sluice_core::SecretString::new(UPSTREAM_KEY),
        listener,
        shutdown_signal(),
    )
    .await
}
