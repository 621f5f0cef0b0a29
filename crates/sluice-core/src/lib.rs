//! Sluice core types shared by every other crate: token usage, the wire error kinds Sluice can
//! produce, the clock abstraction, the upstream provider kind and the never-printed secret
//! string. This crate does no I/O and reads neither the environment nor the wall clock directly
//! (a [`Clock`] is passed in), so the layers above can be tested with controlled time.

pub mod clock;
pub mod error;
pub mod provider;
pub mod redact;
pub mod secret;
pub mod usage;

pub use clock::{Clock, SystemClock};
pub use error::ErrorKind;
pub use provider::Provider;
pub use redact::redact_url;
pub use secret::SecretString;
pub use usage::Usage;
