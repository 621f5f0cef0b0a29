//! A private PostgreSQL schema per test, dropped at the end. Tests skip, saying so, only when
//! Postgres is unreachable and `CI` is unset; on CI they fail.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub fn admin_url() -> String {
    std::env::var("SLUICE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A private schema, dropped on drop.
pub struct TestDb {
    pub schema: String,
    cfg: postgres::Config,
}

pub fn test_db() -> Option<TestDb> {
    let mut cfg: postgres::Config = admin_url().parse().unwrap();
    cfg.connect_timeout(Duration::from_secs(3));
    let mut admin = match cfg.connect(postgres::NoTls) {
        Ok(c) => c,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("PostgreSQL at {} is required on CI: {e}", admin_url());
            }
            eprintln!(
                "SKIPPED: PostgreSQL not reachable at {} ({e}); set CI=1 to make this fail",
                admin_url()
            );
            return None;
        }
    };
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let schema = format!(
        "sluice_test_{:x}_{}_{}",
        nanos,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .unwrap();
    Some(TestDb { schema, cfg })
}

impl TestDb {
    pub fn target(&self) -> (String, u16) {
        let host = match self.cfg.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        (host, self.cfg.get_ports().first().copied().unwrap_or(5432))
    }

    /// The schema reached through `addr` (`None`: directly).
    pub fn url(&self, addr: Option<SocketAddr>) -> String {
        let user = self.cfg.get_user().unwrap_or("postgres");
        let db = self.cfg.get_dbname().unwrap_or("test");
        let (host, port) = match addr {
            Some(a) => (a.ip().to_string(), a.port()),
            None => self.target(),
        };
        format!(
            "postgres://{user}@{host}:{port}/{db}?options=-csearch_path%3D{}",
            self.schema
        )
    }

    /// One integer (blocking; call from a blocking thread).
    pub fn scalar(&self, sql: &str) -> i64 {
        let cfg: postgres::Config = self.url(None).parse().unwrap();
        let mut c = cfg.connect(postgres::NoTls).unwrap();
        c.query_one(sql, &[]).unwrap().get::<_, i64>(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = self.cfg.connect(postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}
