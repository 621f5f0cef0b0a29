//! Sluice configuration: the TOML schema (`sluice.toml`), its validation, and the one snapshot
//! that the data plane reads, published through `arc-swap` so a reload is one atomic pointer swap
//! and readers never take a lock.
//!
//! Nothing here reads the environment: the upstream key's *variable name* is configuration; the
//! binary resolves it.

mod caching;
mod limits;
mod schema;

// Defined in core because the upstream client and the data plane use them too; re-exported as
// the schema's own vocabulary.
pub use sluice_core::{Provider, SecretString};

pub use caching::{
    CachingConfig, DEFAULT_MIN_CACHEABLE_TOKENS, MinTokens, PromptCacheMode, PromptCacheOverride,
    PromptCachePolicy, PromptCacheTtl, ResponseCacheBackend, ResponseCacheConfig,
    SHIPPED_MIN_TOKENS,
};
pub use limits::{
    FailMode, KeepFree, LimitSet, LimiterBackend, LimitsConfig, ModelClass, OrgConfig, Priority,
    usd_to_micros,
};
pub use schema::AlertsConfig;

pub use schema::{
    AdminConfig, AdminToken, AuthConfig, Config, Fallback, FallbackStep, LogConfig, ServerConfig,
    StoreConfig, TenantConfig, UpstreamConfig, UpstreamMember,
};

use arc_swap::ArcSwap;
use std::path::Path;
use std::sync::Arc;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path that was tried.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown/mistyped keys. Only the position and the kind of
    /// error are kept: the `toml` crate's own message quotes the offending source line, which
    /// may hold a secret (a typo on an `api_key =` line would put the key in logs and in the
    /// reload API's reply).
    #[error("invalid config: {message} at line {line}, column {column}")]
    Parse {
        /// 1-based line of the error (0: unknown).
        line: usize,
        /// 1-based column of the error (0: unknown).
        column: usize,
        /// What is wrong, with any quoted value elided.
        message: String,
    },
    /// The TOML parsed but breaks a rule (the string says which).
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// A TOML error without the source text: its position, and its message with every quoted
/// value elided (serde's "invalid type: string \"…\"" quotes the value it met).
fn parse_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = e.span().map_or((0, 0), |sp| {
        let before = text.get(..sp.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    });
    let mut message = String::new();
    let mut quoted = false;
    for ch in e.message().trim().chars() {
        if ch == '"' {
            if !quoted {
                message.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            message.push(if ch == '\n' { ' ' } else { ch });
        }
    }
    if let Some(key) = e.span().and_then(|sp| key_before(text, sp.start)) {
        message.push_str(&format!(" (key `{key}`)"));
    }
    ConfigError::Parse {
        line,
        column,
        message,
    }
}

/// The bare key whose value starts at `at` (`key = value`, also inside an inline table), so an
/// error can name it without quoting the line: keys are names, values may be secrets. Anything
/// that is not a plain key (letters, digits, `_`, `-`, `.`) is not shown.
fn key_before(text: &str, at: usize) -> Option<&str> {
    let before = text.get(..at)?;
    let line = before.rsplit('\n').next()?;
    let (lhs, _) = line.rsplit_once('=')?;
    let key = lhs.rsplit(['{', ',']).next()?.trim();
    let plain = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    plain.then_some(key)
}

impl Config {
    /// Parse and validate a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| parse_error(text, &e))?;
        cfg.validate()?;
        cfg.tenant_index = cfg
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(cfg)
    }

    /// Validate a config assembled in code (e.g. the file's plus tenants from the state
    /// database) with the same rules as a parsed one, and index its tenants.
    pub fn validated(mut self) -> Result<Self, ConfigError> {
        self.validate()?;
        self.tenant_index = self
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(self)
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// The tenant named `name`, if declared.
    pub fn tenant(&self, name: &str) -> Option<&TenantConfig> {
        match self.tenant_index.get(name) {
            Some(&i) => self.tenants.get(i),
            // A config built in code rather than parsed has no index yet.
            None if self.tenant_index.is_empty() => self.tenants.iter().find(|t| t.name == name),
            None => None,
        }
    }

    /// `[[upstream.members]]` and the breaker knobs.
    fn validate_members(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let u = &self.upstream;
        if u.breaker_failures == 0 {
            return bad("upstream.breaker_failures must be at least 1".into());
        }
        if u.breaker_open_ms == 0 {
            return bad("upstream.breaker_open_ms must be greater than 0".into());
        }
        let mut seen = std::collections::HashSet::new();
        for m in &u.members {
            // Names go into logs, JSON and ledger rows: keep them plain.
            let ok = (1..=64).contains(&m.name.len())
                && m.name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
            if !ok {
                return bad(format!(
                    "upstream.members: name {:?} must be 1-64 characters of A-Z, a-z, 0-9, '-', '_' and '.'",
                    m.name
                ));
            }
            if !seen.insert(m.name.as_str()) {
                return bad(format!("upstream member {:?} is declared twice", m.name));
            }
            if m.weight > 1000 {
                return bad(format!(
                    "upstream member {:?}: weight must be between 0 (standby) and 1000",
                    m.name
                ));
            }
            if let Some(url) = &m.base_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return bad(format!(
                    "upstream member {:?}: base_url {url:?} must start with http:// or https://",
                    m.name
                ));
            }
            Self::validate_provider(m)?;
        }
        if !u.members.is_empty() && u.members.iter().all(|m| m.weight == 0) {
            return bad("upstream.members: every member is a standby (weight 0); give at least one a weight".into());
        }
        if !(1.0..=100.0).contains(&u.affinity_load_factor) {
            return bad("upstream.affinity_load_factor must be between 1.0 and 100.0".into());
        }
        let mut chains = std::collections::HashSet::new();
        for f in &u.fallbacks {
            if !chains.insert(f.model.as_str()) {
                return bad(format!(
                    "upstream.fallbacks: model {:?} has two chains",
                    f.model
                ));
            }
            if f.then.is_empty() {
                return bad(format!(
                    "upstream.fallbacks: the chain of {:?} has no step",
                    f.model
                ));
            }
            for step in &f.then {
                if step.model.is_none() && step.provider.is_none() && step.member.is_none() {
                    return bad(format!(
                        "upstream.fallbacks: a step of {:?} sets none of model, provider, member",
                        f.model
                    ));
                }
                if let Some(name) = &step.member
                    && !u.members.iter().any(|m| &m.name == name)
                {
                    return bad(format!(
                        "upstream.fallbacks: a step of {:?} names member {name:?}, which is not in upstream.members",
                        f.model
                    ));
                }
                if let Some(p) = step.provider
                    && p != Provider::Anthropic
                    && !u.members.iter().any(|m| m.provider == p)
                {
                    return bad(format!(
                        "upstream.fallbacks: a step of {:?} names provider {:?}, which no member has",
                        f.model,
                        p.as_str()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The fields each provider needs, and no key of another provider.
    fn validate_provider(m: &schema::UpstreamMember) -> Result<(), ConfigError> {
        let bad = |what: String| {
            Err(ConfigError::Invalid(format!(
                "upstream member {:?}: {what}",
                m.name
            )))
        };
        let anthropic_key = m.api_key_env.is_some() || m.api_key.is_some();
        let aws = m.aws_access_key_id.is_some()
            || m.aws_access_key_id_env.is_some()
            || m.aws_secret_access_key.is_some()
            || m.aws_secret_access_key_env.is_some()
            || m.aws_session_token_env.is_some();
        let gcp = m.project.is_some() || m.credentials_file.is_some() || m.metadata_url.is_some();
        match m.provider {
            Provider::Anthropic => {
                match (&m.api_key_env, &m.api_key) {
                    (None, None) => {
                        return bad("has no key: set api_key_env (or api_key)".into());
                    }
                    (Some(_), Some(_)) => {
                        return bad("set api_key_env or api_key, not both".into());
                    }
                    _ => {}
                }
                if aws || gcp || m.region.is_some() {
                    return bad(
                        "AWS and Google settings belong to bedrock and vertex members".into(),
                    );
                }
            }
            Provider::Bedrock => {
                if anthropic_key || gcp {
                    return bad("a bedrock member takes AWS credentials (aws_*), not api keys or Google settings".into());
                }
                if m.region.is_none() {
                    return bad("a bedrock member needs its region".into());
                }
                if m.aws_access_key_id.is_some() && m.aws_access_key_id_env.is_some()
                    || m.aws_secret_access_key.is_some() && m.aws_secret_access_key_env.is_some()
                {
                    return bad("set each AWS credential once, inline or as _env".into());
                }
            }
            Provider::Vertex => {
                if anthropic_key || aws {
                    return bad(
                        "a vertex member takes Google credentials, not api keys or AWS settings"
                            .into(),
                    );
                }
                if m.project.is_none() || m.region.is_none() {
                    return bad("a vertex member needs its project and region".into());
                }
            }
        }
        if m.provider != Provider::Anthropic && m.models.is_empty() {
            return bad(format!(
                "a {} member serves only the models in its `models` map; list them (requested model = provider model id)",
                m.provider.as_str()
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let mut seen = std::collections::HashSet::new();
        for t in &self.tenants {
            if !valid_name(&t.name) {
                return bad(format!(
                    "tenant name {:?}: use 1-64 characters of a-z, 0-9, '-' and '_'",
                    t.name
                ));
            }
            if !seen.insert(t.name.as_str()) {
                return bad(format!("tenant {:?} is declared twice", t.name));
            }
            if let Some(rc) = &t.response_cache {
                rc.validate(&t.name).map_err(ConfigError::Invalid)?;
            }
        }
        self.caching.validate().map_err(ConfigError::Invalid)?;
        if self.caching.response_cache_backend == ResponseCacheBackend::Redis
            && self.limits.backend != LimiterBackend::Redis
        {
            return bad(
                "caching.response_cache_backend = \"redis\" uses the limiter's Redis: set limits.backend = \"redis\" too"
                    .into(),
            );
        }
        let base = &self.upstream.base_url;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return bad(format!(
                "upstream.base_url {base:?} must start with http:// or https://"
            ));
        }
        if let Some(url) = &self.server.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad(format!(
                "server.public_url {url:?} must start with http:// or https://"
            ));
        }
        self.validate_members()?;
        if self.upstream.max_attempts == 0 || self.upstream.max_attempts > 10 {
            return bad("upstream.max_attempts must be between 1 and 10".into());
        }
        if let Some(s) = self
            .upstream
            .retry_statuses
            .iter()
            .find(|s| !(400..=599).contains(*s))
        {
            return bad(format!(
                "upstream.retry_statuses: {s} is not an error status"
            ));
        }
        if self.server.max_body_bytes == 0 {
            return bad("server.max_body_bytes must be greater than 0".into());
        }
        // A zero timeout would close every connection at once; the cap is a semaphore's size.
        for (key, v) in [
            ("header_read_timeout_ms", self.server.header_read_timeout_ms),
            ("body_read_timeout_ms", self.server.body_read_timeout_ms),
            ("idle_timeout_secs", self.server.idle_timeout_secs),
        ] {
            if v == 0 {
                return bad(format!("server.{key} must be greater than 0"));
            }
        }
        if let Some(p) = self
            .server
            .trusted_proxies
            .iter()
            .find(|p| schema::parse_proxy(p).is_none())
        {
            return bad(format!(
                "server.trusted_proxies: {p:?} is not an IP address or CIDR range"
            ));
        }
        if !(1..=1_000_000).contains(&self.server.max_connections) {
            return bad("server.max_connections must be between 1 and 1000000".into());
        }
        limits::validate(&self.limits, &self.org, &self.tenants).map_err(ConfigError::Invalid)?;
        for p in &self.prices {
            p.validate()
                .map_err(|e| ConfigError::Invalid(format!("[[prices]] {:?}: {e}", p.model)))?;
        }
        self.validate_admin()?;
        if let Some(m) = self.alerts.problem() {
            return bad(m);
        }
        if self.store.ledger_queue_capacity == 0 || self.store.ledger_batch_max == 0 {
            return bad(
                "store.ledger_queue_capacity and store.ledger_batch_max must be > 0".into(),
            );
        }
        Ok(())
    }
}

impl Config {
    /// `[admin]`: unique token names, each token given exactly one way.
    fn validate_admin(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let mut seen = std::collections::HashSet::new();
        for t in &self.admin.tokens {
            if !valid_name(&t.name) {
                return bad(format!(
                    "admin.tokens: name {:?}: use 1-64 characters of a-z, 0-9, '-' and '_'",
                    t.name
                ));
            }
            if !seen.insert(t.name.as_str()) {
                return bad(format!("admin token {:?} is declared twice", t.name));
            }
            match (&t.token_env, &t.token_sha256) {
                (None, None) | (Some(_), Some(_)) => {
                    return bad(format!(
                        "admin token {:?}: set exactly one of token_env and token_sha256",
                        t.name
                    ));
                }
                (None, Some(h)) if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    return bad(format!(
                        "admin token {:?}: token_sha256 must be 64 hex digits",
                        t.name
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Tenant names appear in logs, metrics labels and messages, so they are kept to a safe charset.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The live configuration: readers `load()` a snapshot without locking; a reload `store()`s a new
/// one, and requests already running keep the snapshot they started with.
pub type SharedConfig = Arc<ArcSwap<Config>>;

/// Wrap a validated config for sharing.
pub fn shared(cfg: Config) -> SharedConfig {
    Arc::new(ArcSwap::from_pointee(cfg))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../examples/sluice.toml");
        let cfg = Config::from_toml(text).unwrap();
        assert!(cfg.tenant("web").is_some());
    }

    #[test]
    fn empty_config_gets_defaults() {
        let cfg = Config::from_toml("").unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:8080");
        assert_eq!(cfg.server.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(cfg.upstream.base_url, "https://api.anthropic.com");
        assert_eq!(cfg.upstream.api_key_env, "ANTHROPIC_API_KEY");
        assert_eq!(cfg.store.path, "./sluice.db");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("[server]\nlisten_addr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn parse_errors_never_quote_the_source() {
        let secret = "sk-ant-api03-SECRET-typo-line";
        for text in [
            format!("[upstream]\napi_key = \"{secret}\n"),
            format!("[upstream]\napi_key = {secret}\n"),
            format!("[upstream]\nweight = \"{secret}\"\n[server]\nlisten = 5\n"),
            format!("[server]\nlisten = \"{secret}\"\nmax_body_bytes = \"{secret}\"\n"),
        ] {
            let err = Config::from_toml(&text).unwrap_err();
            let (shown, debug) = (err.to_string(), format!("{err:?}"));
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(!debug.contains("SECRET"), "{debug}");
            assert!(shown.contains("line "), "{shown}");
        }
        let err = Config::from_toml("[server]\nlisten = 5\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        // The key is named (a name, not a value), also inside an inline table.
        assert!(err.to_string().contains("`listen`"), "{err}");
        let err = Config::from_toml(
            "[[tenants]]\nname = \"a\"\nlimits = { requests_per_minute = \"lots\" }\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("`requests_per_minute`"), "{err}");
    }

    #[test]
    fn duplicate_and_bad_tenant_names_are_rejected() {
        let dup = "[[tenants]]\nname = \"a\"\n[[tenants]]\nname = \"a\"\n";
        assert!(
            Config::from_toml(dup)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let bad = "[[tenants]]\nname = \"Web Team\"\n";
        assert!(Config::from_toml(bad).is_err());
    }

    #[test]
    fn upstream_members_are_validated() {
        let ok = Config::from_toml(
            "[upstream]\nbreaker_failures = 2\n[[upstream.members]]\nname = \"a\"\napi_key_env = \"KEY_A\"\nweight = 3\n[[upstream.members]]\nname = \"b\"\napi_key = \"k\"\n",
        )
        .unwrap();
        assert_eq!(ok.upstream.members.len(), 2);
        assert_eq!(ok.upstream.members[1].weight, 1);
        assert_eq!(ok.upstream.breaker_open_ms, 30_000);
        for (toml, want) in [
            ("[[upstream.members]]\nname = \"a\"\n", "has no key"),
            (
                "[[upstream.members]]\nname = \"a\"\napi_key = \"k\"\n[[upstream.members]]\nname = \"a\"\napi_key = \"k\"\n",
                "declared twice",
            ),
            (
                "[[upstream.members]]\nname = \"a b\"\napi_key = \"k\"\n",
                "must be 1-64",
            ),
            (
                "[[upstream.members]]\nname = \"a\"\napi_key = \"k\"\nweight = 0\n",
                "every member is a standby",
            ),
            (
                "[[upstream.members]]\nname = \"b\"\nprovider = \"bedrock\"\nregion = \"us-east-1\"\n",
                "models",
            ),
            (
                "[[upstream.members]]\nname = \"b\"\nprovider = \"bedrock\"\napi_key = \"k\"\n",
                "AWS credentials",
            ),
            (
                "[[upstream.members]]\nname = \"v\"\nprovider = \"vertex\"\nregion = \"us-east5\"\nmodels = { m = \"m@1\" }\n",
                "project and region",
            ),
            (
                "[[upstream.members]]\nname = \"a\"\napi_key = \"k\"\n[[upstream.fallbacks]]\nmodel = \"m\"\nthen = [{ member = \"zz\" }]\n",
                "not in upstream.members",
            ),
            (
                "[[upstream.members]]\nname = \"a\"\napi_key = \"k\"\n[[upstream.fallbacks]]\nmodel = \"m\"\nthen = [{ provider = \"vertex\" }]\n",
                "which no member has",
            ),
            (
                "[[upstream.fallbacks]]\nmodel = \"m\"\nthen = [{}]\n",
                "sets none",
            ),
            ("[upstream]\nbreaker_failures = 0\n", "breaker_failures"),
        ] {
            let e = Config::from_toml(toml).unwrap_err().to_string();
            assert!(e.contains(want), "{toml}: {e}");
        }
    }

    #[test]
    fn providers_and_fallbacks_parse() {
        let cfg = Config::from_toml(
            r#"
[[upstream.members]]
name = "key-a"
api_key = "k"
[[upstream.members]]
name = "bedrock-east"
provider = "bedrock"
weight = 0
region = "us-east-1"
aws_access_key_id_env = "AK"
aws_secret_access_key_env = "SK"
models = { "claude-sonnet-4-5" = "anthropic.claude-sonnet-4-5-20250929-v1:0" }
[[upstream.members]]
name = "vertex"
provider = "vertex"
weight = 0
project = "p"
region = "us-east5"
credentials_file = "/sa.json"
models = { "claude-sonnet-4-5" = "claude-sonnet-4-5@20250929" }
[[upstream.fallbacks]]
model = "claude-sonnet-4-5"
then = [{ provider = "bedrock" }, { member = "vertex" }, { model = "claude-haiku-4-5" }]
"#,
        )
        .unwrap();
        let m = &cfg.upstream.members;
        assert_eq!(m[1].provider, Provider::Bedrock);
        assert_eq!(m[1].weight, 0);
        assert_eq!(m[2].provider.as_str(), "vertex");
        assert_eq!(cfg.upstream.fallbacks[0].then.len(), 3);
        assert_eq!(
            cfg.upstream.fallbacks[0].then[2].model.as_deref(),
            Some("claude-haiku-4-5")
        );
        assert!(cfg.upstream.affinity);
    }

    #[test]
    fn bad_urls_are_rejected() {
        assert!(Config::from_toml("[upstream]\nbase_url = \"ftp://x\"\n").is_err());
        assert!(Config::from_toml("[server]\npublic_url = \"gateway\"\n").is_err());
    }

    #[test]
    fn limits_parse_with_defaults_and_per_class_overrides() {
        let text = r#"
[limits]
backend = "redis"
fail_mode = "closed"
[[limits.classes]]
name = "big"
models = ["claude-opus-*"]
[org]
tier = "build"
keep_free = { batch = 0.2 }
[org.classes.big]
input_tokens_per_minute = 100000
[[tenants]]
name = "web"
priority = "critical"
weight = 3
max_wait_ms = 2000
budget_daily_usd = 12.5
limits = { requests_per_minute = 100, input_tokens_per_minute = 200000, input_tokens_burst = 50000 }
class_limits.big = { output_tokens_per_minute = 8000 }
[[tenants]]
name = "plain"
"#;
        let cfg = Config::from_toml(text).unwrap();
        assert_eq!(cfg.limits.backend, LimiterBackend::Redis);
        assert_eq!(cfg.limits.fail_mode, FailMode::Closed);
        assert!(cfg.limits.classes[0].matches("claude-opus-4-5"));
        assert!(!cfg.limits.classes[0].matches("claude-sonnet-4-5"));
        assert_eq!(cfg.org.keep_free.for_priority(Priority::Batch), 0.2);
        assert_eq!(cfg.org.keep_free.for_priority(Priority::Critical), 0.0);
        let web = cfg.tenant("web").unwrap();
        assert_eq!(web.priority, Priority::Critical);
        assert_eq!(web.weight, 3);
        assert_eq!(web.limits.input_tokens_burst, Some(50_000));
        assert_eq!(web.class_limits["big"].output_tokens_per_minute, Some(8000));
        assert_eq!(usd_to_micros(web.budget_daily_usd.unwrap()), 12_500_000);
        let plain = cfg.tenant("plain").unwrap();
        assert_eq!(
            (plain.priority, plain.weight, plain.max_wait_ms),
            (Priority::Standard, 1, 0)
        );
        assert!(plain.limits.is_empty());
    }

    #[test]
    fn nonsense_limits_are_rejected_with_the_place() {
        for (text, needle) in [
            (
                "[[tenants]]\nname = \"a\"\nlimits = { requests_per_minute = 0 }\n",
                "requests_per_minute = 0",
            ),
            (
                "[[tenants]]\nname = \"a\"\nlimits = { input_tokens_burst = 5 }\n",
                "input_tokens_burst needs",
            ),
            ("[[tenants]]\nname = \"a\"\nweight = 0\n", "weight"),
            (
                "[[tenants]]\nname = \"a\"\npriority = \"urgent\"\n",
                "urgent",
            ),
            ("[limits]\nfallback_share = 0\n", "fallback_share"),
            ("[org]\nkeep_free = { batch = 1.5 }\n", "keep_free"),
            (
                "[[tenants]]\nname = \"a\"\nbudget_daily_usd = -1\n",
                "budgets",
            ),
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn a_swap_is_seen_by_new_readers_only() {
        let live = shared(Config::from_toml("").unwrap());
        let before = live.load_full();
        let mut next = (*before).clone();
        next.server.max_body_bytes = 7;
        live.store(Arc::new(next));
        assert_eq!(before.server.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(live.load().server.max_body_bytes, 7);
    }
}
