//! Sluice billing: what a call costs, in integer micro-dollars.
//!
//! The price table is the file shipped in the binary (`prices.toml` next to this crate's
//! `Cargo.toml`) with the `[[prices]]` entries of `sluice.toml` replacing or extending it.
//! [`PriceEntry`] is that file's (and the config's) schema, in US dollars per million tokens
//! as the upstream publishes them; [`PriceTable`] turns the entries into integer rates, looks
//! a model up by id, alias or prefix pattern, and prices a finished call or an admission
//! estimate, with the batch and cache multipliers and the long-context tiers applied.
//!
//! Nothing here depends on the limiter, the proxy or the store: they all price through this
//! crate.

mod cost;
mod entry;
mod table;

pub use cost::{ModelPrices, Rates, Tier};
pub use entry::{MAX_USD_PER_MTOK, PriceEntry, PriceTier};
pub use table::{PriceTable, PricingError};
