//! The in-process backend: a concurrent cache bounded by total bytes (`quick_cache`, already
//! the limiter's cache, with a weigher that counts each entry's bytes), entries expiring at the
//! tenant's TTL. An expired entry is dropped when it is next looked up, and until then it is
//! counted against the bound like any other, so the bound holds whatever the TTLs.

use super::{Entry, Key};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use std::sync::Arc;

/// Bytes counted for an entry beyond its body and names: the key, the `Arc`, the entry's fields
/// and the cache's own slot, rounded up.
const OVERHEAD: u64 = 160;

#[derive(Clone)]
struct Bytes;

impl Weighter<Key, Arc<Entry>> for Bytes {
    fn weight(&self, _: &Key, e: &Arc<Entry>) -> u64 {
        weight(e)
    }
}

/// What an entry counts against the bound.
pub(super) fn weight(e: &Entry) -> u64 {
    let names = e.tenant.len() + e.model.as_ref().map_or(0, String::len);
    u64::try_from(e.body.len() + names).unwrap_or(u64::MAX) + OVERHEAD
}

/// The in-process store.
pub(super) struct Memory {
    cache: Cache<Key, Arc<Entry>, Bytes>,
}

impl Memory {
    /// A store of at most `max_bytes`.
    pub(super) fn new(max_bytes: u64) -> Self {
        // quick_cache sizes its tables from the expected count; replies of a few KiB are typical.
        let items = usize::try_from((max_bytes / 4096).clamp(64, 1 << 20)).unwrap_or(1 << 20);
        Self {
            cache: Cache::with_weighter(items, max_bytes, Bytes),
        }
    }

    /// The live entry under `key`, if any (an expired one is removed).
    pub(super) fn get(&self, key: &Key, now_ms: i64) -> Option<Arc<Entry>> {
        let e = self.cache.get(key)?;
        if e.expires_ms <= now_ms {
            self.cache.remove_if(key, |v| Arc::ptr_eq(v, &e));
            return None;
        }
        Some(e)
    }

    /// Store `e` under `key` (an entry larger than the cache's shard is not kept).
    pub(super) fn put(&self, key: Key, e: Arc<Entry>) {
        self.cache.insert(key, e);
    }

    /// (entries, bytes) held now.
    pub(super) fn size(&self) -> (u64, u64) {
        (
            u64::try_from(self.cache.len()).unwrap_or(u64::MAX),
            self.cache.weight(),
        )
    }

    /// The bound.
    pub(super) fn capacity(&self) -> u64 {
        self.cache.capacity()
    }
}
