//! An Anthropic-compatible fake upstream, used by every test, the demo and the benchmarks.
//!
//! It speaks HTTP/1.1 (keep-alive, `TCP_NODELAY`) with hyper directly and answers the Messages
//! API (JSON and SSE), token counting, the models list and Message Batches in the upstream's wire
//! shapes, with usage that depends on the request (input ≈ body bytes / 4, output capped by
//! `max_tokens`) and a prompt cache modelled on the upstream's: entries written only at
//! breakpoints (explicit `cache_control` markers and the automatic top-level one) whose prefix
//! reaches the model's minimum, looked up at each breakpoint and up to 20 blocks before it, per
//! key or cloud account, expiring by TTL (see `prompt_cache.rs`).
//!
//! Faults are injected per request through `x-mock-*` headers (a gateway passes unknown headers
//! through, so tests set them on the client request):
//!
//! | header | effect |
//! |---|---|
//! | `x-mock-status: N` | reply status N (200 or 400..=599) with the upstream error body; 429 adds `retry-after: 1`; checked after auth |
//! | `x-mock-fail-first: N` | apply `x-mock-status` (default 529) only to the first N requests with the same body, so a retry of it succeeds |
//! | `x-mock-latency-ms: N` | extra delay before the headers |
//! | `x-mock-event-interval-ms: N` | delay between SSE events |
//! | `x-mock-stream-error-after: K` | after K events of a 200 stream, an `error` event (`overloaded_error`), then a clean end; K is clamped so the error always replaces `message_stop` |
//! | `x-mock-drop-after: K` | stream: after K events (at most all of them), cut the connection (no chunked terminator); non-stream: K = 0 closes without a reply, K ≥ 1 sends the headers and half the body, then cuts |
//! | `x-mock-output-tokens: N` | fixed output token count (still capped by `max_tokens`) |
//! | `x-mock-hang` | stream: headers, then nothing; otherwise nothing at all; until the client leaves |
//!
//! An unknown `x-mock-*` header or a malformed value is a 400, so a typo cannot pass silently.
//!
//! Introspection, never behind auth: `GET /_mock/requests` (recorded requests, when
//! [`MockOptions::record`] is on), `DELETE /_mock/requests`, `GET /_mock/stats` (with
//! `by_key`: requests per upstream key, labelled in [`redact_key`]'s form). Recorded requests
//! keep their headers verbatim, so tests can check the exact upstream key the gateway sent.
//!
//! A fault for every client at once, switched while running (e.g. a 529 storm under load,
//! `bench/chaos`): `POST /_mock/faults` with `{"status": 529}` answers every `/v1/…` call with
//! that status (after auth) until `{"status": null}`; `GET /_mock/faults` shows it. Loopback
//! peers only.
//!
//! Per-key faults (a pool of upstream keys where one is rate limited or failing):
//! [`MockOptions::key_status`] and [`MockHandle::set_key_status`].

mod batches;
mod bedrock;
mod body;
mod messages;
mod models;
mod prompt_cache;
mod router;
mod state;
mod vertex;
mod wire;
pub use vertex::{VERTEX_SA_FIXTURE, VERTEX_SA_PUBLIC_KEY_DER};

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use state::{MockStats, RecordedRequest};

use state::State;

/// How the mock behaves when no `x-mock-*` header says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockOptions {
    /// Delay before the response headers of every `/v1/…` reply.
    pub latency: Duration,
    /// Delay between SSE events.
    pub event_interval: Duration,
    /// Send the `anthropic-ratelimit-*` and `anthropic-organization-id` headers.
    pub ratelimit_headers: bool,
    /// Report this many input tokens remaining in `anthropic-ratelimit-input-tokens-remaining`
    /// (default: a fixed comfortable number), to test a gateway's reaction to a short org.
    pub input_tokens_remaining: Option<u64>,
    /// When set, `/v1/…` requests must carry this key as `x-api-key` (or
    /// `Authorization: Bearer`), else they get a 401 `authentication_error`.
    pub api_key: Option<String>,
    /// More keys accepted beside `api_key` (a pool of upstream keys); when `api_key` is `None`
    /// and this is not empty, only these are accepted.
    pub api_keys: Vec<String>,
    /// Requests authenticated with this key get this status (with the upstream's error body;
    /// 429 carries `retry-after: 1`), checked after auth and before any `x-mock-*` header.
    pub key_status: Vec<(String, u16)>,
    /// Keep the last 256 requests for `GET /_mock/requests` and [`MockHandle::recorded`].
    pub record: bool,
    /// A fixed output token count (capped by `max_tokens`); `None` derives it from the request.
    pub output_tokens: Option<u64>,
    /// How long a batch stays `in_progress`: it ends when fetched at least this long after its
    /// creation. Zero (the default) ends it on the first fetch after the create call.
    pub batch_processing: Duration,
    /// AWS credentials `(access key id, secret access key)` of the Bedrock endpoints: when set,
    /// a Bedrock request's SigV4 signature must verify against them, else 403.
    pub aws_credentials: Option<(String, String)>,
    /// The Vertex token endpoint verifies service-account JWT assertions against this RSA
    /// public key (DER `RSAPublicKey`) when set; it always checks their claims.
    pub gcp_public_key_der: Option<Vec<u8>>,
    /// The minimum cacheable prefix in tokens for every model, in place of the upstream's
    /// per-model minimums (`None`, the default), so tests can cache small prompts.
    pub cache_min_tokens: Option<u64>,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            event_interval: Duration::ZERO,
            ratelimit_headers: true,
            input_tokens_remaining: None,
            api_key: None,
            api_keys: Vec::new(),
            key_status: Vec::new(),
            record: false,
            output_tokens: None,
            batch_processing: Duration::ZERO,
            aws_credentials: None,
            gcp_public_key_der: None,
            cache_min_tokens: None,
        }
    }
}

/// How the mock shows an upstream key: its first characters (at most 8, and at most a quarter
/// of it, so a short key is not shown whole) and a 64-bit hash of the whole, enough to tell keys
/// apart in tests, never enough to use one.
pub fn redact_key(key: &str) -> String {
    use std::hash::{BuildHasher, BuildHasherDefault};
    // SipHash with fixed keys: the same label in every process, so tests can compute it.
    let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(key.as_bytes());
    let n = key.chars().count();
    let prefix: String = key.chars().take((n / 4).min(8)).collect();
    format!("{prefix}…{h:016x}")
}

/// How long in-flight replies may run on after shutdown before their connections are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Serves the mock on `listener` until `shutdown` completes.
///
/// On shutdown it stops accepting, lets in-flight replies finish for a short grace period, then
/// cuts whatever is left (hanging or slow streams) and returns.
pub async fn serve(
    listener: TcpListener,
    opts: MockOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let state = Arc::new(State::new(opts, listener.local_addr()?));
    serve_state(listener, state, shutdown).await
}

async fn serve_state(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, Arc::clone(&state), stop_rx.clone()));
                }
                Err(e) => {
                    // Accept errors (EMFILE, ECONNABORTED, …) are per-connection or transient;
                    // the pause keeps a descriptor shortage from spinning the loop.
                    tracing::warn!(error = %e, "mock: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.shutdown().await;
    }
    Ok(())
}

async fn serve_connection(stream: TcpStream, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    // Small SSE frames must leave at once, not wait for Nagle.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "mock: TCP_NODELAY failed");
    }
    let peer = stream.peer_addr().ok();
    let svc = service_fn(move |req| router::handle(Arc::clone(&state), peer, req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "mock: connection ended with an error");
            }
            return;
        }
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A mock running in a tokio task; shuts down on [`MockHandle::shutdown`] or on drop.
#[derive(Debug)]
pub struct MockHandle {
    /// The bound address (with the real port when bound to port 0).
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("opts", &self.opts)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

/// Binds `addr` and serves the mock in a background task.
pub async fn spawn(addr: SocketAddr, opts: MockOptions) -> io::Result<MockHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(State::new(opts, addr));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_state(listener, Arc::clone(&state), async move {
        // A dropped sender ends the server too, so dropping the handle is a shutdown.
        let _ = stopped.await;
    }));
    Ok(MockHandle {
        addr,
        state,
        stop: Some(stop),
        task: Some(task),
    })
}

impl MockHandle {
    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The counters of `GET /_mock/stats`.
    pub fn stats(&self) -> MockStats {
        self.state.stats.snapshot()
    }

    /// The recorded requests, oldest first (empty unless [`MockOptions::record`] is on).
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.state.recorded()
    }

    /// Requests (introspection excluded) that carried `key` as `x-api-key` or bearer token.
    pub fn key_requests(&self, key: &str) -> u64 {
        self.state.key_requests(key)
    }

    /// From now on, answer requests authenticated with `key` with `status` (`None`: normally),
    /// e.g. to take a key down and bring it back.
    pub fn set_key_status(&self, key: &str, status: Option<u16>) {
        self.state.set_key_status(key, status);
    }

    /// Forgets the recorded requests.
    pub fn clear_recorded(&self) {
        self.state.clear_recorded();
    }

    /// Stops the server and waits until it has closed its listener and connections.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
