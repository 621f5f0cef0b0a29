//! The in-process backend: a concurrent cache bounded by total bytes (`quick_cache`, already
//! the limiter's cache, with a weigher that counts each entry's bytes), entries expiring at the
//! tenant's TTL. An expired entry is dropped when it is next looked up, and until then it is
//! counted against the bound like any other, so the bound holds whatever the TTLs. The tables
//! are built on the first store.

use super::{Entry, Key};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use std::sync::{Arc, OnceLock};

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

/// The in-process store. Its tables are built on the first store, not at start: a gateway whose
/// tenants have no response cache never pays for them.
pub(super) struct Memory {
    max_bytes: u64,
    cache: OnceLock<Cache<Key, Arc<Entry>, Bytes>>,
}

impl Memory {
    /// A store of at most `max_bytes`.
    pub(super) fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            cache: OnceLock::new(),
        }
    }

    fn cache(&self) -> &Cache<Key, Arc<Entry>, Bytes> {
        self.cache.get_or_init(|| {
            // quick_cache sizes its tables from the expected count; replies of a few KiB are
            // typical.
            let items =
                usize::try_from((self.max_bytes / 4096).clamp(64, 1 << 20)).unwrap_or(1 << 20);
            Cache::with_weighter(items, self.max_bytes, Bytes)
        })
    }

    /// The live entry under `key`, if any (an expired one is removed).
    pub(super) fn get(&self, key: &Key, now_ms: i64) -> Option<Arc<Entry>> {
        let cache = self.cache.get()?;
        let e = cache.get(key)?;
        if e.expires_ms <= now_ms {
            cache.remove_if(key, |v| Arc::ptr_eq(v, &e));
            return None;
        }
        Some(e)
    }

    /// Store `e` under `key` (an entry larger than the cache's shard is not kept).
    pub(super) fn put(&self, key: Key, e: Arc<Entry>) {
        self.cache().insert(key, e);
    }

    /// (entries, bytes) held now.
    pub(super) fn size(&self) -> (u64, u64) {
        self.cache.get().map_or((0, 0), |c| {
            (u64::try_from(c.len()).unwrap_or(u64::MAX), c.weight())
        })
    }

    /// The bound.
    pub(super) fn capacity(&self) -> u64 {
        self.cache.get().map_or(self.max_bytes, Cache::capacity)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_tables_are_built_on_the_first_store_only() {
        let m = Memory::new(256 << 20);
        assert!(m.get(&[1; 32], 0).is_none());
        assert_eq!(m.size(), (0, 0));
        assert_eq!(m.capacity(), 256 << 20);
        assert!(m.cache.get().is_none(), "built before anything was stored");
        let e = Entry {
            tenant: Arc::from("web"),
            created_ms: 0,
            expires_ms: i64::MAX,
            stream: false,
            cost_micros: 0,
            model: None,
            body: bytes::Bytes::from_static(b"{}"),
        };
        m.put([1; 32], Arc::new(e));
        assert!(m.cache.get().is_some());
        assert!(m.get(&[1; 32], 0).is_some());
        assert_eq!(m.size().0, 1);
    }
}
