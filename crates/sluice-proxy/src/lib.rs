//! The Sluice data plane: the request path as named steps.
//!
//! ```text
//! accept → authenticate (auth) → parse just enough (sluice-anthropic) → admit (sluice-limits)
//!        → response cache (response_cache: hit, or coalesce and store the reply)
//!        → route and forward with retries and fallbacks (forward: Call::forward, sluice-upstream)
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
pub mod response_cache;
pub mod state;
pub mod tap;

pub use api::router;
pub use auth::{KeyRing, spawn_refresher};
pub use error::GatewayError;
pub use state::{AppState, Parts};
