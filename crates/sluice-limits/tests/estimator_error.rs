//! How far the input estimator is from the truth, on a corpus of realistic request bodies
//! (`tests/corpus/`: chat, long system prompts, tools and agent loops, code, JSON, German,
//! French, Japanese, Chinese, Russian, Arabic, emoji, images, PDFs, thinking). The truth was
//! counted once, offline, with the public Claude tokenizer and the upstream's documented
//! image, PDF and tool rules (`tests/corpus/ground_truth.mjs`); this test needs no network.
//!
//! It prints the error distribution (`cargo test -p sluice-limits --test estimator_error --
//! --nocapture`) and fails if it gets worse than the bounds published in
//! `docs/rate-limiting.md`. Also: arbitrary bytes never panic the estimator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use sluice_limits::estimate::estimate_input;
use std::collections::BTreeMap;
use std::path::Path;

fn corpus() -> Vec<(String, String, Vec<u8>, u64)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("truth.json")).unwrap()).unwrap();
    truth
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let file = r["file"].as_str().unwrap().to_owned();
            let body = std::fs::read(dir.join("bodies").join(&file)).unwrap();
            let cat = r["category"].as_str().unwrap().to_owned();
            (file, cat, body, r["actual_total"].as_u64().unwrap())
        })
        .collect()
}

/// The q-quantile (nearest rank) of sorted values.
fn q(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[test]
fn error_distribution_over_the_corpus() {
    let rows = corpus();
    assert!(rows.len() >= 40, "corpus has {} bodies", rows.len());
    let mut all = Vec::new();
    // What `bytes / 4` would have said, for comparison.
    let mut naive = Vec::new();
    let mut by_cat: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    println!(
        "{:<40} {:>8} {:>8} {:>8}",
        "body", "actual", "estimate", "error"
    );
    for (file, cat, body, actual) in &rows {
        let est = estimate_input(body);
        assert!(est.parsed, "{file} did not parse");
        let err = est.total as f64 / *actual as f64 - 1.0;
        println!(
            "{file:<40} {actual:>8} {:>8} {:>+7.1}%",
            est.total,
            err * 100.0
        );
        all.push(err);
        by_cat.entry(cat.clone()).or_default().push(err);
        naive.push(((body.len() as f64 / 4.0) / *actual as f64 - 1.0).abs());
    }
    let abs = |v: &[f64]| {
        let mut a: Vec<f64> = v.iter().map(|e| e.abs()).collect();
        a.sort_by(f64::total_cmp);
        a
    };
    println!(
        "\n{:<18} {:>3} {:>8} {:>8} {:>8} {:>8}",
        "category", "n", "mean", "median|e|", "p90|e|", "max|e|"
    );
    for (cat, v) in &by_cat {
        let a = abs(v);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "{cat:<18} {:>3} {:>+7.1}% {:>8.1}% {:>7.1}% {:>7.1}%",
            v.len(),
            mean * 100.0,
            q(&a, 0.5) * 100.0,
            q(&a, 0.9) * 100.0,
            a[a.len() - 1] * 100.0
        );
    }
    let a = abs(&all);
    let (median, p90, max) = (q(&a, 0.5), q(&a, 0.9), a[a.len() - 1]);
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    println!(
        "{:<18} {:>3} {:>+7.1}% {:>8.1}% {:>7.1}% {:>7.1}%",
        "all",
        all.len(),
        mean * 100.0,
        median * 100.0,
        p90 * 100.0,
        max * 100.0
    );
    naive.sort_by(f64::total_cmp);
    println!(
        "(bytes / 4 on the same bodies: median |e| {:.0}%, p90 {:.0}%, max {:.0}%)",
        q(&naive, 0.5) * 100.0,
        q(&naive, 0.9) * 100.0,
        naive[naive.len() - 1] * 100.0
    );
    // The published bounds, with margin over what the estimator measures today.
    assert!(median <= MEDIAN, "median |error| {median:.3}");
    assert!(p90 <= P90, "p90 |error| {p90:.3}");
    assert!(max <= MAX, "max |error| {max:.3}");
    assert!(mean.abs() <= BIAS, "mean error {mean:.3}");
}

const MEDIAN: f64 = 0.03;
const P90: f64 = 0.15;
const MAX: f64 = 0.25;
const BIAS: f64 = 0.05;

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let e = estimate_input(&body);
        prop_assert!(e.total >= 1);
    }

    #[test]
    fn mangled_requests_never_panic(cut in 0usize..4000, flip in 0usize..4000, byte in any::<u8>()) {
        // Real bodies, truncated and with one byte changed: the interesting near-misses.
        for (_, _, body, _) in corpus().iter().filter(|r| r.2.len() < 20_000).take(6) {
            let mut b = body.clone();
            if !b.is_empty() {
                let i = flip % b.len();
                b[i] = byte;
            }
            b.truncate(cut.min(b.len()));
            let e = estimate_input(&b);
            prop_assert!(e.total >= 1);
            prop_assert!(e.cached_prefix_tokens <= e.total || !e.parsed);
        }
    }
}
