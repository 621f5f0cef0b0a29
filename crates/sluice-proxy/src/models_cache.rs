//! A short in-process cache of model-list replies (`GET /v1/models`, `/v1/models/{id}`). The
//! list is the organisation's, the same for every tenant, and changes rarely; serving repeats
//! from here keeps SDKs that list models at start-up off the organisation's key. Only the
//! reply is shared: every call is still authenticated and limited on its own.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most replies kept. The key holds request data (query, headers), so the map is bounded:
/// when full, expired entries are swept, and if none has expired a new reply is not kept.
const CAPACITY: usize = 256;

/// A cached reply.
#[derive(Clone)]
pub struct Cached {
    /// The upstream's status (always a success).
    pub status: StatusCode,
    /// The upstream's headers, before [`crate::headers::for_client`].
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// The cache (see the module docs).
#[derive(Default)]
pub struct ModelsCache {
    entries: Mutex<HashMap<String, (Instant, Cached)>>,
}

impl ModelsCache {
    /// The cache key: path and query, `anthropic-version`, `anthropic-beta` (the reply may
    /// differ by each).
    pub fn key(pq: &str, headers: &HeaderMap) -> String {
        let h = |n: &str| {
            headers
                .get_all(n)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",")
        };
        format!("{pq}\n{}\n{}", h("anthropic-version"), h("anthropic-beta"))
    }

    /// The reply cached under `key`, if younger than `ttl`.
    pub fn get(&self, key: &str, ttl: Duration) -> Option<Cached> {
        let map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, c)| c.clone())
    }

    /// Keep a successful reply under `key`.
    pub fn put(&self, key: String, reply: Cached, ttl: Duration) {
        let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= CAPACITY && !map.contains_key(&key) {
            map.retain(|_, (at, _)| at.elapsed() < ttl);
            if map.len() >= CAPACITY {
                return;
            }
        }
        map.insert(key, (Instant::now(), reply));
    }
}
