//! Speed of the input estimator: nanoseconds per KB of request body on a 100 KB text body
//! (chat, code and JSON) and on a body carrying one 5 MB base64 image.
//!
//! `cargo run --release -p sluice-limits --example estimator_speed`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sluice_limits::estimate::estimate_input;
use std::hint::black_box;
use std::time::Instant;

fn text_body(target: usize) -> Vec<u8> {
    let para = "The gateway reads the usage from the reply and settles the reservation: it refunds \
                what was reserved and not used, and charges what was used and not reserved. \
                fn settle(&mut self, usage: &Usage) -> Option<u64> { self.charge(usage.total()) }\n\
                {\"order_id\": \"NW-4471893\", \"status\": \"shipped\", \"total\": 189.0}\n\
                Könnten Sie das bitte prüfen? 東京の天気は晴れです。\n";
    let mut messages = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < target {
        let text = para.repeat(8);
        size += text.len();
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages
            .push(serde_json::json!({"role": role, "content": [{"type": "text", "text": text}]}));
        i += 1;
    }
    serde_json::to_vec(&serde_json::json!({
        "model": "claude-sonnet-4-5", "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are a helpful assistant.", "cache_control": {"type": "ephemeral"}}],
        "messages": messages,
    }))
    .unwrap()
}

fn image_body(bytes: usize) -> Vec<u8> {
    // A PNG header for 3000×2000 followed by filler, base64-encoded.
    let mut raw = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    raw.extend_from_slice(&3000u32.to_be_bytes());
    raw.extend_from_slice(&2000u32.to_be_bytes());
    raw.extend((0..bytes).map(|i| (i * 7919 % 251) as u8));
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut data = String::with_capacity(raw.len() * 4 / 3 + 4);
    for c in raw.chunks(3) {
        let v = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            data.push(if k <= c.len() {
                A[((v >> (18 - 6 * k)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    serde_json::to_vec(&serde_json::json!({
        "model": "claude-sonnet-4-5", "max_tokens": 1024,
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
            {"type": "text", "text": "What is in this picture?"}]}],
    }))
    .unwrap()
}

fn measure(name: &str, body: &[u8]) {
    let est = estimate_input(body);
    let iters = (200_000_000 / body.len().max(1)).clamp(10, 100_000);
    for _ in 0..iters / 10 {
        black_box(estimate_input(black_box(body)));
    }
    let t = Instant::now();
    for _ in 0..iters {
        black_box(estimate_input(black_box(body)));
    }
    let per = t.elapsed().as_nanos() as f64 / iters as f64;
    let kb = body.len() as f64 / 1024.0;
    println!(
        "{name}: {:.0} KB, {:.1} µs per body, {:.0} ns/KB, estimate {} tokens",
        kb,
        per / 1000.0,
        per / kb,
        est.total
    );
}

fn main() {
    measure("text 100 KB", &text_body(100 * 1024));
    measure("image 5 MB", &image_body(5 * 1024 * 1024 * 3 / 4));
}
