//! Calibration aid for the input estimator: reads JSON lines `{"id": …, "text": …}` on stdin
//! and prints `{"id": …, "features": [...], "estimate": …}` per line, for fitting the text
//! weights against a tokenizer (see `tests/corpus/README.md`).
//!
//! `cargo run -p sluice-limits --example estimator_features < texts.jsonl`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sluice_limits::estimate::TextProfile;
use std::io::{BufRead, Write};

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let p = TextProfile::of(v["text"].as_str().unwrap_or_default());
        let row = serde_json::json!({
            "id": v["id"],
            "features": p.features(),
            "estimate": p.tokens(),
        });
        writeln!(out, "{row}").unwrap();
    }
}
