//! The Redis backend under failure and across replicas, each test on a private `redis-server`
//! (started on a free port, killed by a drop guard; the shared one on 6379 is never touched):
//!
//! - (e) Redis killed mid-run with `fail_mode = "local"`: no admission fails, the fallback
//!   enforces the configured share of the limit, settlements made for Redis are kept and
//!   replayed, and the replica is back on Redis soon after the server returns on its port.
//! - A stalled Redis (SIGSTOP) costs each call at most the timeout: never a hang.
//! - `closed` refuses quickly with `Unavailable`; `open` admits.
//! - (b) Two replicas (two backends, two connections) driven concurrently against one limit
//!   admit together within +1% of it, over a real-time window on Redis server time.
//!
//! `measure_round_trip` (ignored; `cargo test --release -p sluice-limits --test
//! redis_failover -- --ignored --nocapture`) prints admission latency percentiles.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sluice_config::FailMode;
use sluice_limits::backend::{AdmitRequest, BackendError, Rates, Scope, ScopeKind, Settlement};
use sluice_limits::redis::{RedisBackend, RedisOptions, Via};
use sluice_limits::{Demand, Rate};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A private Redis on its own port, killed when dropped.
struct Server {
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn start() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Server { port, child: None };
        s.restart();
        s
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// (Re)start on the same port and wait until it answers.
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {REDIS_SERVER}: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(c) = redis::Client::open(self.url())
                && let Ok(mut conn) = c.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Redis server time (µs).
    fn time_us(&self) -> u64 {
        let c = redis::Client::open(self.url()).unwrap();
        let mut conn = c.get_connection().unwrap();
        let (s, us): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
        s * 1_000_000 + us
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped server must be continued to die promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

fn backend(url: &str, fail_mode: FailMode, timeout: Duration) -> RedisBackend {
    RedisBackend::connect(RedisOptions {
        url: url.into(),
        prefix: "failover".into(),
        timeout,
        fail_mode,
        fallback_share: 0.5,
        caller_clock: false,
    })
}

async fn wait_up(b: &RedisBackend, within: Duration) -> Duration {
    let start = Instant::now();
    while !b.is_up() {
        assert!(
            start.elapsed() < within,
            "not back on Redis within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

fn request(tenant: &str, rpm: u64, burst: u64) -> AdmitRequest {
    AdmitRequest {
        tenant: tenant.into(),
        scopes: Arc::from([Scope::new(
            ScopeKind::Tenant,
            Scope::tenant_key(tenant),
            tenant,
            Rates {
                requests: Some(Rate {
                    per_minute: rpm,
                    burst,
                }),
                input_tokens: Some(Rate::per_minute(1_000_000)),
                output_tokens: None,
            },
            0,
        )]),
        demand: Demand {
            requests: 1,
            input_tokens: 10,
            output_tokens: 0,
        },
        budget: None,
    }
}

/// A monotonic µs clock for the fallback, as the limiter hands in.
fn clock() -> impl Fn() -> u64 {
    let origin = Instant::now();
    move || u64::try_from(origin.elapsed().as_micros()).unwrap() + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_local_fallback_enforces_share_and_returns() {
    let mut server = Server::start();
    let timeout = Duration::from_millis(100);
    let b = backend(&server.url(), FailMode::Local, timeout);
    let now = clock();
    // 60 per minute, burst 100: over this test the refill adds about one request, so what the
    // fallback admits is its share of the burst (50) plus that.
    let r = request("web", 60, 100);
    let mut settle_later = Vec::new();
    for _ in 0..20 {
        let a = b.admit(&r, now()).await.unwrap();
        assert_eq!(a.via, Via::Redis);
        assert_eq!(a.outcome.result, Ok(()));
        settle_later.push(Settlement {
            request: r.clone(),
            actual: r.demand,
            actual_cost_micros: 0,
        });
    }
    server.kill();

    // Settlements of calls Redis admitted wait for it.
    for s in settle_later {
        b.settle(s, Via::Redis);
    }
    let mut admitted = 0;
    let mut slowest = Duration::ZERO;
    for i in 0..300 {
        let t = Instant::now();
        let a = b.admit(&r, now()).await;
        slowest = slowest.max(t.elapsed());
        let a = a.unwrap_or_else(|e| panic!("admission {i} failed: {e}"));
        assert_eq!(a.via, Via::Local, "admission {i}");
        if a.outcome.result.is_ok() {
            admitted += 1;
        }
    }
    assert!(
        (50..=52).contains(&admitted),
        "fallback admitted {admitted}, want its half of the burst of 100"
    );
    assert!(
        slowest <= timeout + Duration::from_millis(250),
        "{slowest:?}"
    );
    let st = b.status();
    assert!(!st.up);
    assert_eq!(st.outages_total, 1);
    assert_eq!(st.fallbacks_total, 300);
    assert_eq!(st.settle_pending, 20);

    server.restart();
    let back = wait_up(&b, Duration::from_secs(3)).await;
    assert!(b.flush(Duration::from_secs(3)).await);
    let st = b.status();
    assert_eq!(st.settle_pending, 0);
    assert_eq!(st.settle_dropped, 0);
    let a = b.admit(&r, now()).await.unwrap();
    assert_eq!(a.via, Via::Redis);
    assert_eq!(a.outcome.result, Ok(()));
    eprintln!("back on Redis {back:?} after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_redis_costs_at_most_the_timeout() {
    let server = Server::start();
    let timeout = Duration::from_millis(100);
    let b = backend(&server.url(), FailMode::Local, timeout);
    let now = clock();
    let r = request("web", 6000, 6000);
    assert_eq!(b.admit(&r, now()).await.unwrap().via, Via::Redis);
    server.signal("-STOP");
    let t = Instant::now();
    let a = b.admit(&r, now()).await.unwrap();
    let first = t.elapsed();
    assert_eq!(a.via, Via::Local);
    assert!(
        first >= timeout && first < timeout + Duration::from_millis(250),
        "{first:?}"
    );
    // Marked down: the next calls do not wait at all.
    let t = Instant::now();
    for _ in 0..100 {
        assert_eq!(b.admit(&r, now()).await.unwrap().via, Via::Local);
    }
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    server.signal("-CONT");
    wait_up(&b, Duration::from_secs(3)).await;
    assert_eq!(b.admit(&r, now()).await.unwrap().via, Via::Redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_refuses_fast_and_open_admits() {
    let mut server = Server::start();
    let timeout = Duration::from_millis(100);
    let closed = backend(&server.url(), FailMode::Closed, timeout);
    let open = backend(&server.url(), FailMode::Open, timeout);
    let now = clock();
    let r = request("web", 6000, 6000);
    assert_eq!(closed.admit(&r, now()).await.unwrap().via, Via::Redis);
    assert_eq!(open.admit(&r, now()).await.unwrap().via, Via::Redis);
    server.kill();
    for _ in 0..20 {
        let t = Instant::now();
        let e = closed.admit(&r, now()).await;
        assert!(matches!(e, Err(BackendError::Unavailable(_))), "{e:?}");
        assert!(t.elapsed() <= timeout + Duration::from_millis(250));
        let a = open.admit(&r, now()).await.unwrap();
        assert_eq!(a.via, Via::Open);
        assert_eq!(a.outcome.result, Ok(()));
        assert_eq!(a.outcome.views.len(), 1);
    }
    server.restart();
    wait_up(&closed, Duration::from_secs(3)).await;
    wait_up(&open, Duration::from_secs(3)).await;
    assert_eq!(closed.admit(&r, now()).await.unwrap().via, Via::Redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_at_startup_starts_in_fallback_then_joins() {
    let mut server = Server::start();
    server.kill();
    let b = backend(&server.url(), FailMode::Local, Duration::from_millis(100));
    let now = clock();
    let r = request("web", 6000, 6000);
    let a = b.admit(&r, now()).await.unwrap();
    assert_eq!(a.via, Via::Local);
    server.restart();
    wait_up(&b, Duration::from_secs(3)).await;
    assert_eq!(b.admit(&r, now()).await.unwrap().via, Via::Redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_limit_within_one_percent() {
    let server = Server::start();
    let timeout = Duration::from_millis(500);
    let replicas = [
        Arc::new(backend(&server.url(), FailMode::Closed, timeout)),
        Arc::new(backend(&server.url(), FailMode::Closed, timeout)),
    ];
    for b in &replicas {
        wait_up(b, Duration::from_secs(3)).await;
    }
    // 12,000 per minute (200/s) with a burst of 200: over 3 s, 200 + 600 at most.
    let (rpm, burst) = (12_000u64, 200u64);
    let r = Arc::new(request("shared", rpm, burst));
    let run = Duration::from_secs(3);
    let counts: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let start_us = server.time_us();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, b) in replicas.iter().enumerate() {
        for _ in 0..8 {
            let (b, r, n) = (b.clone(), r.clone(), counts[i].clone());
            tasks.spawn(async move {
                let end = Instant::now() + run;
                while Instant::now() < end {
                    let a = b.admit(&r, 0).await.unwrap();
                    assert_eq!(a.via, Via::Redis);
                    match a.outcome.result {
                        Ok(()) => {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(sluice_limits::backend::Denial::Wait { retry_after_us, .. }) => {
                            let d = Duration::from_micros(retry_after_us.min(20_000));
                            tokio::time::sleep(d).await;
                        }
                        Err(d) => panic!("{d:?}"),
                    }
                }
            });
        }
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    let end_us = server.time_us();
    let per: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let total: u64 = per.iter().sum();
    let window_us = end_us - start_us;
    let allowed = burst as f64 + rpm as f64 * window_us as f64 / 60e6;
    let ratio = total as f64 / allowed;
    eprintln!(
        "replicas admitted {per:?} = {total} of {allowed:.1} allowed over {:.3} s: {:.4}",
        window_us as f64 / 1e6,
        ratio
    );
    assert!(per.iter().all(|&n| n > 0), "both replicas took part");
    assert!(ratio <= 1.01, "over the limit: {ratio}");
    assert!(
        ratio >= 0.95,
        "the drivers did not saturate the limit: {ratio}"
    );
}

/// Admission round trips on a private local Redis: one caller, then 32 concurrent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
async fn measure_round_trip() {
    let server = Server::start();
    let b = Arc::new(backend(
        &server.url(),
        FailMode::Closed,
        Duration::from_secs(1),
    ));
    wait_up(&b, Duration::from_secs(3)).await;
    let r = Arc::new(request("bench", 1_000_000_000, 1_000_000_000));
    let n = 10_000usize;
    for _ in 0..500 {
        b.admit(&r, 0).await.unwrap();
    }
    let mut lat = Vec::with_capacity(n);
    let t = Instant::now();
    for _ in 0..n {
        let s = Instant::now();
        let a = b.admit(&r, 0).await.unwrap();
        lat.push(s.elapsed());
        assert_eq!(a.via, Via::Redis);
    }
    report("1 caller", &mut lat, t.elapsed(), n);

    let callers = 32;
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (b, r) = (b.clone(), r.clone());
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(n / callers);
            for _ in 0..n / callers {
                let s = Instant::now();
                let a = b.admit(&r, 0).await.unwrap();
                lat.push(s.elapsed());
                assert_eq!(a.via, Via::Redis);
            }
            lat
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(l) = tasks.join_next().await {
        all.extend(l.unwrap());
    }
    let count = all.len();
    report("32 callers", &mut all, t.elapsed(), count);
    // Time spent inside Redis per script call, to tell the script from the round trip.
    let c = redis::Client::open(server.url()).unwrap();
    let mut conn = c.get_connection().unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    for line in info.lines().filter(|l| l.starts_with("cmdstat_evalsha")) {
        eprintln!("{line}");
    }
}

fn report(what: &str, lat: &mut [Duration], wall: Duration, n: usize) {
    lat.sort_unstable();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    eprintln!(
        "{what}: {n} admissions, p50 {:?}, p99 {:?}, max {:?}, {:.0}/s",
        p(0.50),
        p(0.99),
        lat[lat.len() - 1],
        n as f64 / wall.as_secs_f64()
    );
}
