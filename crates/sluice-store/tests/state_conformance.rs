//! One state-store suite, two backends: every scenario here runs against the SQLite state
//! database and against PostgreSQL (a private schema per test) through the public `Store` API
//! the gateway, the admin API and the CLI use: keys, batch ownership, tenants, the audit chain
//! and the generation counters. Then the multi-replica cases only Postgres has: two `Store`s on
//! one schema share keys, and concurrent audit appends from both leave one valid chain; and a
//! broken Postgres connection is replaced on the next call. The Postgres half skips, saying so, only when the database is unreachable and `CI` is unset.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod pg_support;

use sluice_store::{NewEvent, Store, StoreError, hash_key};

/// What a test needs from a backend.
trait Backend {
    fn store(&self) -> Store;
    /// Run `sql` directly on the backend (to tamper with rows behind the store's back).
    fn exec(&self, sql: &str);
}

struct Sqlite {
    _dir: tempfile::TempDir,
    store: Store,
}

fn sqlite() -> Option<Sqlite> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.db")).unwrap();
    Some(Sqlite { _dir: dir, store })
}

impl Backend for Sqlite {
    fn store(&self) -> Store {
        self.store.clone()
    }
    fn exec(&self, sql: &str) {
        let c = rusqlite::Connection::open(self.store.path()).unwrap();
        c.execute_batch(sql).unwrap();
    }
}

struct Pg {
    // Dropped after the store (fields drop in order), so the schema outlives its connection.
    store: Store,
    db: pg_support::TestDb,
}

fn postgres() -> Option<Pg> {
    let db = pg_support::test_db()?;
    let store = Store::open_postgres(&db.url).unwrap();
    assert_eq!(store.backend(), "postgres");
    Some(Pg { store, db })
}

impl Backend for Pg {
    fn store(&self) -> Store {
        self.store.clone()
    }
    fn exec(&self, sql: &str) {
        self.db.client().batch_execute(sql).unwrap();
    }
}

fn ev(n: i64, target: &str) -> NewEvent {
    NewEvent {
        ts_ms: n,
        actor: "ops-alice".into(),
        action: "tenant.update".into(),
        target: target.into(),
        before: Some(format!("{{\"weight\":{n}}}")),
        after: None,
    }
}

fn keys_lifecycle(b: &dyn Backend) {
    let s = b.store();
    let g0 = s.keys_generation().unwrap();
    let a = s.create_key("web", "ci", None, 1).unwrap();
    let k = s.create_key("web", "ops", Some(10_000), 2).unwrap();
    assert_ne!(a.secret, k.secret);
    assert_eq!(s.keys_generation().unwrap(), g0 + 2);
    let active = s.active_keys().unwrap();
    assert_eq!(active.len(), 2);
    let ak = active.iter().find(|x| x.id == a.record.id).unwrap();
    assert_eq!(ak.hash, hash_key(&a.secret));
    assert_eq!(ak.tenant, "web");
    assert_eq!(ak.expires_ms, None);

    // Newest first.
    let listed = s.list_keys().unwrap();
    assert_eq!(listed, vec![k.record.clone(), a.record.clone()]);
    assert_eq!(s.get_key(&a.record.id).unwrap(), a.record);
    assert!(matches!(
        s.get_key("key_nope"),
        Err(StoreError::NotFound(_))
    ));

    // Revocation keeps the first time and bumps the generation.
    let r = s.revoke_key(&a.record.id, 5).unwrap();
    assert_eq!(r.revoked_ms, Some(5));
    assert_eq!(s.revoke_key(&a.record.id, 9).unwrap().revoked_ms, Some(5));
    assert_eq!(s.keys_generation().unwrap(), g0 + 4);
    assert!(matches!(
        s.revoke_key("key_nope", 6),
        Err(StoreError::NotFound(_))
    ));
    let active = s.active_keys().unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].id, k.record.id);

    // Rotation: a new key for the same tenant and label; the old one expires at the earlier
    // of its expiry and now + overlap.
    let (old, new) = s.rotate_key(&k.record.id, 1_000, 100).unwrap();
    assert_eq!(old.expires_ms, Some(1_100));
    assert_eq!(new.record.tenant, "web");
    assert_eq!(new.record.label, "ops");
    assert_eq!(new.record.expires_ms, Some(10_000));
    assert_eq!(s.get_key(&k.record.id).unwrap().expires_ms, Some(1_100));
    let (old, _) = s.rotate_key(&k.record.id, 1_000_000, 200).unwrap();
    assert_eq!(old.expires_ms, Some(1_100));
    assert_eq!(s.active_keys().unwrap().len(), 3);
    assert_eq!(s.list_keys().unwrap().len(), 4);
    assert!(s.keys_generation().unwrap() > g0 + 4);
}

fn batches(b: &dyn Backend) {
    let s = b.store();
    for i in 0..5 {
        s.record_batch(&format!("b{i}"), "web", "k", i).unwrap();
    }
    s.record_batch("other", "email", "k2", 9).unwrap();
    // Recording twice keeps the first owner.
    s.record_batch("b1", "email", "k2", 10).unwrap();
    assert_eq!(s.batch_owner("b1").unwrap().as_deref(), Some("web"));
    assert_eq!(s.batch_owner("other").unwrap().as_deref(), Some("email"));
    assert_eq!(s.batch_owner("nope").unwrap(), None);

    let p = s.list_batches("web", None, None, 2).unwrap();
    assert_eq!(p.ids, vec!["b4", "b3"]);
    assert!(p.has_more);
    let p = s.list_batches("web", None, Some("b3"), 2).unwrap();
    assert_eq!(p.ids, vec!["b2", "b1"]);
    assert!(p.has_more);
    let p = s.list_batches("web", None, Some("b1"), 2).unwrap();
    assert_eq!(p.ids, vec!["b0"]);
    assert!(!p.has_more);
    let p = s.list_batches("web", Some("b1"), None, 2).unwrap();
    assert_eq!(p.ids, vec!["b3", "b2"]);
    assert!(p.has_more);
    // Tenant isolation: another tenant's batch is never listed, nor usable as a cursor.
    let p = s.list_batches("web", None, None, 100).unwrap();
    assert_eq!(p.ids.len(), 5);
    assert!(!p.ids.contains(&"other".to_string()));
    assert_eq!(
        s.list_batches("email", None, None, 100).unwrap().ids,
        vec!["other"]
    );
    let p = s.list_batches("email", None, Some("b3"), 100).unwrap();
    assert!(p.ids.is_empty());
    s.forget_batch("b0").unwrap();
    s.forget_batch("b0").unwrap();
    assert_eq!(s.batch_owner("b0").unwrap(), None);
    assert_eq!(s.list_batches("web", None, None, 100).unwrap().ids.len(), 4);
}

fn tenants(b: &dyn Backend) {
    let s = b.store();
    let g0 = s.tenants_generation().unwrap();
    assert!(s.tenant_rows().unwrap().is_empty());
    let e1 = s
        .put_tenant("web", "{\"name\":\"web\"}", &ev(5, "web"))
        .unwrap();
    assert_eq!(e1.id, 1);
    s.put_tenant("web", "{\"name\":\"web\",\"weight\":2}", &ev(6, "web"))
        .unwrap();
    s.put_tenant("api", "{\"name\":\"api\"}", &ev(7, "api"))
        .unwrap();
    let rows = s.tenant_rows().unwrap();
    assert_eq!(
        rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec!["api", "web"]
    );
    let web = s.tenant_row("web").unwrap().unwrap();
    assert!(web.config.contains("weight"));
    assert_eq!(web.updated_ms, 6);
    assert_eq!(s.tenants_generation().unwrap(), g0 + 3);
    s.delete_tenant("web", &ev(8, "web")).unwrap();
    assert!(s.tenant_row("web").unwrap().is_none());
    // A failed delete writes nothing: no generation bump, no audit event.
    assert!(matches!(
        s.delete_tenant("web", &ev(9, "web")),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.tenants_generation().unwrap(), g0 + 4);
    let v = s.verify_audit().unwrap();
    assert_eq!((v.events, v.broken), (4, None));
    assert_eq!(s.audit_events(None, 100).unwrap().last().unwrap().ts_ms, 8);
}

/// A tenant deleted for good takes its keys and batches with it: one created later under the
/// same name starts with neither (and its budgets count from the deletion on).
fn tenant_retirement(b: &dyn Backend) {
    let s = b.store();
    let del = |ts: i64| NewEvent {
        ts_ms: ts,
        actor: "ops-alice".into(),
        action: "tenant.delete".into(),
        target: "web".into(),
        before: Some("{\"name\":\"web\"}".into()),
        after: None,
    };
    s.put_tenant("web", "{\"name\":\"web\"}", &ev(1, "web"))
        .unwrap();
    s.put_tenant("api", "{\"name\":\"api\"}", &ev(1, "api"))
        .unwrap();
    let old = s.create_key("web", "ci", None, 2).unwrap();
    let already = s.create_key("web", "old", None, 2).unwrap();
    s.revoke_key(&already.record.id, 3).unwrap();
    let other = s.create_key("api", "ci", None, 2).unwrap();
    s.record_batch("msgbatch_web", "web", &old.record.id, 3)
        .unwrap();
    s.record_batch("msgbatch_api", "api", &other.record.id, 3)
        .unwrap();
    assert!(s.tenant_deletions_since(0).unwrap().is_empty());
    let kg = s.keys_generation().unwrap();

    // The deletion event must say what it is (that is how the deletion is found again).
    assert!(matches!(
        s.retire_tenant("web", &ev(4, "web")),
        Err(StoreError::Invalid(_))
    ));
    assert!(s.tenant_row("web").unwrap().is_some());

    let r = s.retire_tenant("web", &del(10)).unwrap();
    assert_eq!((r.keys_revoked, r.batches_retired), (1, 1));
    assert_eq!(r.event.action, "tenant.delete");
    assert!(s.tenant_row("web").unwrap().is_none());
    assert!(s.keys_generation().unwrap() > kg, "key rings must reload");
    let active: Vec<String> = s.active_keys().unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(active, vec![other.record.id.clone()]);
    assert_eq!(s.get_key(&old.record.id).unwrap().revoked_ms, Some(10));
    assert_eq!(
        s.get_key(&already.record.id).unwrap().revoked_ms,
        Some(3),
        "an earlier revocation keeps its time"
    );
    assert_eq!(
        s.tenant_deletions_since(0).unwrap(),
        vec![("web".to_owned(), 10)]
    );
    assert!(s.tenant_deletions_since(11).unwrap().is_empty());

    // The same name again: nothing of the old tenant is its.
    s.put_tenant("web", "{\"name\":\"web\"}", &ev(20, "web"))
        .unwrap();
    assert!(s.active_keys().unwrap().iter().all(|k| k.tenant != "web"));
    assert_ne!(
        s.batch_owner("msgbatch_web").unwrap().as_deref(),
        Some("web")
    );
    assert!(
        s.list_batches("web", None, None, 100)
            .unwrap()
            .ids
            .is_empty()
    );
    assert_eq!(
        s.batch_owner("msgbatch_api").unwrap().as_deref(),
        Some("api")
    );
    // Deleted twice: the latest deletion counts.
    s.retire_tenant("web", &del(30)).unwrap();
    assert_eq!(
        s.tenant_deletions_since(0).unwrap(),
        vec![("web".to_owned(), 30)]
    );
    assert!(matches!(
        s.retire_tenant("web", &del(31)),
        Err(StoreError::NotFound(_))
    ));
    let v = s.verify_audit().unwrap();
    assert_eq!(v.broken, None);
}

fn audit_chain(b: &dyn Backend) {
    let s = b.store();
    let v = s.verify_audit().unwrap();
    assert_eq!((v.events, v.broken), (0, None));
    let mut last = String::new();
    for n in 1..=4 {
        let e = s.append_audit(&ev(n, "web")).unwrap();
        assert_eq!(e.id, n);
        if n > 1 {
            assert_eq!(e.prev_hash, last);
        }
        last = e.hash;
    }
    let v = s.verify_audit().unwrap();
    assert_eq!((v.events, v.broken, v.head.clone()), (4, None, last));
    let since = s.audit_events(Some(3), 10).unwrap();
    assert_eq!(since.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(s.audit_events(None, 1).unwrap()[0].id, 4);
    assert_eq!(s.audit_events(None, usize::MAX).unwrap().len(), 4);

    // An edited event breaks the chain at that event.
    b.exec("UPDATE audit SET actor = 'mallory' WHERE id = 2");
    let v = s.verify_audit().unwrap();
    assert_eq!(v.broken.unwrap().id, 2);
    assert_eq!(v.events, 1);
    b.exec("UPDATE audit SET actor = 'ops-alice' WHERE id = 2");
    assert_eq!(s.verify_audit().unwrap().broken, None);
    // A deleted event is a gap.
    b.exec("DELETE FROM audit WHERE id = 3");
    let br = s.verify_audit().unwrap().broken.unwrap();
    assert_eq!(br.id, 4);
    assert!(br.reason.contains("expected event 3"), "{}", br.reason);
}

macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            #[test]
            fn keys_lifecycle() {
                let Some(b) = super::$backend() else { return };
                super::keys_lifecycle(&b);
            }
            #[test]
            fn batches() {
                let Some(b) = super::$backend() else { return };
                super::batches(&b);
            }
            #[test]
            fn tenants() {
                let Some(b) = super::$backend() else { return };
                super::tenants(&b);
            }
            #[test]
            fn tenant_retirement() {
                let Some(b) = super::$backend() else { return };
                super::tenant_retirement(&b);
            }
            #[test]
            fn audit_chain() {
                let Some(b) = super::$backend() else { return };
                super::audit_chain(&b);
            }
        }
    };
}

conformance!(sqlite);
conformance!(postgres);

/// Two replicas on one schema: what one writes, the other sees, and their audit appends form a
/// single chain however they interleave.
mod replicas {
    use super::*;

    #[test]
    fn keys_and_tenants_are_shared() {
        let Some(db) = pg_support::test_db() else {
            return;
        };
        let a = Store::open_postgres(&db.url).unwrap();
        let b = Store::open_postgres(&db.url).unwrap();
        let g = b.keys_generation().unwrap();
        let k = a.create_key("web", "", None, 1).unwrap();
        assert_eq!(b.keys_generation().unwrap(), g + 1);
        let active = b.active_keys().unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].hash, hash_key(&k.secret));
        b.revoke_key(&k.record.id, 2).unwrap();
        assert!(a.active_keys().unwrap().is_empty());

        a.record_batch("msgbatch_1", "web", &k.record.id, 3)
            .unwrap();
        assert_eq!(b.batch_owner("msgbatch_1").unwrap().as_deref(), Some("web"));

        let tg = b.tenants_generation().unwrap();
        a.put_tenant("web", "{}", &ev(4, "web")).unwrap();
        assert_eq!(b.tenants_generation().unwrap(), tg + 1);
        assert_eq!(b.tenant_rows().unwrap().len(), 1);
    }

    #[test]
    fn concurrent_audit_appends_form_one_chain() {
        let Some(db) = pg_support::test_db() else {
            return;
        };
        // Opened together: the migrations must run once under the lock, not fail.
        let (a, b) = std::thread::scope(|sc| {
            let a = sc.spawn(|| Store::open_postgres(&db.url).unwrap());
            let b = sc.spawn(|| Store::open_postgres(&db.url).unwrap());
            (a.join().unwrap(), b.join().unwrap())
        });
        const PER: i64 = 40;
        std::thread::scope(|sc| {
            for (r, s) in [("a", &a), ("b", &b)] {
                sc.spawn(move || {
                    for n in 0..PER {
                        // Tenant writes append inside their own transaction: mixed in too.
                        if n % 10 == 0 {
                            s.put_tenant(r, "{}", &ev(n, r)).unwrap();
                        } else {
                            s.append_audit(&ev(n, r)).unwrap();
                        }
                    }
                });
            }
        });
        for s in [&a, &b] {
            let v = s.verify_audit().unwrap();
            assert_eq!((v.events, v.broken), (2 * PER as u64, None));
        }
        let events = a.audit_events(None, usize::MAX).unwrap();
        assert_eq!(events.len(), 2 * PER as usize);
        assert_eq!(
            events.iter().filter(|e| e.target == "a").count(),
            PER as usize
        );
        assert_eq!(a.tenants_generation().unwrap(), 8);
    }
}

/// A state connection that breaks (the database restarted, a proxy cut it) is replaced on the
/// next call: calls fail while the database is away and work again once it is back, without
/// reopening the store.
#[test]
fn postgres_reconnects_after_the_connection_breaks() {
    let Some(db) = pg_support::test_db() else {
        return;
    };
    let proxy = pg_support::Proxy::start((db.host.clone(), db.port));
    let s = Store::open_postgres(&db.url_via(proxy.addr)).unwrap();
    let k = s.create_key("web", "", None, 1).unwrap();
    proxy.cut();
    assert!(s.active_keys().is_err());
    assert!(s.keys_generation().is_err());
    proxy.restore();
    let active = s.active_keys().unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].hash, hash_key(&k.secret));
    s.create_key("web", "", None, 2).unwrap();
    assert_eq!(s.list_keys().unwrap().len(), 2);
}
