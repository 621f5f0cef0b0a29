//! Test support: a private schema in the local PostgreSQL per test, dropped at the end, and a
//! TCP proxy in front of Postgres that a test can cut (every connection closed, new ones
//! refused) and restore, to play a database outage without touching the shared server.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The server tests use: `SLUICE_TEST_DATABASE_URL`, else the local trust-auth one.
pub fn admin_url() -> String {
    std::env::var("SLUICE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema of its own; dropped (with the ledger in it) on drop.
pub struct TestDb {
    pub schema: String,
    /// `admin_url()` with `search_path` set to the schema.
    pub url: String,
    pub host: String,
    pub port: u16,
}

fn connect_admin() -> Result<postgres::Client, postgres::Error> {
    let mut cfg: postgres::Config = admin_url().parse().unwrap();
    cfg.connect_timeout(Duration::from_secs(3));
    cfg.connect(postgres::NoTls)
}

/// A fresh schema, or `None` (after saying so) when Postgres is not reachable and `CI` is
/// unset. On CI an unreachable database fails the test: `.ci/run` makes sure it runs.
pub fn test_db() -> Option<TestDb> {
    let mut admin = match connect_admin() {
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
    let schema = format!("sluice_test_{:016x}", getrandom::u64().unwrap());
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .unwrap();
    let cfg: postgres::Config = admin_url().parse().unwrap();
    let host = match cfg.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let url = with_search_path(&admin_url(), &schema);
    Some(TestDb {
        schema,
        url,
        host,
        port,
    })
}

/// `url` with `options=-csearch_path=<schema>` added.
pub fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

impl TestDb {
    /// The same database reached through `addr` (a proxy) instead.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let cfg: postgres::Config = admin_url().parse().unwrap();
        let user = cfg.get_user().unwrap_or("postgres");
        let db = cfg.get_dbname().unwrap_or("test");
        with_search_path(
            &format!("postgres://{user}@{}:{}/{db}", addr.ip(), addr.port()),
            &self.schema,
        )
    }

    /// A direct connection into the schema.
    pub fn client(&self) -> postgres::Client {
        let cfg: postgres::Config = self.url.parse().unwrap();
        cfg.connect(postgres::NoTls).unwrap()
    }

    /// One integer from `sql`.
    pub fn scalar(&self, sql: &str) -> i64 {
        self.client().query_one(sql, &[]).unwrap().get::<_, i64>(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = connect_admin() {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

/// A TCP proxy to Postgres on its own threads. `cut()` closes every open connection and makes
/// new ones close at once; `restore()` lets them through again.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target: (String, u16)) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c2, k2) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect((target.0.as_str(), target.1)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut k = k2.lock().unwrap();
                    k.push(client.try_clone().unwrap());
                    k.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy { addr, cut, conns }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
