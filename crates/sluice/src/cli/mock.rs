//! `sluice mock` and `sluice demo`: the fake upstream alone, or with a gateway and a demo
//! tenant in front of it. Built only with the `mock` feature (on by default).

use super::now_ms;
use super::serve::shutdown_signal;
use crate::gateway;
use anyhow::Context;
use clap::Args;
use sluice_config::Config;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;

/// `sluice demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Gateway listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Fake upstream listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub mock_listen: String,
    /// Demo database.
    #[arg(long, default_value = "./sluice-demo.db")]
    pub demo_db: PathBuf,
}

/// `sluice mock`.
#[derive(Debug, Args)]
pub struct MockArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: String,
    /// Delay before response headers.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Delay between SSE events.
    #[arg(long, default_value_t = 0)]
    pub event_interval_ms: u64,
    /// Do not send `anthropic-ratelimit-*` headers.
    #[arg(long)]
    pub no_ratelimit_headers: bool,
    /// Require this `x-api-key`.
    #[arg(long, env = "SLUICE_MOCK_API_KEY")]
    pub api_key: Option<String>,
    /// Keep recent requests for `GET /_mock/requests`.
    #[arg(long)]
    pub record: bool,
    /// Fixed output token count.
    #[arg(long)]
    pub output_tokens: Option<u64>,
}

/// Options of the fake upstream from `sluice mock`'s flags.
pub fn mock_options(a: &MockArgs) -> sluice_mock::MockOptions {
    sluice_mock::MockOptions {
        latency: Duration::from_millis(a.latency_ms),
        event_interval: Duration::from_millis(a.event_interval_ms),
        ratelimit_headers: !a.no_ratelimit_headers,
        api_key: a.api_key.clone(),
        record: a.record,
        output_tokens: a.output_tokens,
        ..sluice_mock::MockOptions::default()
    }
}

/// Runs the fake upstream until Ctrl-C or SIGTERM.
pub async fn mock(args: &MockArgs) -> anyhow::Result<()> {
    let _guard = crate::logging::init("json", "warn");
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "sluice mock upstream listening on http://{}",
        listener.local_addr()?
    );
    sluice_mock::serve(listener, mock_options(args), shutdown_signal()).await?;
    Ok(())
}

/// Runs the fake upstream and a gateway with a demo tenant until Ctrl-C or SIGTERM, after
/// printing a demo key and how to try it.
pub async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
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
        sluice_store::Store::open(&db)?.create_key("demo", "demo", None, now_ms())
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
    let _guard = crate::logging::init("text", "info");
    gateway::run(
        cfg,
        sluice_core::SecretString::new(UPSTREAM_KEY),
        listener,
        shutdown_signal(),
    )
    .await
}
