//! The prompt-cache editor (`sluice_anthropic::prompt_cache`) on arbitrary bytes: `layout` runs
//! on client bodies before anything else has judged them, and `apply` rewrites what is sent
//! upstream.
//!
//! Checked: no panic; every point lies inside the body; with each full plan (all four spots,
//! the Anthropic form, the Bedrock form), the edited body is valid JSON, keeps every input byte
//! in order, and reads back with a marker exactly when one was added; a body that already has a
//! marker comes back unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use sluice_anthropic::prompt_cache::{Marker, Plan, Spot, Target, Ttl, apply, layout};

/// Whether `small` is `big` with bytes taken out (in order).
fn is_subsequence(small: &[u8], big: &[u8]) -> bool {
    let mut it = big.iter();
    small.iter().all(|c| it.any(|b| b == c))
}

fuzz_target!(|data: &[u8]| {
    let Ok(l) = layout(data) else {
        return;
    };
    for spot in Spot::ALL {
        let Some(bp) = l.breakpoint(spot) else {
            continue;
        };
        assert!(bp.prefix_end <= data.len(), "{spot:?} {bp:?}");
        match bp.target {
            Target::Member { close, .. } => assert_eq!(data[close], b'}', "{spot:?} {bp:?}"),
            Target::Wrap { start, end } => {
                assert!(start + 2 <= end && data[start] == b'"' && data[end - 1] == b'"');
            }
        }
        assert!(l.prefix_bytes(spot).is_some_and(|n| n <= data.len()), "{spot:?}");
    }
    let (m5, h1) = (Marker { ttl: Ttl::FiveMinutes }, Marker { ttl: Ttl::OneHour });
    let mixed = Plan::new(&[
        (Spot::Tools, h1),
        (Spot::System, h1),
        (Spot::LastUser, m5),
        (Spot::TopLevel, m5),
    ])
    .unwrap();
    let plans = [
        mixed,
        Plan::anthropic(Ttl::OneHour, true, true),
        Plan::bedrock(Ttl::FiveMinutes, true, true, true),
    ];
    for plan in plans {
        let out = apply(data, &l, &plan);
        if l.has_marker() {
            assert_eq!(out, data);
            continue;
        }
        assert!(serde_json::from_slice::<&RawValue>(&out).is_ok(), "not JSON");
        assert!(is_subsequence(data, &out), "an input byte was lost");
        let added = Spot::ALL
            .iter()
            .any(|&s| plan.marker(s).is_some() && l.breakpoint(s).is_some());
        let again = layout(&out).unwrap();
        assert_eq!(again.has_marker(), added, "markers not where the upstream reads them");
    }
});
