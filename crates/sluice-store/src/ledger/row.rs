//! Ledger rows as the writer stores them ([`StoredRow`], read back from the spool) and the
//! unique ids ([`UidGen`]) that make inserts idempotent.

use super::LedgerRow;

/// A ledger row as the writer stores it: the [`LedgerRow`] with owned strings (it is read back
/// from the spool) and the unique id that makes inserts idempotent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[allow(missing_docs)] // The fields are those of `LedgerRow`, documented there.
pub struct StoredRow {
    /// Unique per row: the writer's random instance id and a sequence number, 32 hex digits.
    pub uid: String,
    pub ts_ms: i64,
    pub request_id: String,
    pub tenant: String,
    pub key_id: String,
    pub feature: Option<String>,
    pub endpoint: String,
    pub model: Option<String>,
    pub model_served: Option<String>,
    pub streamed: bool,
    pub status: u16,
    pub outcome: String,
    pub error_type: Option<String>,
    pub latency_ms: u64,
    pub ttfb_ms: Option<u64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_creation_5m_input_tokens: u64,
    pub cache_creation_1h_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub stop_reason: Option<String>,
    pub upstream: Option<String>,
    pub cost_micros: Option<i64>,
    pub waited_ms: u64,
    pub retries: u32,
    pub provider: Option<String>,
    pub fallback: u8,
    /// Absent in rows spooled by older versions.
    #[serde(default)]
    pub usage_estimated: bool,
    /// Absent in rows spooled by older versions.
    #[serde(default)]
    pub prompt_cache_added: bool,
    /// Absent in rows spooled by older versions.
    #[serde(default)]
    pub saved_micros: i64,
}

impl StoredRow {
    /// `row`, under id `uid`.
    pub fn new(uid: String, row: LedgerRow) -> Self {
        Self {
            uid,
            ts_ms: row.ts_ms,
            request_id: row.request_id,
            tenant: row.tenant,
            key_id: row.key_id,
            feature: row.feature,
            endpoint: row.endpoint.to_owned(),
            model: row.model,
            model_served: row.model_served,
            streamed: row.streamed,
            status: row.status,
            outcome: row.outcome.to_owned(),
            error_type: row.error_type,
            latency_ms: row.latency_ms,
            ttfb_ms: row.ttfb_ms,
            input_tokens: row.usage.input_tokens,
            output_tokens: row.usage.output_tokens,
            cache_creation_input_tokens: row.usage.cache_creation_input_tokens,
            cache_creation_5m_input_tokens: row.usage.cache_creation_5m_input_tokens,
            cache_creation_1h_input_tokens: row.usage.cache_creation_1h_input_tokens,
            cache_read_input_tokens: row.usage.cache_read_input_tokens,
            stop_reason: row.stop_reason,
            upstream: row.upstream,
            cost_micros: row.cost_micros,
            waited_ms: row.waited_ms,
            retries: row.retries,
            provider: row.provider.map(str::to_owned),
            fallback: row.fallback,
            usage_estimated: row.usage_estimated,
            prompt_cache_added: row.prompt_cache_added,
            saved_micros: row.saved_micros,
        }
    }
}

/// Hands out row ids: a random 64-bit instance id (one per writer) and a counter, so ids are
/// unique across replicas and restarts without coordination.
#[derive(Debug)]
pub struct UidGen {
    instance: u64,
    next: u64,
}

impl UidGen {
    /// A generator with a fresh random instance id.
    pub fn new() -> Self {
        let instance = getrandom::u64().unwrap_or_else(|_| {
            // No OS randomness: the clock and the process id still make a collision unlikely.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (u64::from(std::process::id()) << 32)
        });
        Self { instance, next: 0 }
    }

    /// The next id.
    pub fn next_uid(&mut self) -> String {
        let n = self.next;
        self.next += 1;
        format!("{:016x}{:016x}", self.instance, n)
    }
}

impl Default for UidGen {
    fn default() -> Self {
        Self::new()
    }
}
