//! The TOML schema. Every table rejects unknown keys, so a typo is an error at load, not a
//! silently ignored setting. Defaults are chosen so an empty file runs a working gateway.

use crate::limits::{LimitSet, LimitsConfig, OrgConfig, Priority};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The whole `sluice.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The client-facing listener.
    pub server: ServerConfig,
    /// Where calls are forwarded.
    pub upstream: UpstreamConfig,
    /// The state database (keys, batches, ledger).
    pub store: StoreConfig,
    /// Key authentication.
    pub auth: AuthConfig,
    /// Logging.
    pub log: LogConfig,
    /// The application teams allowed to call.
    pub tenants: Vec<TenantConfig>,
    /// The limiter's settings.
    pub limits: LimitsConfig,
    /// The upstream organisation's limits.
    pub org: OrgConfig,
    /// Prices that override or extend the table shipped in the binary.
    pub prices: Vec<crate::PriceEntry>,
    /// Tenant name → position in `tenants`, built at load so the request path does not scan.
    #[serde(skip)]
    pub(crate) tenant_index: std::collections::HashMap<String, usize>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Largest request body accepted (bytes); larger gets 413 `request_too_large`.
    pub max_body_bytes: usize,
    /// The gateway's own address as clients reach it, used to rewrite batch `results_url`.
    /// When unset, `http://` plus the request's `Host` header is used.
    pub public_url: Option<String>,
    /// On SIGTERM/Ctrl-C, how long in-flight requests (streams included) may take to finish.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 32 * 1024 * 1024,
            public_url: None,
            shutdown_grace_secs: 30,
        }
    }
}

/// `[upstream]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Base URL of the Anthropic API (or a compatible endpoint).
    pub base_url: String,
    /// Name of the environment variable holding the upstream API key.
    pub api_key_env: String,
    /// The key itself. Prefer `api_key_env`: a key in a file is easier to leak.
    pub api_key: Option<String>,
    /// `[[upstream.members]]`: several keys to spread calls over. When empty, the single key
    /// above is the one member.
    pub members: Vec<UpstreamMember>,
    /// Consecutive failures (connect errors, timeouts, 5xx, 529) that open a member's circuit
    /// breaker. A 429 never does: it cools the member down for its `retry-after` instead.
    pub breaker_failures: u32,
    /// How long an open breaker stays open before one probe request is let through.
    pub breaker_open_ms: u64,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout_ms: u64,
    /// Longest wait for the upstream's response headers. Non-streaming replies of long
    /// generations arrive only at the end, so this is generous by default.
    pub first_byte_timeout_ms: u64,
    /// Idle keep-alive connections kept per upstream host.
    pub pool_max_idle_per_host: usize,
    /// How long an idle upstream connection is kept.
    pub pool_idle_timeout_secs: u64,
    /// Attempts per call in all (1: never retry). Retries happen only before any byte of the
    /// reply has gone to the client.
    pub max_attempts: u32,
    /// Upstream statuses that are retried (connect failures and first-byte timeouts always are).
    pub retry_statuses: Vec<u16>,
    /// Backoff ceiling of the first retry, doubled per retry (full jitter under it).
    pub retry_base_ms: u64,
    /// Largest backoff ceiling.
    pub retry_max_backoff_ms: u64,
    /// No retry starts later than this after the call's first attempt.
    pub retry_deadline_ms: u64,
    /// A stream whose upstream sends nothing (not even a `ping`) for this long is ended with an
    /// error event. 0 disables it. A healthy stream has no total time limit.
    pub stream_idle_timeout_ms: u64,
    /// Keep calls that share a cacheable prefix on one member (the upstream's prompt cache is
    /// per key), by consistent hashing with bounded load. Off: spread by weight alone.
    pub affinity: bool,
    /// Bounded load of affinity routing: a member takes a prefix's calls only while its calls
    /// in flight stay under this factor times its weighted fair share (at least 1.0).
    pub affinity_load_factor: f64,
    /// `[[upstream.fallbacks]]`: what to try, per requested model, when its members are
    /// unavailable or still failing after retries.
    pub fallbacks: Vec<Fallback>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.anthropic.com".into(),
            api_key_env: "ANTHROPIC_API_KEY".into(),
            api_key: None,
            members: Vec::new(),
            breaker_failures: 5,
            breaker_open_ms: 30_000,
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 600_000,
            pool_max_idle_per_host: 1024,
            pool_idle_timeout_secs: 60,
            max_attempts: 3,
            retry_statuses: vec![408, 429, 500, 502, 503, 504, 529],
            retry_base_ms: 250,
            retry_max_backoff_ms: 8_000,
            retry_deadline_ms: 30_000,
            stream_idle_timeout_ms: 120_000,
            affinity: true,
            affinity_load_factor: 1.25,
            fallbacks: Vec::new(),
        }
    }
}

/// Which API a member speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
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
    /// Its name in config, headers and ledger rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::Bedrock => "bedrock",
            Provider::Vertex => "vertex",
        }
    }
}

/// One `[[upstream.members]]` entry: an API key of the upstream pool, or a deployment of
/// Claude on another provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamMember {
    /// Shown in health and on ledger rows (`upstream`); never the key.
    pub name: String,
    /// `anthropic` (default), `bedrock` or `vertex`.
    #[serde(default)]
    pub provider: Provider,
    /// Anthropic: name of the environment variable holding this member's key.
    pub api_key_env: Option<String>,
    /// Anthropic: the key itself. Prefer `api_key_env`.
    pub api_key: Option<String>,
    /// Endpoint override: for `anthropic` the API's base URL (default `upstream.base_url`); for
    /// `bedrock` the runtime endpoint (default `https://bedrock-runtime.{region}.amazonaws.com`);
    /// for `vertex` the API endpoint (default `https://{region}-aiplatform.googleapis.com`).
    pub base_url: Option<String>,
    /// Share of the traffic relative to the other members. 0: a standby, used only by
    /// fallback steps that name it or its provider.
    #[serde(default = "one")]
    pub weight: u32,
    /// Requested model → this member's model id (Bedrock `anthropic.claude-…-v1:0`, Vertex
    /// `claude-…@date`). Required for `bedrock` and `vertex`, whose members serve only the models
    /// listed; an `anthropic` member with no map serves every model under its own name.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Bedrock and Vertex: the region (`us-east-1`, `us-east5`, `global`).
    pub region: Option<String>,
    /// Bedrock: environment variable of the access key id (default `AWS_ACCESS_KEY_ID`).
    pub aws_access_key_id_env: Option<String>,
    /// Bedrock: the access key id itself. Prefer the `_env` form.
    pub aws_access_key_id: Option<String>,
    /// Bedrock: environment variable of the secret key (default `AWS_SECRET_ACCESS_KEY`).
    pub aws_secret_access_key_env: Option<String>,
    /// Bedrock: the secret key itself. Prefer the `_env` form.
    pub aws_secret_access_key: Option<String>,
    /// Bedrock: environment variable of a session token (default `AWS_SESSION_TOKEN`, used
    /// when set).
    pub aws_session_token_env: Option<String>,
    /// Vertex: the Google Cloud project.
    pub project: Option<String>,
    /// Vertex: a service-account JSON key file. Without it, tokens come from the metadata
    /// server (GCE, GKE, Cloud Run).
    pub credentials_file: Option<String>,
    /// Vertex: metadata server override (default `http://metadata.google.internal`).
    pub metadata_url: Option<String>,
}

/// One `[[upstream.fallbacks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// The requested model this chain is for, or `"*"` for every model without its own chain.
    pub model: String,
    /// The steps, tried in order after the primary: each with its own retries, all within the
    /// call's retry deadline.
    pub then: Vec<FallbackStep>,
}

/// A step of a fallback chain: which model, on which members. Unset fields keep the requested
/// model and take every member (standbys included) that serves it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackStep {
    /// Another model (e.g. a smaller one when the large one is overloaded).
    pub model: Option<String>,
    /// Only members of this provider.
    pub provider: Option<Provider>,
    /// Only this member.
    pub member: Option<String>,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite database file (created if missing; WAL mode).
    pub path: String,
    /// Ledger rows that may wait for the writer; past this, rows are dropped and counted.
    pub ledger_queue_capacity: usize,
    /// Most rows written in one transaction.
    pub ledger_batch_max: usize,
    /// Longest a row waits before its batch is written.
    pub ledger_flush_interval_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: "./sluice.db".into(),
            ledger_queue_capacity: 100_000,
            ledger_batch_max: 2_000,
            ledger_flush_interval_ms: 100,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How often the gateway checks the key table for new or revoked keys. A revocation takes
    /// effect within this interval.
    pub key_refresh_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            key_refresh_ms: 1_000,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` (one object per line) or `text`.
    pub format: String,
    /// Default filter when `RUST_LOG` is unset (e.g. `info`, `sluice=debug`).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

/// One `[[tenants]]` entry: an application team.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Unique name (a-z, 0-9, '-', '_').
    pub name: String,
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
    /// A disabled tenant's keys get 403 `permission_error`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Log request bodies and JSON reply bodies of this tenant's calls (off by default: prompts
    /// and completions are not logged unless a tenant asks for it).
    #[serde(default)]
    pub log_bodies: bool,
    /// Limits over all of the tenant's calls (a dimension left out is not limited).
    #[serde(default)]
    pub limits: LimitSet,
    /// Further limits per model class; a call of that class must fit both.
    #[serde(default)]
    pub class_limits: BTreeMap<String, LimitSet>,
    /// Priority class when the organisation pool is short.
    #[serde(default)]
    pub priority: Priority,
    /// Share of the pool relative to other tenants of the same priority class.
    #[serde(default = "one")]
    pub weight: u32,
    /// How long a call may wait for room before it is refused (0: refuse at once).
    #[serde(default)]
    pub max_wait_ms: u64,
    /// Spend budget per UTC day, in USD.
    #[serde(default)]
    pub budget_daily_usd: Option<f64>,
    /// Spend budget per UTC calendar month, in USD.
    #[serde(default)]
    pub budget_monthly_usd: Option<f64>,
}

impl TenantConfig {
    /// A tenant with this name and every other setting at its default.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            description: String::new(),
            enabled: true,
            log_bodies: false,
            limits: LimitSet::default(),
            class_limits: BTreeMap::new(),
            priority: Priority::default(),
            weight: 1,
            max_wait_ms: 0,
            budget_daily_usd: None,
            budget_monthly_usd: None,
        }
    }
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}
