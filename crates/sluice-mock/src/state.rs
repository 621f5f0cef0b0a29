//! State shared by every connection of one mock: counters, the prompt-cache entries, recorded
//! requests and batches. Counters are atomics; the mutexes are only taken by requests that need
//! them (cache markers, `record` on, batch endpoints), never by a plain message call.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use base64::Engine as _;
use bytes::Bytes;

use crate::MockOptions;
use crate::batches::Batch;
use crate::prompt_cache::PromptCache;

/// How many requests `record` keeps.
const RECORD_CAPACITY: usize = 256;

/// Counters exposed at `GET /_mock/stats` and by [`crate::MockHandle::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MockStats {
    /// Requests served, introspection (`/_mock/…`) excluded.
    pub requests: u64,
    /// `POST /v1/messages` calls received (streaming or not, whatever their outcome).
    pub messages: u64,
    /// Message replies abandoned by the client before their end: mid-stream, or while the
    /// mock was still delaying or withholding the headers.
    pub streams_cancelled: u64,
    /// Most `GET /v1/messages/batches/{id}` requests ever in flight at once (counted from
    /// arrival through any latency to the reply), to test a client's fan-out bound.
    pub batch_gets_peak: u64,
}

/// One request as the mock received it (kept when [`MockOptions::record`] is on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The method, e.g. `POST`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Every header in arrival order, names lowercase; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The values of header `name` (case-insensitive), joined with `, ` when repeated.
    pub fn header(&self, name: &str) -> Option<String> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let first = values.next()?;
        Some(values.fold(first.to_owned(), |mut acc, v| {
            acc.push_str(", ");
            acc.push_str(v);
            acc
        }))
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The wire form of `GET /_mock/requests`: the body as `body` when it is UTF-8, else as
    /// `body_b64`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut headers = serde_json::Map::new();
        for (name, _) in &self.headers {
            if !headers.contains_key(name) {
                let joined = self.header(name).unwrap_or_default();
                headers.insert(name.clone(), serde_json::Value::String(joined));
            }
        }
        let mut obj = serde_json::Map::new();
        obj.insert("method".into(), self.method.clone().into());
        obj.insert("path".into(), self.path.clone().into());
        obj.insert(
            "query".into(),
            self.query
                .clone()
                .map_or(serde_json::Value::Null, Into::into),
        );
        obj.insert("headers".into(), headers.into());
        match std::str::from_utf8(&self.body) {
            Ok(s) => obj.insert("body".into(), s.into()),
            Err(_) => obj.insert(
                "body_b64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(&self.body)
                    .into(),
            ),
        };
        obj.into()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) requests: AtomicU64,
    pub(crate) messages: AtomicU64,
    pub(crate) streams_cancelled: AtomicU64,
    pub(crate) batch_gets_in_flight: AtomicU64,
    pub(crate) batch_gets_peak: AtomicU64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> MockStats {
        MockStats {
            requests: self.requests.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            streams_cancelled: self.streams_cancelled.load(Ordering::Relaxed),
            batch_gets_peak: self.batch_gets_peak.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct State {
    pub(crate) opts: MockOptions,
    pub(crate) stats: Stats,
    /// The listener's address, for `results_url` when a request has no `Host`.
    pub(crate) local_addr: SocketAddr,
    next_request: AtomicU64,
    next_message: AtomicU64,
    next_batch: AtomicU64,
    /// The prompt-cache entries of every scope (see `prompt_cache.rs`).
    pub(crate) prompt_cache: PromptCache,
    /// `x-mock-fail-first`: failures already served per request body (by hash).
    pub(crate) failed: Mutex<std::collections::HashMap<u64, u64>>,
    recorded: Mutex<VecDeque<RecordedRequest>>,
    /// Per-key statuses ([`MockOptions::key_status`], changed by `set_key_status`).
    key_status: Mutex<std::collections::HashMap<String, u16>>,
    /// Requests per presented key, by its redacted form.
    by_key: Mutex<BTreeMap<String, u64>>,
    /// Keyed by the batch counter, so the list order (newest first) is the reverse key order.
    pub(crate) batches: Mutex<BTreeMap<u64, Batch>>,
    /// Access tokens the Vertex token endpoint issued (see `vertex.rs`).
    pub(crate) vertex_tokens: Mutex<HashSet<String>>,
    /// The status every `/v1/…` call gets while set (0: none), switched at run time through
    /// `POST /_mock/faults`, e.g. to stage a 529 storm under load.
    global_status: AtomicU16,
}

/// Counts a message reply as cancelled if the request future is dropped (the client went away)
/// before it produced the response headers. The Anthropic, Bedrock and Vertex routes each hold
/// one while they wait out the latency and answer, and disarm it once they have a reply.
pub(crate) struct PendingReply<'a> {
    pub(crate) state: &'a State,
    /// Whether a drop now counts (off for calls that are not messages, and once answered).
    pub(crate) armed: bool,
}

impl Drop for PendingReply<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.state
                .stats
                .streams_cancelled
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Locks, ignoring poisoning: every critical section leaves the data consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    pub(crate) fn new(opts: MockOptions, local_addr: SocketAddr) -> Self {
        let key_status = opts.key_status.iter().cloned().collect();
        Self {
            opts,
            stats: Stats::default(),
            local_addr,
            next_request: AtomicU64::new(1),
            next_message: AtomicU64::new(1),
            next_batch: AtomicU64::new(1),
            prompt_cache: PromptCache::default(),
            failed: Mutex::new(std::collections::HashMap::new()),
            recorded: Mutex::new(VecDeque::new()),
            key_status: Mutex::new(key_status),
            by_key: Mutex::new(BTreeMap::new()),
            batches: Mutex::new(BTreeMap::new()),
            vertex_tokens: Mutex::new(HashSet::new()),
            global_status: AtomicU16::new(0),
        }
    }

    /// The status of `POST /_mock/faults`, if one is set.
    pub(crate) fn global_status(&self) -> Option<u16> {
        Some(self.global_status.load(Ordering::Relaxed)).filter(|s| *s != 0)
    }

    pub(crate) fn set_global_status(&self, status: Option<u16>) {
        self.global_status
            .store(status.unwrap_or(0), Ordering::Relaxed);
    }

    /// Count a request presented with `key`.
    pub(crate) fn count_key(&self, key: &str) {
        *lock(&self.by_key)
            .entry(crate::redact_key(key))
            .or_insert(0) += 1;
    }

    pub(crate) fn key_requests(&self, key: &str) -> u64 {
        lock(&self.by_key)
            .get(&crate::redact_key(key))
            .copied()
            .unwrap_or(0)
    }

    /// Requests per key, by redacted key.
    pub(crate) fn by_key(&self) -> BTreeMap<String, u64> {
        lock(&self.by_key).clone()
    }

    pub(crate) fn key_status(&self, key: &str) -> Option<u16> {
        lock(&self.key_status).get(key).copied()
    }

    pub(crate) fn set_key_status(&self, key: &str, status: Option<u16>) {
        let mut m = lock(&self.key_status);
        match status {
            Some(s) => m.insert(key.to_owned(), s),
            None => m.remove(key),
        };
    }

    pub(crate) fn next_request_id(&self) -> String {
        format!(
            "req_mock_{}",
            self.next_request.fetch_add(1, Ordering::Relaxed)
        )
    }

    pub(crate) fn next_message_number(&self) -> u64 {
        self.next_message.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn next_batch_number(&self) -> u64 {
        self.next_batch.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn record(&self, req: RecordedRequest) {
        let mut list = lock(&self.recorded);
        if list.len() >= RECORD_CAPACITY {
            list.pop_front();
        }
        list.push_back(req);
    }

    pub(crate) fn recorded(&self) -> Vec<RecordedRequest> {
        lock(&self.recorded).iter().cloned().collect()
    }

    pub(crate) fn clear_recorded(&self) {
        lock(&self.recorded).clear();
    }
}
