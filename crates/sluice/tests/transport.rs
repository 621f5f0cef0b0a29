//! What a client can make the gateway hold, and what the end of the shutdown grace does to
//! calls still in flight: slow headers, slow bodies, refusals decided from the headers, and
//! streams and calls cut by the grace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Opts, SMALL, env_with, stream_body};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn opts(server: &str) -> Opts {
    Opts {
        extra_config: server.into(),
        ..Opts::default()
    }
}

/// Write a request head (and nothing of its body) and read the reply's status line.
async fn head_only(addr: std::net::SocketAddr, key: &str, len: u64) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("no reply while the body was still unsent")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

async fn median_latency(env: &common::Env, n: usize) -> Duration {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = env.post_messages(&env.web_key, SMALL).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        v.push(t.elapsed());
    }
    v.sort();
    v[n / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_do_not_delay_others_and_are_closed_at_the_timeout() {
    let mut env = env_with(opts("header_read_timeout_ms = 1500\n")).await;
    let addr = env.gw.as_ref().unwrap().addr();
    let _ = median_latency(&env, 5).await; // warm the upstream pool
    let baseline = median_latency(&env, 21).await;

    // 500 connections sending a request head one byte a second.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..500 {
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let connected = Instant::now();
            let head = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: nope\r\n";
            let mut buf = [0u8; 512];
            for b in head {
                if s.write_all(&[*b]).await.is_err() {
                    return connected.elapsed();
                }
                // A closed connection reads 0 (or an error, or a 408 before the close).
                if tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
                    .await
                    .is_ok()
                {
                    return connected.elapsed();
                }
            }
            panic!("a head sent at 1 byte/s was not cut");
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = median_latency(&env, 21).await;
    assert!(
        during <= baseline + Duration::from_millis(15),
        "slow connections delayed an ordinary call: {during:?} vs {baseline:?}"
    );
    for t in slow {
        let closed_after = t.await.unwrap();
        assert!(
            closed_after >= Duration::from_millis(1400)
                && closed_after < Duration::from_millis(3500),
            "closed after {closed_after:?}, not at the 1.5 s timeout"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    env.finish().await;
}

#[tokio::test]
async fn a_body_sent_at_one_byte_a_second_is_cut_with_408() {
    let mut env = env_with(opts("body_read_timeout_ms = 1000\n")).await;
    let addr = env.gw.as_ref().unwrap().addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        env.web_key,
        SMALL.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let t = Instant::now();
    let (mut r, mut w) = s.into_split();
    let dribble = tokio::spawn(async move {
        for b in SMALL.as_bytes() {
            if w.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(4), r.read(&mut buf))
        .await
        .expect("a dribbled body was not cut")
        .unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains(r#""type":"timeout_error""#), "{reply}");
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    dribble.abort();
    let rows = env.finish().await;
    let row = rows
        .iter()
        .find(|r| r.status == 408)
        .expect("no ledger row");
    assert_eq!(row.outcome, "client_timeout");
}

#[tokio::test]
async fn refusals_are_decided_from_the_headers_before_the_body() {
    let mut env = env_with(Opts {
        web_extra: "limits = { requests_per_minute = 1 }".into(),
        ..Opts::default()
    })
    .await;
    let addr = env.gw.as_ref().unwrap().addr();
    // An unknown key: refused at once, whatever body is announced.
    let reply = head_only(addr, "sk-sluice-not-a-key", 30_000_000).await;
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");

    // The request bucket: the one request of the minute is taken, the next is refused from
    // its headers.
    let r = env.post_messages(&env.web_key, SMALL).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let reply = head_only(addr, &env.web_key, 30_000_000).await;
    assert!(reply.starts_with("HTTP/1.1 429"), "{reply}");
    assert!(reply.contains("exhausted its requests"), "{reply}");

    let rows = env.finish().await;
    let outcomes: Vec<_> = rows.iter().map(|r| r.outcome.as_str()).collect();
    assert!(outcomes.contains(&"limited_tenant"), "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_end_of_the_grace_streams_get_an_error_event_and_every_call_its_row() {
    let mut env = env_with(opts("shutdown_grace_secs = 1\n")).await;
    // A stream far longer than the grace, and a JSON call whose reply comes after it.
    let stream = env
        .post_messages(&env.web_key, &stream_body(400))
        .header("x-mock-event-interval-ms", "100")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let slow = env
        .post_messages(&env.web_key, SMALL)
        .header("x-mock-latency-ms", "8000");
    let slow = tokio::spawn(async move { slow.send().await });
    let body = tokio::spawn(async move { stream.text().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let rows = env.finish().await;
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    let text = body.await.unwrap().unwrap_or_default();
    let events = common::sse_events(&text);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "error", "{text}");
    assert!(
        data["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down")
    );
    assert!(!text.contains("message_stop"));
    assert!(slow.await.unwrap().is_err(), "the JSON call was not cut");
    let shut: Vec<_> = rows.iter().filter(|r| r.outcome == "shutdown").collect();
    assert_eq!(shut.len(), 2, "{rows:?}");
    let s = shut.iter().find(|r| r.streamed).expect("no stream row");
    assert!(s.output_tokens > 0, "usage seen so far is kept: {s:?}");
    let j = shut.iter().find(|r| !r.streamed).expect("no JSON call row");
    assert_eq!(j.status, 503);
}

#[tokio::test]
async fn a_spent_budget_is_refused_from_the_headers_before_the_body() {
    let mut env = env_with(Opts {
        web_extra: "max_wait_ms = 0\nbudget_daily_usd = 0.02".into(),
        ..Opts::default()
    })
    .await;
    let addr = env.gw.as_ref().unwrap().addr();
    // The reservation (the cold output default, 1,024 tokens: ~$0.015) fits the $0.02 budget;
    // the reply's 2,000 output tokens (~$0.03) overspend it.
    let big = r#"{"model":"claude-sonnet-4-5","max_tokens":2000,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = env
        .post_messages(&env.web_key, big)
        .header("x-mock-output-tokens", "2000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reply = head_only(addr, &env.web_key, 30_000_000).await;
    assert!(reply.starts_with("HTTP/1.1 429"), "{reply}");
    assert!(reply.contains("budget"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("x-should-retry: false"),
        "{reply}"
    );
    let rows = env.finish().await;
    assert_eq!(rows.last().unwrap().outcome, "limited_budget");
}
