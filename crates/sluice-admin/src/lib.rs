//! The Sluice control plane (issue #5): the admin API on its own listener, tenants created and
//! edited through it (kept in the state database and overlaid on the config file's), key
//! management with rotation, the append-only audit trail, and hot reload of the config.
//!
//! It sits above the data plane: it reads the data plane's [`sluice_proxy::AppState`] and swaps
//! its config snapshot, and the data plane never imports it. Like every crate below the binary
//! it reads neither the environment nor signals: the binary resolves admin tokens
//! ([`auth::TokenResolver`]) and turns SIGHUP into [`reload::Reloader::reload`].

pub mod api;
pub mod auth;
pub mod authfail;
pub mod error;
pub mod openapi;
pub mod reload;
pub mod tenants;
pub mod watch;

pub use api::router;
pub use error::AdminError;
pub use reload::{ReloadReport, Reloader};

use std::sync::Arc;

/// The admin API's state: one cheap-to-clone handle.
#[derive(Clone, Debug)]
pub struct Admin(Arc<Reloader>);

impl Admin {
    /// The admin API over `reloader` (which holds the data plane's state and the store).
    pub fn new(reloader: Arc<Reloader>) -> Self {
        Self(reloader)
    }

    /// The reloader.
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.0
    }
}
