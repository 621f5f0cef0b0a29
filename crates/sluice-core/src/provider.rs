//! Which API an upstream member speaks. Config deserialises it from `provider = "…"`, the
//! upstream client routes and signs by it, and the data plane puts its name on headers, metric
//! labels and ledger rows: one type, so those names cannot drift apart.

use serde::Deserialize;

/// Which API a member speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The Anthropic API (`x-api-key`).
    #[default]
    Anthropic,
    /// Claude on AWS Bedrock (SigV4, `InvokeModel`).
    Bedrock,
    /// Claude on Google Vertex AI (OAuth, `rawPredict`).
    Vertex,
}

impl Provider {
    /// Its name in config, headers, logs and ledger rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::Bedrock => "bedrock",
            Provider::Vertex => "vertex",
        }
    }
}
