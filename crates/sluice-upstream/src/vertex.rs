//! Claude on Google Vertex AI: `rawPredict` / `streamRawPredict` with OAuth tokens from a
//! service-account file or the metadata server.
//!
//! Vertex speaks the Anthropic wire with three differences, all handled by [`Vertex::prepare`]:
//! the model is named in the URL instead of the body, the body carries
//! `"anthropic_version":"vertex-2023-10-16"` instead of the `anthropic-version` header, and the
//! credential is a short-lived Google OAuth access token (`Authorization: Bearer …`) instead of
//! `x-api-key`. Replies are the Anthropic JSON and SSE shapes unchanged, except errors raised by
//! Google's front end rather than by the model, which [`anthropic_error`] translates.
//!
//! Tokens are cached and refreshed five minutes before they expire; concurrent callers that find
//! the token stale wait for one refresh rather than each asking for a token (single flight).
//! Neither the private key nor a token is ever logged or shown by `Debug`.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::UpstreamError;

/// The `anthropic_version` Vertex requires in the request body.
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";
/// The OAuth scope of Vertex AI calls.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Google's token endpoint, for key files that do not name one.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The GCE/GKE metadata server.
const DEFAULT_METADATA_URL: &str = "http://metadata.google.internal";
/// A token with less than this left is refreshed before use, so a call never starts with a
/// token that may expire while the request is in flight.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// The lifetime asked for in the JWT assertion (Google's maximum).
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Token replies are small; a larger one is not a token endpoint.
const TOKEN_REPLY_LIMIT: usize = 64 * 1024;

/// Settings of a Vertex AI upstream.
#[derive(Debug, Clone)]
pub struct VertexOptions {
    /// The Google Cloud project id.
    pub project: String,
    /// The Vertex region, e.g. `us-east5`, or `global`.
    pub region: String,
    /// Overrides the endpoint; default `https://{region}-aiplatform.googleapis.com`
    /// (`https://aiplatform.googleapis.com` for `global`).
    pub base_url: Option<String>,
    /// Where access tokens come from.
    pub credentials: VertexCredentials,
    /// The longest a token fetch may take (connect included).
    pub timeout: Duration,
}

/// Where Vertex access tokens come from.
#[derive(Debug, Clone)]
pub enum VertexCredentials {
    /// A service-account JSON key file (`client_email`, `private_key` PEM PKCS#8, `token_uri`,
    /// `private_key_id`).
    ServiceAccountFile(std::path::PathBuf),
    /// The GCE/GKE metadata server; `base_url` overridable for tests (default
    /// `http://metadata.google.internal`).
    Metadata {
        /// The metadata server's base URL.
        base_url: Option<String>,
    },
}

/// The Vertex endpoint a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Messages (`rawPredict`, or `streamRawPredict` when streaming).
    Messages,
    /// Token counting (`count-tokens:rawPredict`).
    CountTokens,
}

/// Claude on Vertex AI: builds authenticated upstream requests. Cheap to clone (the token cache
/// is shared by the clones).
#[derive(Clone)]
pub struct Vertex {
    inner: Arc<Inner>,
}

struct Inner {
    project: String,
    region: String,
    /// `scheme://authority[/path]`, without a trailing slash.
    base: String,
    source: TokenSource,
    client: Client<crate::connector::Https, Full<Bytes>>,
    timeout: Duration,
    cache: Mutex<Cache>,
    /// Held by the one caller refreshing the token; the others wait on it (single flight).
    refresh: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    token: Option<Token>,
    /// Bumped on every refresh, so a waiter can tell that the refresh it waited for happened.
    generation: u64,
}

#[derive(Clone)]
struct Token {
    /// `Bearer …`, marked sensitive.
    header: HeaderValue,
    expires: Instant,
}

impl Token {
    fn fresh(&self, now: Instant) -> bool {
        self.expires.saturating_duration_since(now) > REFRESH_MARGIN
    }

    fn valid(&self, now: Instant) -> bool {
        self.expires > now
    }
}

enum TokenSource {
    ServiceAccount(Box<ServiceAccount>),
    Metadata { url: Uri },
}

struct ServiceAccount {
    client_email: String,
    private_key_id: Option<String>,
    token_uri: String,
    token_uri_parsed: Uri,
    key: RsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for Vertex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let credentials = match &self.inner.source {
            TokenSource::ServiceAccount(sa) => format!("service account {}", sa.client_email),
            TokenSource::Metadata { url } => format!("metadata server {url}"),
        };
        f.debug_struct("Vertex")
            .field("project", &self.inner.project)
            .field("region", &self.inner.region)
            .field("base", &self.inner.base)
            .field("credentials", &credentials)
            .finish_non_exhaustive()
    }
}

/// The fields of a service-account key file this module uses.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

impl ServiceAccount {
    fn load(path: &Path) -> Result<Self, UpstreamError> {
        let shown = path.display();
        let text = std::fs::read(path)
            .map_err(|e| UpstreamError::Config(format!("vertex key file {shown}: {e}")))?;
        // Only the position of a parse error is reported: serde's messages may quote values,
        // and a value here may be the private key.
        let file: KeyFile = serde_json::from_slice(&text).map_err(|e| {
            UpstreamError::Config(format!(
                "vertex key file {shown}: not a service-account JSON key ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        if let Some(kind) = &file.kind
            && kind != "service_account"
        {
            return Err(UpstreamError::Config(format!(
                "vertex key file {shown}: type is {kind:?}, expected \"service_account\""
            )));
        }
        // The PEM error is not shown: it can quote a line of the key.
        let der =
            PrivatePkcs8KeyDer::from_pem_slice(file.private_key.as_bytes()).map_err(|_| {
                UpstreamError::Config(format!(
                    "vertex key file {shown}: private_key is not a PKCS#8 PEM key"
                ))
            })?;
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| {
            UpstreamError::Config(format!(
                "vertex key file {shown}: private_key is not a usable RSA key ({e})"
            ))
        })?;
        let token_uri = file
            .token_uri
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned());
        let token_uri_parsed = absolute_uri(&token_uri).map_err(|e| {
            UpstreamError::Config(format!("vertex key file {shown}: token_uri {e}"))
        })?;
        Ok(Self {
            client_email: file.client_email,
            private_key_id: file.private_key_id.filter(|k| !k.is_empty()),
            token_uri,
            token_uri_parsed,
            key,
            rng: SystemRandom::new(),
        })
    }

    /// The signed JWT assertion of a token request issued at `iat` (Unix seconds).
    fn assertion(&self, iat: u64) -> Result<String, UpstreamError> {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let (Some(kid), Some(obj)) = (&self.private_key_id, header.as_object_mut()) {
            obj.insert("kid".into(), kid.clone().into());
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| {
                UpstreamError::Config("vertex token: signing the assertion failed".into())
            })?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(&signature)
        ))
    }

    fn token_request(&self) -> Result<Request<Full<Bytes>>, UpstreamError> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // The grant type is form-encoded (`:` as `%3A`), as Google's own client libraries send
        // it; the assertion is base64url and dots, which need no encoding.
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={}",
            self.assertion(iat)?
        );
        Request::builder()
            .method(Method::POST)
            .uri(self.token_uri_parsed.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| UpstreamError::Config(format!("vertex token request: {e}")))
    }
}

/// Parses an absolute `http(s)://` URI.
fn absolute_uri(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(format!("{s:?}: expected an absolute http(s) URL")),
    }
}

/// Whether `s` is a non-empty run of ASCII alphanumerics and `extra`, i.e. safe as one path
/// segment without escaping.
fn is_segment(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

fn lock(m: &Mutex<Cache>) -> MutexGuard<'_, Cache> {
    // The cache is replaced whole under the lock, so a panic elsewhere cannot leave it torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Vertex {
    /// Validates the options and loads the credentials: a service-account key file is read and
    /// parsed now, so a bad file fails at startup. No connection is made until the first call.
    pub fn new(opts: VertexOptions) -> Result<Self, UpstreamError> {
        if !is_segment(&opts.project, b"-._:") {
            return Err(UpstreamError::Config(format!(
                "vertex project {:?} is not a project id",
                opts.project
            )));
        }
        if !is_segment(&opts.region, b"-") {
            return Err(UpstreamError::Config(format!(
                "vertex region {:?} is not a region",
                opts.region
            )));
        }
        let base = match &opts.base_url {
            Some(b) => b.trim_end_matches('/').to_owned(),
            None if opts.region == "global" => "https://aiplatform.googleapis.com".to_owned(),
            None => format!("https://{}-aiplatform.googleapis.com", opts.region),
        };
        absolute_uri(&base).map_err(|e| UpstreamError::Config(format!("vertex base_url {e}")))?;
        let source = match &opts.credentials {
            VertexCredentials::ServiceAccountFile(path) => {
                TokenSource::ServiceAccount(Box::new(ServiceAccount::load(path)?))
            }
            VertexCredentials::Metadata { base_url } => {
                let base = base_url
                    .as_deref()
                    .unwrap_or(DEFAULT_METADATA_URL)
                    .trim_end_matches('/');
                let url = absolute_uri(&format!(
                    "{base}/computeMetadata/v1/instance/service-accounts/default/token"
                ))
                .map_err(|e| UpstreamError::Config(format!("vertex metadata base_url {e}")))?;
                TokenSource::Metadata { url }
            }
        };

        let https = crate::connector::https(crate::connector::Tcp {
            nodelay: true,
            connect_timeout: Some(opts.timeout),
            keepalive: None,
        });
        // Token fetches are rare (hourly), so few idle connections are worth keeping.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Self {
            inner: Arc::new(Inner {
                project: opts.project,
                region: opts.region,
                base,
                source,
                client,
                timeout: opts.timeout,
                cache: Mutex::new(Cache::default()),
                refresh: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The Google Cloud project calls go to.
    pub fn project(&self) -> &str {
        &self.inner.project
    }

    /// The Vertex region calls go to.
    pub fn region(&self) -> &str {
        &self.inner.region
    }

    /// The URL of a call.
    fn uri(&self, endpoint: Endpoint, model_id: &str, stream: bool) -> Result<Uri, UpstreamError> {
        let (model, method) = match endpoint {
            Endpoint::Messages if stream => (model_id, "streamRawPredict"),
            Endpoint::Messages => (model_id, "rawPredict"),
            Endpoint::CountTokens => ("count-tokens", "rawPredict"),
        };
        // The id goes into the path unescaped, so it must not be able to change the path.
        if !is_segment(model_id, b"-._@") {
            return Err(UpstreamError::Config(format!(
                "vertex model id {model_id:?} is not a model id"
            )));
        }
        let i = &self.inner;
        format!(
            "{}/v1/projects/{}/locations/{}/publishers/anthropic/models/{model}:{method}",
            i.base, i.project, i.region
        )
        .parse()
        .map_err(|e| UpstreamError::Config(format!("vertex url: {e}")))
    }

    /// Build the upstream request. `model_id` is already the Vertex model id (e.g.
    /// `claude-sonnet-4-5@20250929`); `headers` are the client's headers stripped of credentials
    /// and hop-by-hop headers; `body` the client's raw JSON.
    ///
    /// The body keeps its bytes and key order except for the top-level edits Vertex needs:
    /// `model` removed (Messages) or set to `model_id` (CountTokens), and `anthropic_version`
    /// set. Of the headers only `anthropic-beta`, `user-agent` and the mock's `x-mock-*` knobs
    /// are kept. A body that is not a JSON object is a [`UpstreamError::Config`] (the only
    /// variant for a request that cannot be made); a failed token fetch is
    /// [`UpstreamError::Unreachable`].
    pub async fn prepare(
        &self,
        endpoint: Endpoint,
        model_id: &str,
        stream: bool,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Request<Bytes>, UpstreamError> {
        // Everything that can fail without the network first, so a bad request costs no fetch.
        let uri = self.uri(endpoint, model_id, stream)?;
        let body = match endpoint {
            Endpoint::Messages => rewrite_body(body, None)?,
            Endpoint::CountTokens => rewrite_body(body, Some(model_id))?,
        };
        let authorization = self.authorization().await?;

        let mut out = HeaderMap::with_capacity(8);
        for (name, value) in headers {
            let n = name.as_str();
            if n == "anthropic-beta" || n == "user-agent" || n.starts_with("x-mock-") {
                out.append(name.clone(), value.clone());
            }
        }
        out.insert(AUTHORIZATION, authorization);
        out.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut req = Request::new(body);
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        *req.headers_mut() = out;
        Ok(req)
    }

    /// The `Authorization` header: the cached token, or a new one when it is near its expiry.
    async fn authorization(&self) -> Result<HeaderValue, UpstreamError> {
        let inner = &self.inner;
        let seen = {
            let cache = lock(&inner.cache);
            if let Some(t) = &cache.token
                && t.fresh(Instant::now())
            {
                return Ok(t.header.clone());
            }
            cache.generation
        };
        // Single flight: one caller refreshes, the others wait here and then take its token.
        let _flight = inner.refresh.lock().await;
        let fallback = {
            let cache = lock(&inner.cache);
            match &cache.token {
                // Refreshed while this caller waited: use it even if it is short-lived, else
                // every waiter would fetch again in turn.
                Some(t) if cache.generation != seen && t.valid(Instant::now()) => {
                    return Ok(t.header.clone());
                }
                // Still usable, should the refresh fail.
                Some(t) if t.valid(Instant::now()) => Some(t.header.clone()),
                _ => None,
            }
        };
        match self.fetch().await {
            Ok(token) => {
                let header = token.header.clone();
                let mut cache = lock(&inner.cache);
                cache.token = Some(token);
                cache.generation += 1;
                Ok(header)
            }
            // A token inside the refresh margin still works; a failed early refresh should not
            // fail calls it could still serve. The next call tries again.
            Err(e) => match fallback {
                Some(header) => {
                    tracing::warn!(error = %e, "vertex: token refresh failed; using the current token until it expires");
                    Ok(header)
                }
                None => Err(e),
            },
        }
    }

    /// Asks the token source for a new token.
    async fn fetch(&self) -> Result<Token, UpstreamError> {
        let inner = &self.inner;
        let started = Instant::now();
        let req = match &inner.source {
            TokenSource::ServiceAccount(sa) => sa.token_request()?,
            TokenSource::Metadata { url } => Request::builder()
                .method(Method::GET)
                .uri(url.clone())
                .header(HeaderName::from_static("metadata-flavor"), "Google")
                .body(Full::new(Bytes::new()))
                .map_err(|e| UpstreamError::Config(format!("vertex token request: {e}")))?,
        };
        let exchange = async {
            let resp = inner
                .client
                .request(req)
                .await
                .map_err(|e| token_error(&crate::describe(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), TOKEN_REPLY_LIMIT)
                .collect()
                .await
                .map_err(|e| token_error(&format!("reading the reply: {e}")))?
                .to_bytes();
            Ok::<_, UpstreamError>((status, body))
        };
        let (status, body) = tokio::time::timeout(inner.timeout, exchange)
            .await
            .map_err(|_| token_error(&format!("no reply within {:?}", inner.timeout)))??;
        let token = parse_token_reply(status, &body, started)?;
        tracing::debug!(
            expires_in_s = token.expires.saturating_duration_since(started).as_secs(),
            "vertex: new access token"
        );
        Ok(token)
    }
}

fn token_error(what: &str) -> UpstreamError {
    UpstreamError::Unreachable(format!("vertex token: {what}"))
}

/// A successful token reply.
#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    token_type: Option<String>,
}

/// An OAuth error reply (`{"error":"invalid_grant","error_description":"…"}`).
#[derive(Deserialize)]
struct TokenErrorReply {
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    error_description: Option<String>,
}

/// Turns a token endpoint's reply into a token valid from `started` (the request's start, so
/// the expiry errs early).
fn parse_token_reply(
    status: StatusCode,
    body: &[u8],
    started: Instant,
) -> Result<Token, UpstreamError> {
    if !status.is_success() {
        let detail = serde_json::from_slice::<TokenErrorReply>(body)
            .ok()
            .map(|r| {
                let error = match r.error {
                    Some(Value::String(s)) => s,
                    // Google APIs use `{"error":{"message":…}}` for non-OAuth failures.
                    Some(Value::Object(o)) => o
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    _ => String::new(),
                };
                let mut s = error;
                if let Some(d) = r.error_description {
                    s.push_str(": ");
                    s.push_str(&d);
                }
                s.chars().take(300).collect::<String>()
            })
            .unwrap_or_default();
        return Err(token_error(&format!(
            "the token endpoint answered {status} {detail}"
        )));
    }
    // Only the position of a parse error: the reply holds the token.
    let reply: TokenReply = serde_json::from_slice(body).map_err(|e| {
        token_error(&format!(
            "the token reply is not a token ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if let Some(kind) = &reply.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(token_error(&format!("unsupported token type {kind:?}")));
    }
    if reply.access_token.is_empty() {
        return Err(token_error("empty access token"));
    }
    let mut header = HeaderValue::from_str(&format!("Bearer {}", reply.access_token))
        .map_err(|_| token_error("the access token is not a valid header value"))?;
    header.set_sensitive(true);
    let lifetime = Duration::from_secs(reply.expires_in.unwrap_or(ASSERTION_LIFETIME_SECS));
    Ok(Token {
        header,
        expires: started + lifetime,
    })
}

/// The body Vertex wants: `model` removed (`model: None`) or set, `anthropic_version` set
/// (appended when absent), every other member kept byte for byte and in order. Editing the raw
/// bytes instead of re-serialising keeps numbers, escapes and key order exactly as the client
/// sent them.
fn rewrite_body(body: &[u8], model: Option<&str>) -> Result<Bytes, UpstreamError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map_err(|e| UpstreamError::Config(format!("request body is not JSON: {e}")))?;
    let members = crate::json::top_level_members(body)
        .ok_or_else(|| UpstreamError::Config("request body is not a JSON object".into()))?;
    let mut out = Vec::with_capacity(body.len() + 64);
    out.push(b'{');
    let (mut has_version, mut has_model) = (false, false);
    let push_member = |out: &mut Vec<u8>, key_and_colon: &[u8], value: &[u8]| {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(key_and_colon);
        out.extend_from_slice(value);
    };
    let version = format!("\"{ANTHROPIC_VERSION}\"");
    let model_json = model.map(|m| Value::from(m).to_string());
    for m in &members {
        let key_and_colon = body.get(m.start..m.value.start).unwrap_or_default();
        let value = body.get(m.value.clone()).unwrap_or_default();
        match (m.key.as_str(), &model_json) {
            ("model", None) => {}
            ("model", Some(id)) => {
                has_model = true;
                push_member(&mut out, key_and_colon, id.as_bytes());
            }
            ("anthropic_version", _) => {
                has_version = true;
                push_member(&mut out, key_and_colon, version.as_bytes());
            }
            _ => push_member(&mut out, key_and_colon, value),
        }
    }
    if !has_version {
        push_member(&mut out, b"\"anthropic_version\":", version.as_bytes());
    }
    if let (Some(id), false) = (&model_json, has_model) {
        push_member(&mut out, b"\"model\":", id.as_bytes());
    }
    out.push(b'}');
    Ok(Bytes::from(out))
}

/// A Vertex error reply in Google's shape (`{"error":{"code":429,"message":"...","status":
/// "RESOURCE_EXHAUSTED"}}`, or a JSON array of that) as the Anthropic error body
/// `{"type":"error","error":{"type":..,"message":..}}`, with the status the client should see.
/// `None` when the body already is Anthropic-shaped (Vertex passes the model's own errors
/// through unchanged), or when `status` is not an error.
///
/// A body of neither shape (e.g. an HTML page from a proxy) is mapped by its HTTP status with a
/// generic message.
pub fn anthropic_error(status: StatusCode, body: &[u8]) -> Option<(StatusCode, Bytes)> {
    if !status.is_client_error() && !status.is_server_error() {
        return None;
    }
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    if let Some(Value::Object(o)) = &parsed
        && o.get("type").and_then(Value::as_str) == Some("error")
    {
        return None;
    }
    let google = parsed.as_ref().and_then(|v| match v {
        Value::Array(items) => items.first().and_then(|i| i.get("error")),
        other => other.get("error"),
    });
    let google = google.filter(|g| g.is_object());
    let code = google
        .and_then(|g| g.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .unwrap_or(status.as_u16());
    let google_status = google.and_then(|g| g.get("status")).and_then(Value::as_str);
    let (kind, client) = classify(google_status, code);
    let message = google
        .and_then(|g| g.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map_or_else(
            || {
                format!(
                    "Vertex AI answered {} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                )
                .trim_end()
                .to_owned()
            },
            str::to_owned,
        );
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    Some((
        StatusCode::from_u16(client).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Bytes::from(body.to_string()),
    ))
}

/// The Anthropic error type and client status of a Google error: by its `status` name when it
/// has a known one, else by its numeric code.
fn classify(google_status: Option<&str>, code: u16) -> (&'static str, u16) {
    match google_status {
        Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION") => ("invalid_request_error", 400),
        Some("UNAUTHENTICATED") => ("authentication_error", 401),
        Some("PERMISSION_DENIED") => ("permission_error", 403),
        Some("NOT_FOUND") => ("not_found_error", 404),
        Some("RESOURCE_EXHAUSTED") => ("rate_limit_error", 429),
        Some("UNAVAILABLE") => ("overloaded_error", 529),
        Some("DEADLINE_EXCEEDED") => ("api_error", 504),
        // INTERNAL, and the rest (ABORTED, CANCELLED, UNIMPLEMENTED, …): nothing the client did.
        Some(_) => ("api_error", 500),
        None => match code {
            400 => ("invalid_request_error", 400),
            401 => ("authentication_error", 401),
            403 => ("permission_error", 403),
            404 => ("not_found_error", 404),
            413 => ("request_too_large", 413),
            429 => ("rate_limit_error", 429),
            503 | 529 => ("overloaded_error", 529),
            504 => ("api_error", 504),
            _ => ("api_error", 500),
        },
    }
}

#[cfg(test)]
mod tests;
