//! `sluice`: the one binary. See `sluice --help`.

use anyhow::Context;
use clap::Parser;
use sluice::cli::{self, Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Keys(k) => cli::keys(&cli, k),
        Command::Usage(u) => cli::usage(&cli, u),
        Command::Tenants(t) => cli::tenants(&cli, t),
        Command::Audit(a) => cli::audit(&cli, a),
        Command::Report(r) => cli::report(&cli, r),
        Command::Serve(a) => runtime()?.block_on(cli::serve(&cli, a)),
        #[cfg(feature = "mock")]
        Command::Demo(a) => runtime()?.block_on(cli::demo(a)),
        #[cfg(feature = "mock")]
        Command::Mock(a) => runtime()?.block_on(cli::mock(a)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
