//! Runs the mock on a port for manual use and load checks:
//! `cargo run --release -p sluice-mock --example serve -- 127.0.0.1:8089`, then for example
//! `wrk -t2 -c64 -d5s -s crates/sluice-mock/examples/post.lua http://127.0.0.1:8089/v1/messages`.

use std::net::SocketAddr;

use sluice_mock::{MockOptions, serve};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8089".to_owned())
        .parse()
        .map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("sluice-mock listening on http://{}", listener.local_addr()?);
    serve(listener, MockOptions::default(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
