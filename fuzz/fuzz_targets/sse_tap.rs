//! The SSE tap on arbitrary bytes: it must not panic, and the summary must not depend on how
//! the stream is cut into chunks.
//!
//! Input layout: byte 0 is a control byte; its low 4 bits say how many of the following bytes are
//! chunk sizes (each `size + 1`, used in turn, cycling), bit 4 selects a small line limit
//! (`(control >> 5) * 24`, so 0..=168 bytes) instead of the default 1 MiB, so that the overflow
//! path is exercised too. The rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_anthropic::{SseTap, StreamSummary};

fn tap(limit: usize) -> SseTap {
    SseTap::with_line_limit(limit)
}

fn whole(stream: &[u8], limit: usize) -> StreamSummary {
    let mut t = tap(limit);
    t.feed(stream);
    t.finish();
    t.summary().clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(control & 0x0f).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    let limit = if control & 0x10 != 0 {
        usize::from(control >> 5) * 24
    } else {
        1 << 20
    };

    let want = whole(stream, limit);

    let mut chunked = tap(limit);
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let size = sizes
            .get(i % sizes.len().max(1))
            .map_or(1, |&s| usize::from(s) + 1);
        let end = (pos + size).min(stream.len());
        chunked.feed(&stream[pos..end]);
        // Empty feeds are legal and must change nothing (e.g. around a pending CR).
        chunked.feed(&[]);
        pos = end;
        i += 1;
    }
    chunked.finish();
    assert_eq!(chunked.summary(), &want, "chunked by {sizes:?}");

    // `finish` is idempotent and the tap ignores bytes after it.
    chunked.finish();
    chunked.feed(b"\n\nevent: message_stop\ndata: {}\n\n");
    assert_eq!(chunked.summary(), &want);

    if stream.len() <= 4096 {
        let mut bytewise = tap(limit);
        for b in stream {
            bytewise.feed(std::slice::from_ref(b));
        }
        bytewise.finish();
        assert_eq!(bytewise.summary(), &want, "byte by byte");
    }

    // Every counted event needed a line end to end its data line.
    let line_ends = stream.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
    assert!(want.events <= line_ends as u64);
});
