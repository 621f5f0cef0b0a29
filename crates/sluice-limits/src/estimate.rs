//! The estimates the limiter reserves with, before the upstream has said anything.
//!
//! - [`estimate_input`]: the input tokens of a request body, read locally in one pass (text by
//!   character class, images by the upstream's pixel formula, PDFs by pages, tools with the
//!   tool-use system prompt), and the prompt-cache prefixes the body declares.
//! - [`Correction`]: a learned per-model multiplier from the upstream's reported usage, since
//!   every model family tokenizes differently and no local rule knows the newest ones.
//! - [`OutputEstimator`]: a recent high percentile of each tenant and model's output tokens,
//!   reserved instead of `max_tokens`.
//!
//! All three are cheap enough for every request; settlement corrects whatever they miss.

mod correction;
mod hash;
mod media;
mod output;
mod scan;
mod text;

pub use correction::{Correction, CorrectionConfig, CorrectionSlot};
pub use output::{OutputConfig, OutputEstimator, OutputSlot};
pub use scan::{InputEstimate, Prefix, estimate_input, estimate_input_auto};
pub use text::TextProfile;
