//! The caching knobs: automatic prompt caching per tenant (and per model class), the minimum
//! cacheable prompt length per model, and the gateway's response cache (per tenant opt-in, one
//! store per replica or shared in Redis). docs/caching.md explains each.

use serde::Deserialize;

/// `prompt_cache`: whether Sluice adds prompt-cache markers to a tenant's calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptCacheMode {
    /// Forward bodies as sent (the default).
    #[default]
    Off,
    /// Add breakpoints to a call that carries no `cache_control` of its own.
    Auto,
}

impl PromptCacheMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Auto => "auto",
        }
    }
}

/// `prompt_cache_ttl`: the lifetime of the cache entries Sluice asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum PromptCacheTtl {
    /// Five minutes, refreshed on every read (the upstream's default; writes cost 1.25×).
    #[default]
    #[serde(rename = "5m")]
    FiveMinutes,
    /// One hour (writes cost 2×).
    #[serde(rename = "1h")]
    OneHour,
}

impl PromptCacheTtl {
    /// The config (and wire) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FiveMinutes => "5m",
            Self::OneHour => "1h",
        }
    }
}

/// `[tenants.class_prompt_cache.CLASS]`: a model class's own prompt-cache settings; a key
/// left out takes the tenant's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptCacheOverride {
    /// Overrides the tenant's `prompt_cache` for this class.
    #[serde(default)]
    pub prompt_cache: Option<PromptCacheMode>,
    /// Overrides the tenant's `prompt_cache_ttl` for this class.
    #[serde(default)]
    pub prompt_cache_ttl: Option<PromptCacheTtl>,
}

/// The prompt-cache settings that apply to one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptCachePolicy {
    /// Add markers or not.
    pub mode: PromptCacheMode,
    /// The TTL to ask for.
    pub ttl: PromptCacheTtl,
}

/// A tenant's `response_cache = { ttl_secs = 300, max_entry_bytes = 1048576 }`: replies to
/// identical requests are answered from the gateway for `ttl_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseCacheConfig {
    /// How long a stored reply answers (seconds, at least 1).
    #[serde(default = "default_response_ttl")]
    pub ttl_secs: u64,
    /// Replies larger than this are not stored (bytes, at least 1).
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: usize,
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        Self {
            ttl_secs: default_response_ttl(),
            max_entry_bytes: default_max_entry_bytes(),
        }
    }
}

fn default_response_ttl() -> u64 {
    300
}

fn default_max_entry_bytes() -> usize {
    1 << 20
}

/// Where the response cache keeps entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseCacheBackend {
    /// In this replica's memory, bounded by `response_cache_max_bytes`.
    #[default]
    Memory,
    /// In Redis (`[limits] redis_url`), shared by every replica.
    Redis,
}

/// One `[[caching.prompt_cache_min_tokens]]` row: the minimum cacheable prompt length of the
/// models whose id contains `model` (the longest match wins; an exact id beats any family).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinTokens {
    /// A model id or the part of one that names a family (`claude-haiku-4-5`).
    pub model: String,
    /// Tokens of prefix the upstream needs before it caches anything.
    pub tokens: u64,
}

/// `[caching]`: the gateway-wide caching settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CachingConfig {
    /// Where response-cache entries live.
    pub response_cache_backend: ResponseCacheBackend,
    /// Total bytes the in-memory response cache may hold (entries are evicted beyond it).
    pub response_cache_max_bytes: u64,
    /// Minimum cacheable prompt lengths, consulted before the shipped table.
    pub prompt_cache_min_tokens: Vec<MinTokens>,
}

impl Default for CachingConfig {
    fn default() -> Self {
        Self {
            response_cache_backend: ResponseCacheBackend::Memory,
            response_cache_max_bytes: 256 << 20,
            prompt_cache_min_tokens: Vec::new(),
        }
    }
}

/// The minimum for a model in no family below (the upstream's most common one).
pub const DEFAULT_MIN_CACHEABLE_TOKENS: u64 = 1024;

/// The upstream's documented minimum cacheable prompt per model family. An id matches the
/// longest family it contains, so Bedrock (`anthropic.…-v1:0`) and Vertex (`…@date`) ids match.
pub const SHIPPED_MIN_TOKENS: &[(&str, u64)] = &[
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-5", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-sonnet-4-6", 1024),
    ("claude-sonnet-4-5", 1024),
    ("claude-opus-4-1", 1024),
    ("claude-opus-4", 1024),
    ("claude-sonnet-4", 1024),
    ("claude-3-7-sonnet", 1024),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
];

impl CachingConfig {
    /// The minimum cacheable prompt length of `model`: the configured rows first (longest
    /// match), then the shipped table, then [`DEFAULT_MIN_CACHEABLE_TOKENS`].
    pub fn min_cacheable_tokens(&self, model: &str) -> u64 {
        let configured = self
            .prompt_cache_min_tokens
            .iter()
            .filter(|m| model.contains(m.model.as_str()))
            .max_by_key(|m| m.model.len())
            .map(|m| m.tokens);
        configured
            .or_else(|| {
                SHIPPED_MIN_TOKENS
                    .iter()
                    .filter(|(family, _)| model.contains(family))
                    .max_by_key(|(family, _)| family.len())
                    .map(|(_, n)| *n)
            })
            .unwrap_or(DEFAULT_MIN_CACHEABLE_TOKENS)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.response_cache_max_bytes == 0 {
            return Err("caching.response_cache_max_bytes must be greater than 0".into());
        }
        for m in &self.prompt_cache_min_tokens {
            if m.model.is_empty() {
                return Err("caching.prompt_cache_min_tokens: model must not be empty".into());
            }
            if m.tokens == 0 || m.tokens > 1_000_000 {
                return Err(format!(
                    "caching.prompt_cache_min_tokens: tokens for {:?} must be between 1 and 1000000",
                    m.model
                ));
            }
        }
        Ok(())
    }
}

impl ResponseCacheConfig {
    pub(crate) fn validate(&self, tenant: &str) -> Result<(), String> {
        if self.ttl_secs == 0 || self.ttl_secs > 30 * 24 * 3600 {
            return Err(format!(
                "tenant {tenant:?}: response_cache.ttl_secs must be between 1 and 2592000"
            ));
        }
        if self.max_entry_bytes == 0 {
            return Err(format!(
                "tenant {tenant:?}: response_cache.max_entry_bytes must be greater than 0"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn minimums_take_the_longest_family_and_configured_rows_first() {
        let mut c = CachingConfig::default();
        assert_eq!(c.min_cacheable_tokens("claude-opus-4-5-20251101"), 4096);
        assert_eq!(c.min_cacheable_tokens("claude-opus-4-20250514"), 1024);
        assert_eq!(
            c.min_cacheable_tokens("anthropic.claude-3-5-haiku-20241022-v1:0"),
            2048
        );
        assert_eq!(c.min_cacheable_tokens("claude-haiku-4-5@20251001"), 4096);
        assert_eq!(c.min_cacheable_tokens("some-new-model"), 1024);
        c.prompt_cache_min_tokens.push(MinTokens {
            model: "claude-opus-4".into(),
            tokens: 512,
        });
        // A configured family beats the shipped table even where the shipped one is longer.
        assert_eq!(c.min_cacheable_tokens("claude-opus-4-5-20251101"), 512);
        assert_eq!(c.min_cacheable_tokens("claude-sonnet-4-5"), 1024);
    }
}
