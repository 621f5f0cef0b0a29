//! Secrets held in the configuration and handed to the upstream client (upstream keys, AWS secret
//! keys, URLs that may carry a password). They are deserialised like plain strings, but their
//! `Debug` and `Display` never show the value, so a config or client struct can be printed,
//! logged or put in an error without leaking it.
//!
//! `Debug` shows a fingerprint instead: a keyed hash under a key drawn once per process, so two
//! snapshots of one running gateway can still tell whether a secret changed (the reloader compares
//! sections by their `Debug` form to decide what needs a restart), while the printed form says
//! nothing about the value to anyone else and differs from process to process.

use serde::Deserialize;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::OnceLock;

/// A configuration string whose value is never printed.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that must use it (a connection, a credential).
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn fingerprint(&self) -> u32 {
        // RandomState draws its SipHash keys once per process from the OS.
        static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        let h = KEY.get_or_init(Default::default).hash_one(&self.0);
        // Only 32 bits: enough to see a change, too few to test guesses against.
        (h >> 32) as u32
    }
}

impl From<&str> for SecretString {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[redacted #{:08x}]", self.fingerprint())
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn never_prints_the_value_but_tells_a_change() {
        let a = SecretString::from("sk-ant-very-secret");
        let b = SecretString::from("sk-ant-other-secret");
        for shown in [format!("{a:?}"), format!("{a}"), format!("{:?}", Some(&a))] {
            assert!(!shown.contains("very-secret"), "{shown}");
        }
        assert_eq!(format!("{a:?}"), format!("{:?}", a.clone()));
        assert_ne!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(a.expose(), "sk-ant-very-secret");
        #[derive(Deserialize)]
        struct W {
            k: SecretString,
        }
        let w: W = toml::from_str(r#"k = "x""#).unwrap();
        assert_eq!(w.k.expose(), "x");
    }
}
