//! `[[prices]]`: per-model prices that override or extend the price table shipped in the
//! binary. (Placeholder: the pricing work fills this in.)

use serde::Deserialize;

/// One model's prices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    /// Model id.
    pub model: String,
}
