//! Message Batches through the gateway under failure: a batch whose ownership cannot be recorded
//! is cancelled upstream and reported as not created, never left as an orphan no tenant sees.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{UPSTREAM_KEY, env};
use serde_json::Value;

fn create_body() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/batch_create_request.json"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_whose_ownership_cannot_be_recorded_is_cancelled_and_reported_not_created() {
    let e = env().await;
    // Another process holds the state database's write lock for the whole create: every
    // ownership write (each waiting out SQLite's busy timeout) fails.
    let lock = rusqlite::Connection::open(&e.db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let r = e
        .http
        .post(e.url("/v1/messages/batches"))
        .header("x-api-key", &e.web_key)
        .body(create_body())
        .send()
        .await
        .unwrap();
    lock.execute_batch("ROLLBACK").unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "api_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("not created"), "{msg}");
    assert!(!msg.contains(UPSTREAM_KEY));

    // The upstream's batch was cancelled, so nothing runs unseen on the organisation's key.
    let mock_list: Value = e
        .http
        .get(format!("http://{}/v1/messages/batches", e.mock.addr))
        .header("x-api-key", UPSTREAM_KEY)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = mock_list["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{mock_list}");
    assert!(
        !data[0]["cancel_initiated_at"].is_null(),
        "batch not cancelled upstream: {}",
        data[0]
    );
    // And the tenant's listing (ownership table) holds nothing that could later surprise it.
    let list: Value = e
        .http
        .get(e.url("/v1/messages/batches"))
        .header("x-api-key", &e.web_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_many_batches_keeps_at_most_8_upstream_gets_in_flight() {
    let e = env().await;
    let body = create_body();
    let mut ids = Vec::new();
    for _ in 0..110 {
        let r = e
            .http
            .post(e.url("/v1/messages/batches"))
            .header("x-api-key", &e.web_key)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    // The latency header is forwarded on every upstream GET of the listing, so each stays in
    // flight long enough for an unbounded fan-out to show.
    let r = e
        .http
        .get(e.url("/v1/messages/batches?limit=200"))
        .header("x-api-key", &e.web_key)
        .header("x-mock-latency-ms", "40")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    let got: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(got, newest_first);
    let peak = e.mock.stats().batch_gets_peak;
    assert!(peak <= 8, "{peak} batch GETs in flight at once");
    assert!(
        peak >= 2,
        "the listing did not fetch concurrently at all ({peak})"
    );
}
