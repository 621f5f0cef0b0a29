//! Token usage as the upstream reports it, merged the way the upstream documents: the last
//! `message_delta` wins over `message_start` for every field it carries.

use serde::{Deserialize, Serialize};

/// Token counts of one call. All counts are plain token numbers; `None` in the wire form is 0 here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Uncached input tokens (after the last cache breakpoint).
    pub input_tokens: u64,
    /// Output tokens generated.
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache (all TTLs).
    pub cache_creation_input_tokens: u64,
    /// Of `cache_creation_input_tokens`, those written with the 5-minute TTL.
    pub cache_creation_5m_input_tokens: u64,
    /// Of `cache_creation_input_tokens`, those written with the 1-hour TTL.
    pub cache_creation_1h_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_input_tokens: u64,
}

impl Usage {
    /// Input tokens that the upstream's input-token rate limits count: cache reads are free.
    pub fn rate_limited_input(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_creation_input_tokens)
    }

    /// Every input token the model saw, cached or not.
    pub fn total_input(&self) -> u64 {
        self.rate_limited_input()
            .saturating_add(self.cache_read_input_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_reads_do_not_count_toward_rate_limited_input() {
        let u = Usage {
            input_tokens: 25,
            cache_creation_input_tokens: 100,
            cache_read_input_tokens: 1800,
            ..Usage::default()
        };
        assert_eq!(u.rate_limited_input(), 125);
        assert_eq!(u.total_input(), 1925);
    }
}
