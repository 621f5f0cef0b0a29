//! Upstream providers: the Anthropic API, Claude on AWS Bedrock ([`bedrock`]) and Claude on
//! Google Vertex AI ([`vertex`]), reached through one pooled HTTP/1.1 keep-alive client (rustls
//! for `https://`). Whatever the provider, callers send and receive the Anthropic wire: a
//! member's request is built for its provider here, and its reply comes back as Anthropic JSON
//! or SSE ([`UpstreamBody`]), errors included.
//!
//! This crate owns the upstream credentials: callers hand it filtered client headers and it
//! adds the credentials of the member (see [`pool`]) an attempt goes to, which never leave
//! this crate in a readable form (`Debug` redacts them, headers are marked sensitive; health
//! shows member names only). Which members may serve a call, and in which order of fallback,
//! is [`route`]'s.

pub mod bedrock;
mod body;
pub mod connector;
mod json;
pub mod pool;
mod retry;
pub mod route;
pub mod vertex;

pub use body::UpstreamBody;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
pub use pool::{BreakerPolicy, Choice, InFlight, MemberHealth, Outcome, Pool, Unavailable};
pub use retry::{RetryPolicy, retry_after};
pub use route::{Step, StepSpec};
use sluice_core::{Provider, SecretString};
use std::collections::BTreeMap;
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

/// Settings of an upstream.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// A short name recorded on ledger rows (never the URL's credentials; URLs carry none).
    pub name: String,
    /// Base URL of the Anthropic API members without their own, e.g. `https://api.anthropic.com`.
    pub base_url: String,
    /// The members calls are spread over; at least one, at most 64.
    pub members: Vec<MemberOptions>,
    /// Fallback chains: requested model (or `*`) → steps after the primary.
    pub fallbacks: Vec<(String, Vec<StepSpec>)>,
    /// Route calls with a cacheable prefix by affinity (see [`pool`]).
    pub affinity: bool,
    /// Bounded load factor of affinity routing (≥ 1).
    pub affinity_load_factor: f64,
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
    /// Its share of the traffic relative to the other members; 0: a standby, used only by
    /// fallback steps.
    pub weight: u32,
    /// Requested model → this member's model id. Empty: every model under its own name
    /// (Anthropic members only; validation requires a map for the others).
    pub models: BTreeMap<String, String>,
    /// Its provider and credentials.
    pub kind: MemberKind,
}

/// A member's provider and credentials.
#[derive(Debug, Clone)]
pub enum MemberKind {
    /// The Anthropic API with this key (`x-api-key`), at `base_url` or the upstream's.
    Anthropic {
        /// The API key.
        api_key: SecretString,
        /// Base URL override.
        base_url: Option<String>,
    },
    /// Claude on AWS Bedrock.
    Bedrock(bedrock::BedrockOptions),
    /// Claude on Google Vertex AI.
    Vertex(vertex::VertexOptions),
}

/// How a member reaches its provider.
enum Transport {
    Anthropic {
        scheme: http::uri::Scheme,
        authority: http::uri::Authority,
        base_path: String,
        key: HeaderValue,
    },
    Bedrock(Box<bedrock::Bedrock>),
    Vertex(vertex::Vertex),
}

/// Which API a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/messages`.
    Messages,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    /// Anything else (models, batches): Anthropic API members only, passed through.
    Other,
}

/// One attempt's request, in the Anthropic wire.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The client's method.
    pub method: Method,
    /// The client's path and query (e.g. `/v1/messages?beta=true`).
    pub path_and_query: &'a str,
    /// The client's headers, stripped of its credentials and hop-by-hop headers.
    pub headers: HeaderMap,
    /// The body, with `model` already the member's model id for Anthropic API members.
    pub body: Bytes,
    /// Which API.
    pub endpoint: Endpoint,
    /// The member's model id (see [`Upstream::model_id`]); empty for [`Endpoint::Other`].
    pub model_id: &'a str,
    /// The client asked for SSE.
    pub stream: bool,
}

/// The upstream: its members, their health, and how calls are routed among them.
#[derive(Clone)]
pub struct Upstream {
    client: Client<connector::Https, Full<Bytes>>,
    transports: Arc<[Transport]>,
    routes: Arc<route::Routes>,
    pool: Arc<Pool>,
    /// Spreads [`Upstream::send`]'s picks (its callers have no random source of their own).
    spread: Arc<std::sync::atomic::AtomicU64>,
    first_byte_timeout: Duration,
    name: String,
    affinity: bool,
    load_factor: f64,
    retry: std::sync::Arc<RetryPolicy>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("members", &self.pool.len())
            .finish_non_exhaustive()
    }
}

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

fn anthropic_transport(
    name: &str,
    base_url: &str,
    api_key: &SecretString,
) -> Result<Transport, UpstreamError> {
    let base: Uri = base_url
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
    let mut key = HeaderValue::from_str(api_key.expose()).map_err(|_| {
        UpstreamError::Config(format!(
            "the api key of member '{name}' is not a valid header value"
        ))
    })?;
    key.set_sensitive(true);
    Ok(Transport::Anthropic {
        scheme,
        authority,
        base_path,
        key,
    })
}

impl Upstream {
    /// Build the client. No connection is made until the first call (a Vertex member's key
    /// file is read now, so a bad one fails at startup).
    pub fn new(opts: UpstreamOptions) -> Result<Self, UpstreamError> {
        if opts.members.is_empty() {
            return Err(UpstreamError::Config("no upstream member".into()));
        }
        if opts.members.len() > route::MAX_MEMBERS {
            return Err(UpstreamError::Config(format!(
                "at most {} upstream members",
                route::MAX_MEMBERS
            )));
        }
        let mut transports = Vec::with_capacity(opts.members.len());
        let mut facts = Vec::with_capacity(opts.members.len());
        for m in &opts.members {
            let (transport, provider) = match &m.kind {
                MemberKind::Anthropic { api_key, base_url } => (
                    anthropic_transport(
                        &m.name,
                        base_url.as_deref().unwrap_or(&opts.base_url),
                        api_key,
                    )?,
                    Provider::Anthropic,
                ),
                MemberKind::Bedrock(b) => (
                    Transport::Bedrock(Box::new(bedrock::Bedrock::new(b.clone())?)),
                    Provider::Bedrock,
                ),
                MemberKind::Vertex(v) => (
                    Transport::Vertex(vertex::Vertex::new(v.clone())?),
                    Provider::Vertex,
                ),
            };
            transports.push(transport);
            facts.push(route::MemberFacts {
                name: m.name.clone(),
                provider,
                active: m.weight > 0,
                models: (!m.models.is_empty()).then(|| {
                    m.models
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                }),
            });
        }
        let pool = Pool::new(
            &opts
                .members
                .iter()
                .map(|m| (m.name.clone(), m.weight))
                .collect::<Vec<_>>(),
            opts.breaker,
        );

        let https = connector::https(connector::Tcp {
            nodelay: true,
            connect_timeout: Some(opts.connect_timeout),
            keepalive: Some(Duration::from_secs(30)),
        });
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(opts.pool_max_idle_per_host)
            .pool_idle_timeout(opts.pool_idle_timeout)
            .build(https);
        Ok(Self {
            client,
            transports: transports.into(),
            routes: Arc::new(route::Routes::new(facts, opts.fallbacks)),
            pool: Arc::new(pool),
            spread: Arc::default(),
            first_byte_timeout: opts.first_byte_timeout,
            name: opts.name,
            affinity: opts.affinity,
            load_factor: opts.affinity_load_factor.max(1.0),
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

    /// Whether calls with a cacheable prefix are routed by affinity.
    pub fn affinity(&self) -> bool {
        self.affinity && self.pool.len() > 1
    }

    /// The route of a call: for Messages and token counting, the primary step and the
    /// model's fallback chain; for anything else one step on the Anthropic API members.
    pub fn steps<'a>(&'a self, endpoint: Endpoint, model: &'a str) -> route::Steps<'a> {
        match endpoint {
            Endpoint::Messages => self.routes.steps(model, false),
            Endpoint::CountTokens => self.routes.steps(model, true),
            Endpoint::Other => smallvec::smallvec![Step {
                index: 0,
                model,
                eligible: self.routes.anthropic(),
            }],
        }
    }

    /// Pick a member for an attempt of a step (see [`Pool::choose`]); report its outcome with
    /// [`Upstream::report`].
    pub fn choose(
        &self,
        eligible: u64,
        tried: &[usize],
        random: u64,
        affinity: Option<u64>,
    ) -> Result<usize, Unavailable> {
        self.pool.choose(
            Instant::now(),
            &Choice {
                eligible,
                tried,
                random,
                affinity: affinity.filter(|_| self.affinity),
                load_factor: self.load_factor,
            },
        )
    }

    /// Pick among every member (see [`Pool::pick`]).
    pub fn pick(&self, tried: &[usize], random: u64) -> Result<usize, Unavailable> {
        self.pool.pick(Instant::now(), tried, random)
    }

    /// Count a call on `member` until the returned guard is dropped (affinity's bounded load).
    pub fn in_flight(&self, member: usize) -> InFlight {
        InFlight::new(Arc::clone(&self.pool), member)
    }

    /// Whether an `eligible` member not in `tried` is available now, and how long until any
    /// eligible member is (see [`Pool::ready`]).
    pub fn ready(&self, eligible: u64, tried: &[usize]) -> (bool, Option<Duration>) {
        self.pool.ready(Instant::now(), eligible, tried)
    }

    /// Report how an attempt on `member` went.
    pub fn report(&self, member: usize, outcome: Outcome) {
        self.pool.report(member, outcome, Instant::now());
    }

    /// A member's name.
    pub fn member_name(&self, member: usize) -> &str {
        self.pool.name(member)
    }

    /// A member's provider.
    pub fn provider(&self, member: usize) -> Provider {
        self.routes
            .member(member)
            .map_or(Provider::Anthropic, |m| m.provider)
    }

    /// The id under which `member` serves `model` (its map's, else the name itself).
    pub fn model_id<'a>(&'a self, member: usize, model: &'a str) -> &'a str {
        self.routes
            .member(member)
            .and_then(|m| m.models.as_ref())
            .and_then(|m| m.get(model))
            .map_or(model, String::as_str)
    }

    /// Every member's health now.
    pub fn health(&self) -> Vec<MemberHealth> {
        self.pool.health(Instant::now())
    }

    /// Send a request through some available Anthropic API member (the first one when none
    /// is: a caller without retries, e.g. a batch poll, is better served by a try than by a
    /// refusal), and report the outcome to it.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let r = self
            .spread
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let eligible = self.routes.anthropic();
        let member = self
            .choose(eligible, &[], r, None)
            .unwrap_or_else(|_| eligible.trailing_zeros() as usize);
        let out = Outgoing {
            method,
            path_and_query,
            headers,
            body,
            endpoint: Endpoint::Other,
            model_id: "",
            stream: false,
        };
        let result = self.send_to(member, out).await;
        self.report(member, outcome_of(&result));
        result
    }

    /// Send one attempt as `member`, in its provider's wire, within the first-byte timeout.
    /// The reply comes back in the Anthropic wire: a provider's error body in the Anthropic
    /// error shape, a Bedrock event stream as Anthropic SSE.
    pub async fn send_to(
        &self,
        member: usize,
        out: Outgoing<'_>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let transport = self
            .transports
            .get(member)
            .ok_or_else(|| UpstreamError::Config(format!("no upstream member {member}")))?;
        let deadline = self.first_byte_timeout;
        match tokio::time::timeout(deadline, self.attempt(transport, out)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout(deadline)),
        }
    }

    async fn attempt(
        &self,
        transport: &Transport,
        out: Outgoing<'_>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match transport {
            Transport::Anthropic {
                scheme,
                authority,
                base_path,
                key,
            } => {
                let pq = if base_path.is_empty() {
                    http::uri::PathAndQuery::try_from(out.path_and_query)
                } else {
                    http::uri::PathAndQuery::try_from(format!("{base_path}{}", out.path_and_query))
                }
                .map_err(|e| UpstreamError::Config(format!("path: {e}")))?;
                let uri = Uri::builder()
                    .scheme(scheme.clone())
                    .authority(authority.clone())
                    .path_and_query(pq)
                    .build()
                    .map_err(|e| UpstreamError::Config(e.to_string()))?;
                let mut headers = out.headers;
                headers.insert(X_API_KEY.clone(), key.clone());
                let mut req = Request::new(Full::new(out.body));
                *req.method_mut() = out.method;
                *req.uri_mut() = uri;
                *req.headers_mut() = headers;
                let resp = self.request(req).await?;
                Ok(resp.map(UpstreamBody::Plain))
            }
            Transport::Bedrock(b) => {
                if out.endpoint != Endpoint::Messages {
                    return Err(UpstreamError::Config(
                        "a bedrock member serves only Messages calls".into(),
                    ));
                }
                let req = b.prepare(
                    out.model_id,
                    out.stream,
                    &out.headers,
                    &out.body,
                    std::time::SystemTime::now(),
                )?;
                let resp = self.request(req.map(Full::new)).await?;
                if resp.status().is_success() {
                    let (mut parts, body) = resp.into_parts();
                    if out.stream {
                        as_event_stream(&mut parts.headers);
                        return Ok(Response::from_parts(
                            parts,
                            UpstreamBody::Bedrock(bedrock::SseFromEventStream::new(body)),
                        ));
                    }
                    return Ok(Response::from_parts(parts, UpstreamBody::Plain(body)));
                }
                let (mut parts, bytes) = read_error(resp).await?;
                let (status, body) = bedrock::anthropic_error(parts.status, &parts.headers, &bytes);
                parts.status = status;
                Ok(as_json_error(parts, body))
            }
            Transport::Vertex(v) => {
                let endpoint = match out.endpoint {
                    Endpoint::Messages => vertex::Endpoint::Messages,
                    Endpoint::CountTokens => vertex::Endpoint::CountTokens,
                    Endpoint::Other => {
                        return Err(UpstreamError::Config(
                            "a vertex member serves only Messages and token counting".into(),
                        ));
                    }
                };
                let req = v
                    .prepare(endpoint, out.model_id, out.stream, &out.headers, &out.body)
                    .await?;
                let resp = self.request(req.map(Full::new)).await?;
                if resp.status().is_success() {
                    return Ok(resp.map(UpstreamBody::Plain));
                }
                let (mut parts, bytes) = read_error(resp).await?;
                match vertex::anthropic_error(parts.status, &bytes) {
                    Some((status, body)) => {
                        parts.status = status;
                        Ok(as_json_error(parts, body))
                    }
                    None => Ok(Response::from_parts(
                        parts,
                        UpstreamBody::Full(Full::new(bytes)),
                    )),
                }
            }
        }
    }

    async fn request(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<hyper::body::Incoming>, UpstreamError> {
        self.client
            .request(req)
            .await
            .map_err(|e| UpstreamError::Unreachable(describe(&e)))
    }
}

/// A provider's error reply, read whole (error bodies are small; the first-byte timeout
/// bounds the wait).
async fn read_error(
    resp: Response<hyper::body::Incoming>,
) -> Result<(http::response::Parts, Bytes), UpstreamError> {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| UpstreamError::Unreachable(describe(&e)))?
        .to_bytes();
    Ok((parts, bytes))
}

fn as_json_error(mut parts: http::response::Parts, body: Bytes) -> Response<UpstreamBody> {
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, UpstreamBody::Full(Full::new(body)))
}

/// The headers of a Bedrock stream as the client expects an Anthropic one.
fn as_event_stream(h: &mut HeaderMap) {
    h.remove(http::header::CONTENT_LENGTH);
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
}

/// The health outcome of an attempt's result.
pub fn outcome_of(result: &Result<Response<UpstreamBody>, UpstreamError>) -> Outcome {
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
                models: BTreeMap::new(),
                kind: MemberKind::Anthropic {
                    api_key: SecretString::new("sk-ant-secret"),
                    base_url: None,
                },
            }],
            fallbacks: Vec::new(),
            affinity: true,
            affinity_load_factor: 1.25,
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
