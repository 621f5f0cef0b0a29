//! The `sluice` binary's library half: assembling and running the gateway (used by `serve`,
//! `demo` and the integration tests), and the CLI commands. Only this crate reads the
//! environment, the real clock and signals; everything below is handed what it needs.

pub mod cli;
pub mod gateway;
pub mod logging;
pub mod transport;
