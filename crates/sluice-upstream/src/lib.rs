//! Upstream providers. For now one: the Anthropic API (or anything speaking its wire), reached
//! through a pooled HTTP/1.1 keep-alive client (rustls for `https://`). This crate owns the
//! upstream credentials: callers hand it filtered client headers and it adds the key of the
//! member (see [`pool`]) an attempt goes to, which never leaves this crate in a readable form
//! (`Debug` redacts it, the header is marked sensitive; health shows member names only).

pub mod bedrock;
pub mod pool;
mod retry;
pub mod vertex;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
pub use pool::{BreakerPolicy, MemberHealth, Outcome, Pool, Unavailable};
pub use retry::{RetryPolicy, retry_after};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// Why an upstream call produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream could not be reached (DNS, TCP, TLS, or the connection broke before a
    /// response started).
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// No response headers within the first-byte timeout.
    #[error("upstream did not respond within {0:?}")]
    Timeout(Duration),
    /// The configuration cannot make a valid upstream request.
    #[error("upstream misconfigured: {0}")]
    Config(String),
}

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Settings of an upstream.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// A short name recorded on ledger rows (never the URL's credentials; URLs carry none).
    pub name: String,
    /// Base URL, e.g. `https://api.anthropic.com`.
    pub base_url: String,
    /// The members (API keys) calls are spread over; at least one.
    pub members: Vec<MemberOptions>,
    /// When a member's circuit breaker opens and for how long.
    pub breaker: BreakerPolicy,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for response headers.
    pub first_byte_timeout: Duration,
    /// Idle connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// How long idle connections are kept.
    pub pool_idle_timeout: Duration,
    /// When to try again.
    pub retry: RetryPolicy,
}

/// One member of an upstream's pool.
#[derive(Debug, Clone)]
pub struct MemberOptions {
    /// Its name, shown in health and recorded on ledger rows (never the key).
    pub name: String,
    /// Its share of the traffic relative to the other members.
    pub weight: u32,
    /// Its API key, sent as `x-api-key`.
    pub api_key: Secret,
}

/// The Anthropic API as an upstream.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    keys: Arc<[HeaderValue]>,
    pool: Arc<Pool>,
    /// Spreads [`Upstream::send`]'s picks (its callers have no random source of their own).
    spread: Arc<std::sync::atomic::AtomicU64>,
    first_byte_timeout: Duration,
    name: String,
    retry: std::sync::Arc<RetryPolicy>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

impl Upstream {
    /// Build the client. No connection is made until the first call.
    pub fn new(opts: UpstreamOptions) -> Result<Self, UpstreamError> {
        let base: Uri = opts
            .base_url
            .parse()
            .map_err(|e| UpstreamError::Config(format!("base_url: {e}")))?;
        let scheme = base
            .scheme()
            .cloned()
            .ok_or_else(|| UpstreamError::Config("base_url has no scheme".into()))?;
        let authority = base
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamError::Config("base_url has no host".into()))?;
        let base_path = base.path().trim_end_matches('/').to_owned();
        if opts.members.is_empty() {
            return Err(UpstreamError::Config("no upstream member".into()));
        }
        let keys = opts
            .members
            .iter()
            .map(|m| {
                let mut k = HeaderValue::from_str(m.api_key.expose()).map_err(|_| {
                    UpstreamError::Config(format!(
                        "the api key of member '{}' is not a valid header value",
                        m.name
                    ))
                })?;
                k.set_sensitive(true);
                Ok(k)
            })
            .collect::<Result<Vec<_>, UpstreamError>>()?;
        let pool = Pool::new(
            &opts
                .members
                .iter()
                .map(|m| (m.name.clone(), m.weight))
                .collect::<Vec<_>>(),
            opts.breaker,
        );

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(opts.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(30)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(opts.pool_max_idle_per_host)
            .pool_idle_timeout(opts.pool_idle_timeout)
            .build(https);
        Ok(Self {
            client,
            scheme,
            authority,
            base_path,
            keys: keys.into(),
            pool: Arc::new(pool),
            spread: Arc::default(),
            first_byte_timeout: opts.first_byte_timeout,
            name: opts.name,
            retry: std::sync::Arc::new(opts.retry),
        })
    }

    /// The name recorded on ledger rows.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The retry policy of calls to this upstream.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Pick a member for an attempt (see [`Pool::pick`]); report its outcome with
    /// [`Upstream::report`].
    pub fn pick(&self, tried: &[usize], random: u64) -> Result<usize, Unavailable> {
        self.pool.pick(Instant::now(), tried, random)
    }

    /// Whether a member not in `tried` is available now, and how long until any member is
    /// (see [`Pool::ready`]).
    pub fn ready(&self, tried: &[usize]) -> (bool, Option<Duration>) {
        self.pool.ready(Instant::now(), tried)
    }

    /// Report how an attempt on `member` went.
    pub fn report(&self, member: usize, outcome: Outcome) {
        self.pool.report(member, outcome, Instant::now());
    }

    /// A member's name.
    pub fn member_name(&self, member: usize) -> &str {
        self.pool.name(member)
    }

    /// Every member's health now.
    pub fn health(&self) -> Vec<MemberHealth> {
        self.pool.health(Instant::now())
    }

    /// Send a request through some available member (the first one when none is: a caller
    /// without retries, e.g. a batch poll, is better served by a try than by a refusal), and
    /// report the outcome to it.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let r = self
            .spread
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let member = self.pick(&[], r).unwrap_or(0);
        let result = self
            .send_to(member, method, path_and_query, headers, body)
            .await;
        self.report(member, outcome_of(&result));
        result
    }

    /// Send a request as `member`. `path_and_query` is the client's (e.g.
    /// `/v1/messages?beta=true`); `headers` are the client's headers already stripped of its
    /// credentials and hop-by-hop headers. The member's key is added here.
    pub async fn send_to(
        &self,
        member: usize,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let pq = if self.base_path.is_empty() {
            http::uri::PathAndQuery::try_from(path_and_query)
        } else {
            http::uri::PathAndQuery::try_from(format!("{}{}", self.base_path, path_and_query))
        }
        .map_err(|e| UpstreamError::Config(format!("path: {e}")))?;
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| UpstreamError::Config(e.to_string()))?;
        let key = self
            .keys
            .get(member)
            .ok_or_else(|| UpstreamError::Config(format!("no upstream member {member}")))?;
        headers.insert(X_API_KEY.clone(), key.clone());
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        match tokio::time::timeout(self.first_byte_timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(UpstreamError::Unreachable(describe(&e))),
            Err(_) => Err(UpstreamError::Timeout(self.first_byte_timeout)),
        }
    }
}

/// The health outcome of an attempt's result.
pub fn outcome_of(result: &Result<Response<Incoming>, UpstreamError>) -> Outcome {
    match result {
        Ok(r) => Outcome::of_status(r.status(), r.headers()),
        Err(UpstreamError::Unreachable(_) | UpstreamError::Timeout(_)) => Outcome::Failure,
        Err(UpstreamError::Config(_)) => Outcome::Neutral,
    }
}

/// A one-line cause chain. hyper's top-level message alone ("client error (Connect)") says too
/// little for an operator.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn opts(base: &str) -> UpstreamOptions {
        UpstreamOptions {
            retry: RetryPolicy::default(),
            name: "anthropic".into(),
            base_url: base.into(),
            members: vec![MemberOptions {
                name: "default".into(),
                weight: 1,
                api_key: Secret::new("sk-ant-secret"),
            }],
            breaker: BreakerPolicy::default(),
            connect_timeout: Duration::from_millis(500),
            first_byte_timeout: Duration::from_millis(500),
            pool_max_idle_per_host: 8,
            pool_idle_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let u = Upstream::new(opts("http://127.0.0.1:1")).unwrap();
        let dbg = format!("{u:?} {:?}", opts("http://x"));
        assert!(!dbg.contains("sk-ant-secret"), "{dbg}");
    }

    #[test]
    fn bad_base_url_is_a_config_error() {
        assert!(matches!(
            Upstream::new(opts("not a url")),
            Err(UpstreamError::Config(_))
        ));
    }

    #[tokio::test]
    async fn refused_connection_is_unreachable() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let u = Upstream::new(opts(&format!("http://127.0.0.1:{port}"))).unwrap();
        let err = u
            .send(Method::GET, "/v1/models", HeaderMap::new(), Bytes::new())
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Unreachable(_)), "{err}");
    }

    #[tokio::test]
    async fn silent_upstream_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (_s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let u = Upstream::new(opts(&format!("http://{addr}"))).unwrap();
        let err = u
            .send(Method::GET, "/v1/models", HeaderMap::new(), Bytes::new())
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Timeout(_)), "{err}");
    }
}
