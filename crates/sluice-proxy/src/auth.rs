//! Authentication: which tenant is calling. Keys live in the state database as SHA-256 hashes;
//! the data plane keeps them in an in-memory ring published with `arc-swap`, so authenticating a
//! request is one hash and one map lookup, never a database read. A background task polls one
//! counter row and reloads the ring when keys change (new keys and revocations take effect
//! within `auth.key_refresh_ms`).

use crate::error::GatewayError;
use arc_swap::ArcSwap;
use http::HeaderMap;
use sluice_store::{Store, hash_key};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// An authenticated key.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    hash: [u8; 32],
    /// Key id (for the ledger).
    pub id: Arc<str>,
    /// Owning tenant.
    pub tenant: Arc<str>,
    expires_ms: Option<i64>,
}

/// The in-memory key ring.
#[derive(Debug, Default)]
pub struct KeyRing {
    map: ArcSwap<HashMap<[u8; 32], KeyEntry>>,
    generation: AtomicI64,
    loaded: AtomicBool,
}

impl KeyRing {
    /// An empty ring (nothing authenticates until [`KeyRing::refresh`] runs).
    pub fn new() -> Self {
        Self {
            generation: AtomicI64::new(-1),
            ..Self::default()
        }
    }

    /// Reload from the store if its key generation moved. Blocking (SQLite): call it from a
    /// blocking context. Returns whether the ring was reloaded.
    pub fn refresh(&self, store: &Store) -> Result<bool, sluice_store::StoreError> {
        let generation = store.keys_generation()?;
        if generation == self.generation.load(Ordering::Acquire) {
            return Ok(false);
        }
        let map: HashMap<[u8; 32], KeyEntry> = store
            .active_keys()?
            .into_iter()
            .map(|k| {
                (
                    k.hash,
                    KeyEntry {
                        hash: k.hash,
                        id: k.id.into(),
                        tenant: k.tenant.into(),
                        expires_ms: k.expires_ms,
                    },
                )
            })
            .collect();
        self.map.store(Arc::new(map));
        self.generation.store(generation, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
        Ok(true)
    }

    /// The ring has been loaded at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Authenticate a presented key at `now_ms`.
    pub fn authenticate(&self, presented: &str, now_ms: i64) -> Result<KeyEntry, GatewayError> {
        let hash = hash_key(presented);
        let map = self.map.load();
        let Some(entry) = map.get(&hash) else {
            return Err(GatewayError::InvalidKey);
        };
        // The map lookup already matched on the hash; the constant-time comparison makes the
        // final decision independent of how many bytes matched, whatever the map's internals do.
        if !bool::from(entry.hash.ct_eq(&hash)) {
            return Err(GatewayError::InvalidKey);
        }
        if entry.expires_ms.is_some_and(|e| e <= now_ms) {
            return Err(GatewayError::ExpiredKey);
        }
        Ok(entry.clone())
    }
}

/// Poll the store for key changes every `every` until the ring is dropped elsewhere.
pub fn spawn_refresher(
    ring: Arc<KeyRing>,
    store: Store,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if Arc::strong_count(&ring) == 1 {
                return;
            }
            let (r, s) = (ring.clone(), store.clone());
            match tokio::task::spawn_blocking(move || r.refresh(&s)).await {
                Ok(Ok(true)) => tracing::info!("key ring reloaded"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "key ring refresh failed; keeping the last ring")
                }
                Err(e) => tracing::warn!(error = %e, "key ring refresh task failed"),
            }
        }
    })
}

/// The key a client presented: `x-api-key`, else `Authorization: Bearer`.
pub fn presented_key(headers: &HeaderMap) -> Result<&str, GatewayError> {
    if let Some(v) = headers.get("x-api-key") {
        return v.to_str().map_err(|_| GatewayError::InvalidKey);
    }
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| GatewayError::InvalidKey)?;
        let (scheme, rest) = v.split_once(' ').ok_or(GatewayError::InvalidKey)?;
        if scheme.eq_ignore_ascii_case("bearer") {
            return Ok(rest.trim());
        }
        return Err(GatewayError::InvalidKey);
    }
    Err(GatewayError::MissingKey)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn ring_sees_new_and_revoked_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("a.db")).unwrap();
        let ring = KeyRing::new();
        assert!(ring.refresh(&store).unwrap());
        assert!(ring.is_loaded());
        let k = store.create_key("web", "", None, 0).unwrap();
        assert!(matches!(
            ring.authenticate(&k.secret, 1),
            Err(GatewayError::InvalidKey)
        ));
        assert!(ring.refresh(&store).unwrap());
        assert!(
            !ring.refresh(&store).unwrap(),
            "unchanged generation reloads nothing"
        );
        let e = ring.authenticate(&k.secret, 1).unwrap();
        assert_eq!(&*e.tenant, "web");
        store.revoke_key(&e.id, 2).unwrap();
        ring.refresh(&store).unwrap();
        assert!(matches!(
            ring.authenticate(&k.secret, 3),
            Err(GatewayError::InvalidKey)
        ));
    }

    #[test]
    fn expired_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("a.db")).unwrap();
        let k = store.create_key("web", "", Some(100), 0).unwrap();
        let ring = KeyRing::new();
        ring.refresh(&store).unwrap();
        assert!(ring.authenticate(&k.secret, 99).is_ok());
        assert!(matches!(
            ring.authenticate(&k.secret, 100),
            Err(GatewayError::ExpiredKey)
        ));
    }

    #[test]
    fn key_comes_from_x_api_key_or_bearer() {
        let mut h = HeaderMap::new();
        assert!(matches!(presented_key(&h), Err(GatewayError::MissingKey)));
        h.insert("authorization", "Bearer sk-sluice-abc".parse().unwrap());
        assert_eq!(presented_key(&h).unwrap(), "sk-sluice-abc");
        h.insert("authorization", "Basic xyz".parse().unwrap());
        assert!(presented_key(&h).is_err());
        h.insert("x-api-key", "sk-sluice-def".parse().unwrap());
        assert_eq!(presented_key(&h).unwrap(), "sk-sluice-def");
    }
}
