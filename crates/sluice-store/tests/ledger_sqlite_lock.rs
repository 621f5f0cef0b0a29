//! A SQLite ledger whose file another process keeps locked longer than the busy timeout loses
//! nothing: the refused batch is held and retried with backoff, later rows wait in the queue,
//! and every row is written once the lock is released.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sluice_store::{LedgerRow, LedgerWriter, LedgerWriterOptions, Store};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn row(i: i64) -> LedgerRow {
    LedgerRow {
        ts_ms: i,
        request_id: format!("req_{i}"),
        tenant: "web".into(),
        key_id: "key_1".into(),
        endpoint: "messages",
        status: 200,
        outcome: "ok",
        ..LedgerRow::default()
    }
}

#[test]
fn rows_survive_a_lock_longer_than_the_busy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("l.db");
    Store::open(&p).unwrap();
    let w = LedgerWriter::start(
        &p,
        LedgerWriterOptions {
            queue_capacity: 1_000,
            batch_max: 16,
            flush_interval: Duration::from_millis(5),
        },
    )
    .unwrap();
    let s = w.sender();

    // Another process takes the write lock for 6 s: longer than the writer's 5 s busy timeout,
    // so at least one batch write fails outright.
    let blocker = rusqlite::Connection::open(&p).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(6));
        blocker.execute_batch("COMMIT").unwrap();
    });

    // Rows keep arriving while the database is locked.
    for i in 0..200 {
        assert!(s.record(row(i)), "row {i} refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    release.join().unwrap();
    assert!(s.flush_blocking());

    let stats = s.stats();
    assert!(
        stats.write_errors.load(Ordering::Relaxed) >= 1,
        "the lock never made a write fail; the test proves nothing"
    );
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(stats.written.load(Ordering::Relaxed), 200);
    assert!(stats.database_up.load(Ordering::Relaxed));
    let c = rusqlite::Connection::open(&p).unwrap();
    let n: i64 = c
        .query_row("SELECT count(DISTINCT request_id) FROM ledger", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 200);
    w.shutdown();
}
