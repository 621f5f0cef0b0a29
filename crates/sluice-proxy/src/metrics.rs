//! Prometheus metrics of the data plane (issue #5): rendered in the text exposition format for
//! `GET /metrics` on the admin listener.

use crate::state::AppState;

/// The metrics in the Prometheus text format.
pub fn render(state: &AppState) -> String {
    let _ = state;
    String::new()
}
