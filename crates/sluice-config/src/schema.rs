//! The TOML schema. Every table rejects unknown keys, so a typo is an error at load, not a
//! silently ignored setting. Defaults are chosen so an empty file runs a working gateway.

use crate::SecretString;
use crate::caching::{
    CachingConfig, PromptCacheMode, PromptCacheOverride, PromptCachePolicy, PromptCacheTtl,
    ResponseCacheConfig,
};
use crate::limits::{LimitSet, LimitsConfig, OrgConfig, Priority};
use serde::Deserialize;
use sluice_core::Provider;
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
    pub prices: Vec<sluice_billing::PriceEntry>,
    /// Tenant name → position in `tenants`, built at load so the request path does not scan.
    #[serde(skip)]
    pub(crate) tenant_index: std::collections::HashMap<String, usize>,
    /// The admin API's listener and tokens (issue #5).
    pub admin: AdminConfig,
    /// Alert rules and where they are sent (issue #5).
    pub alerts: AlertsConfig,
    /// Response-cache storage and the prompt-cache minimum lengths.
    pub caching: CachingConfig,
}

/// `[admin]`: the control plane's listener (admin API, `/metrics`) and who may use it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin API and `/metrics`.
    pub enabled: bool,
    /// Its own address, loopback by default: `/metrics` there needs no token.
    pub listen: String,
    /// Watch the config file and reload it when it changes (SIGHUP and `POST /admin/v1/reload`
    /// work either way).
    pub watch_config: bool,
    /// Quiet time after the last change to the file before it is reloaded (editors write in
    /// several steps).
    pub watch_debounce_ms: u64,
    /// `[[admin.tokens]]`: named bearer tokens; the name is the actor in the audit trail.
    pub tokens: Vec<AdminToken>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8091".into(),
            watch_config: true,
            watch_debounce_ms: 300,
            tokens: Vec::new(),
        }
    }
}

/// One `[[admin.tokens]]` entry: the token itself never sits in the file, only the variable
/// holding it or its SHA-256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who holds it (`ops-alice`); recorded as the actor of every change made with it.
    pub name: String,
    /// Environment variable holding the token.
    pub token_env: Option<String>,
    /// SHA-256 of the token, 64 hex digits (`printf %s "$TOKEN" | sha256sum`).
    pub token_sha256: Option<String>,
    /// May only read (GET); changes get 403.
    #[serde(default)]
    pub read_only: bool,
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
    /// When unset, `http://` plus the request's `Host` header is used (or what a trusted proxy
    /// says in `forwarded` / `x-forwarded-proto` / `x-forwarded-host`).
    pub public_url: Option<String>,
    /// Peers (IP addresses or CIDR ranges) whose `forwarded` and `x-forwarded-*` headers are
    /// believed: the load balancers in front of the gateway. Anyone else's are ignored.
    pub trusted_proxies: Vec<String>,
    /// On SIGTERM/Ctrl-C, how long in-flight requests (streams included) may take to finish.
    pub shutdown_grace_secs: u64,
    /// Longest a client may take to send a request's headers, from its first byte (or from
    /// connecting, for a connection's first request); then the connection is closed.
    pub header_read_timeout_ms: u64,
    /// Longest a client may take to send a whole request body, from when the gateway starts
    /// reading it; then 408 `timeout_error`.
    pub body_read_timeout_ms: u64,
    /// How long an idle keep-alive connection (between requests) is kept open.
    pub idle_timeout_secs: u64,
    /// Most client connections open at once; at the cap the gateway stops accepting (new
    /// connections wait in the listen backlog) until one closes.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 32 * 1024 * 1024,
            public_url: None,
            trusted_proxies: Vec::new(),
            shutdown_grace_secs: 30,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 60_000,
            idle_timeout_secs: 75,
            max_connections: 10_000,
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
    pub api_key: Option<SecretString>,
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
    /// Upstream statuses that are retried (connect failures always are; first-byte timeouts
    /// are, except on `POST /v1/messages`, see `retry_on_first_byte_timeout`).
    pub retry_statuses: Vec<u16>,
    /// Retry `POST /v1/messages` after a first-byte timeout too. Off by default: the upstream
    /// has the request and may still complete and bill it, so a retry can be paid twice.
    pub retry_on_first_byte_timeout: bool,
    /// Seconds a `GET /v1/models[/{id}]` reply is served from the in-process cache (0: never
    /// cached).
    pub models_cache_secs: u64,
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
            retry_on_first_byte_timeout: false,
            models_cache_secs: 60,
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
    pub api_key: Option<SecretString>,
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
    pub aws_access_key_id: Option<SecretString>,
    /// Bedrock: environment variable of the secret key (default `AWS_SECRET_ACCESS_KEY`).
    pub aws_secret_access_key_env: Option<String>,
    /// Bedrock: the secret key itself. Prefer the `_env` form.
    pub aws_secret_access_key: Option<SecretString>,
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
    /// PostgreSQL URL of the ledger (`postgres://user[:password]@host[:port]/db`), shared by
    /// every replica. Unset: the ledger is in the SQLite database at `path`.
    pub database_url: Option<SecretString>,
    /// Where ledger rows wait on disk while Postgres cannot take them. Unset: `<path>-spool`,
    /// next to the SQLite state file. One gateway process per directory.
    pub spool_dir: Option<String>,
    /// Most bytes the spool may take; rows past it are dropped, counted and logged.
    pub spool_max_bytes: u64,
}

impl ServerConfig {
    /// Whether `peer` is one of `trusted_proxies` (entries that do not parse match nothing;
    /// validation refuses them).
    pub fn is_trusted_proxy(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|p| match parse_proxy(p) {
            Some(net) => net.contains(&peer),
            None => false,
        })
    }
}

/// A `trusted_proxies` entry: a CIDR range, or one address.
pub(crate) fn parse_proxy(p: &str) -> Option<ipnet::IpNet> {
    p.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| p.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

impl StoreConfig {
    /// The Postgres URL, when one is set (it may carry a password: never log it as is).
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_ref().map(SecretString::expose)
    }

    /// The spool directory in force: `spool_dir`, else `<path>-spool`.
    pub fn spool_dir(&self) -> String {
        self.spool_dir
            .clone()
            .unwrap_or_else(|| format!("{}-spool", self.path))
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: "./sluice.db".into(),
            ledger_queue_capacity: 100_000,
            ledger_batch_max: 2_000,
            ledger_flush_interval_ms: 100,
            database_url: None,
            spool_dir: None,
            spool_max_bytes: 1 << 30,
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
    /// Requests per minute for the calls free upstream and charged to no bucket
    /// (`POST /v1/messages/count_tokens`, `GET /v1/models[/{id}]`), counted per replica.
    #[serde(default)]
    pub count_tokens_per_minute: Option<u64>,
    /// Automatic prompt caching (`"off"` or `"auto"`): with `auto`, a call carrying no
    /// `cache_control` gets breakpoints in the form its serving provider understands.
    #[serde(default)]
    pub prompt_cache: PromptCacheMode,
    /// The TTL of the entries automatic prompt caching asks for (`"5m"` or `"1h"`).
    #[serde(default)]
    pub prompt_cache_ttl: PromptCacheTtl,
    /// Per model class overrides of `prompt_cache` and `prompt_cache_ttl`.
    #[serde(default)]
    pub class_prompt_cache: BTreeMap<String, PromptCacheOverride>,
    /// The response cache, when the tenant opts in.
    #[serde(default)]
    pub response_cache: Option<ResponseCacheConfig>,
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
            count_tokens_per_minute: None,
            prompt_cache: PromptCacheMode::Off,
            prompt_cache_ttl: PromptCacheTtl::FiveMinutes,
            class_prompt_cache: BTreeMap::new(),
            response_cache: None,
        }
    }

    /// The prompt-cache settings for a call of model class `class`: the class's override where
    /// it sets a key, the tenant's otherwise.
    pub fn prompt_cache_for(&self, class: &str) -> PromptCachePolicy {
        let o = self.class_prompt_cache.get(class);
        PromptCachePolicy {
            mode: o.and_then(|o| o.prompt_cache).unwrap_or(self.prompt_cache),
            ttl: o
                .and_then(|o| o.prompt_cache_ttl)
                .unwrap_or(self.prompt_cache_ttl),
        }
    }
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// `[alerts]`: rules evaluated in the background and the webhook each firing or resolved
/// episode is posted to (once per episode, never per call).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Evaluate the rules at all.
    pub enabled: bool,
    /// Where alerts are POSTed as JSON (`http://` or `https://`); unset: log only.
    pub webhook_url: Option<String>,
    /// Seconds between evaluations (fractions allowed).
    pub evaluate_every_secs: f64,
    /// Longest one webhook POST may take.
    pub webhook_timeout_ms: u64,
    /// POST attempts per alert in all (1: never retry).
    pub webhook_attempts: u32,
    /// Wait before the first retry, doubled per retry (capped at 60 s).
    pub webhook_backoff_ms: u64,
    /// Fire when a tenant has spent at least this percentage of its daily budget (0: off).
    pub budget_daily_pct: f64,
    /// Fire when a tenant's prompt-cache hit rate (cache reads over all input tokens) over
    /// `cache_window_secs` falls below this share (0.0-1.0). Unset: off.
    pub cache_hit_rate_min: Option<f64>,
    /// The cache hit rate window.
    pub cache_window_secs: f64,
    /// Input tokens a tenant must have sent in the window before its hit rate is judged.
    pub cache_min_tokens: u64,
    /// Fire when the share of upstream calls that failed (5xx, 529, unreachable, timeouts,
    /// broken streams, no member available) over `upstream_error_window_secs` passes this
    /// (0.0-1.0). Unset: off.
    pub upstream_error_rate_max: Option<f64>,
    /// The upstream error rate window.
    pub upstream_error_window_secs: f64,
    /// Upstream calls needed in the window before the error rate is judged.
    pub upstream_error_min_calls: u64,
    /// Fire when an org pool bucket (a model class's requests, input or output tokens) has
    /// stayed under this percentage of its limit for `org_headroom_for_secs` (in-process
    /// limiter). Unset: off.
    pub org_headroom_min_pct: Option<f64>,
    /// How long the org pool must stay under `org_headroom_min_pct` before it fires.
    pub org_headroom_for_secs: f64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            webhook_url: None,
            evaluate_every_secs: 15.0,
            webhook_timeout_ms: 5_000,
            webhook_attempts: 5,
            webhook_backoff_ms: 500,
            budget_daily_pct: 80.0,
            cache_hit_rate_min: None,
            cache_window_secs: 900.0,
            cache_min_tokens: 100_000,
            upstream_error_rate_max: Some(0.05),
            upstream_error_window_secs: 300.0,
            upstream_error_min_calls: 20,
            org_headroom_min_pct: Some(10.0),
            org_headroom_for_secs: 300.0,
        }
    }
}

impl AlertsConfig {
    /// Why this section cannot be used, if it cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        if let Some(u) = &self.webhook_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Some(format!(
                "alerts.webhook_url {u:?} must start with http:// or https://"
            ));
        }
        let positive = [
            ("evaluate_every_secs", self.evaluate_every_secs),
            ("cache_window_secs", self.cache_window_secs),
            (
                "upstream_error_window_secs",
                self.upstream_error_window_secs,
            ),
        ];
        if let Some((k, v)) = positive
            .iter()
            .find(|(_, v)| !(v.is_finite() && *v >= 0.01))
        {
            return Some(format!("alerts.{k} must be at least 0.01 (got {v})"));
        }
        if self.webhook_attempts == 0 || self.webhook_attempts > 20 {
            return Some("alerts.webhook_attempts must be between 1 and 20".into());
        }
        if !(0.0..=1000.0).contains(&self.budget_daily_pct) {
            return Some("alerts.budget_daily_pct must be between 0 (off) and 1000".into());
        }
        if self
            .org_headroom_min_pct
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            return Some("alerts.org_headroom_min_pct must be between 0 and 100".into());
        }
        if !(self.org_headroom_for_secs.is_finite() && self.org_headroom_for_secs >= 0.0) {
            return Some("alerts.org_headroom_for_secs must be 0 or more".into());
        }
        let shares = [
            ("cache_hit_rate_min", self.cache_hit_rate_min),
            ("upstream_error_rate_max", self.upstream_error_rate_max),
        ];
        for (k, v) in shares {
            if let Some(v) = v
                && !(0.0..=1.0).contains(&v)
            {
                return Some(format!("alerts.{k} must be between 0.0 and 1.0 (got {v})"));
            }
        }
        None
    }
}
