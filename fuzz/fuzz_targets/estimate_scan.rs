//! The estimator's JSON walker (`sluice_limits::estimate::estimate_input`) on arbitrary bytes:
//! the limiter runs it on every limited call's raw body, before anything else has refused it.
//!
//! Checked: no panic (and, with `-a`, no overflow); the same bytes give the same estimate; a
//! body the walker cannot read gets exactly the documented fallback (`ceil(len / 4)`, at least
//! 1, no prefixes); a body without the bytes `cache_control` has no breakpoints; otherwise the
//! breakpoints grow in prompt order, the last one is `prefix_hash` / `cached_prefix_tokens`, and
//! no prefix is larger than the whole.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_limits::estimate::estimate_input;

fuzz_target!(|data: &[u8]| {
    let e = estimate_input(data);
    assert_eq!(e, estimate_input(data), "not deterministic");
    if !e.parsed {
        assert_eq!(e.total, (data.len() as u64).div_ceil(4).max(1));
        assert!(e.breakpoints().is_empty() && e.lookback().is_empty());
        assert_eq!((e.prefix_hash, e.cached_prefix_tokens), (None, 0));
        return;
    }
    if memchr::memmem::find(data, b"cache_control").is_none() {
        assert!(e.breakpoints().is_empty(), "{e:?}");
    }
    let bp = e.breakpoints();
    assert!(bp.windows(2).all(|w| w[0].tokens <= w[1].tokens), "{e:?}");
    assert_eq!(e.prefix_hash, bp.last().map(|p| p.hash), "{e:?}");
    assert_eq!(e.cached_prefix_tokens, bp.last().map_or(0, |p| p.tokens), "{e:?}");
    assert!(e.cached_prefix_tokens <= e.total, "{e:?}");
    assert!(e.lookback().iter().all(|p| p.tokens <= e.total), "{e:?}");
});
