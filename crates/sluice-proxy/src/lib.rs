//! The Sluice data plane: the request path as named steps.
//!
//! ```text
//! accept → authenticate (auth) → parse just enough (sluice-anthropic)
//!        → response cache (response_cache: a hit is answered here; else coalesce, and store
//!          the reply) → admit (sluice-limits)
//!        → route and forward with retries and fallbacks (forward: Call::forward, sluice-upstream;
//!          each attempt's body with the prompt-cache markers of its provider: prompt_cache)
//!        → tap usage (tap / call) → respond → record (call → ledger queue + log line)
//! ```
//!
//! This crate never imports the control plane.

pub mod api;
pub mod auth;
pub mod batches;
pub mod call;
pub mod error;
mod forward;
pub mod headers;
pub mod models_cache;
mod prompt_cache;
pub mod response_cache;
pub mod state;
pub mod tap;

pub use api::router;
pub use auth::{KeyRing, spawn_refresher};
pub use error::GatewayError;
pub use state::{AppState, Parts};
