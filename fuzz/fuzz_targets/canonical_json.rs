//! The response cache's canonical JSON on arbitrary bytes: no panic; it accepts what
//! serde_json accepts (bar the documented limits: nesting past 128, lone surrogate escapes and
//! numbers beyond f64, which serde_json refuses and the canonicaliser, copying bytes, does not);
//! its output is valid JSON with the same value; and it is idempotent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sluice_anthropic::canonical_json;

fuzz_target!(|data: &[u8]| {
    let got = canonical_json(data);
    match (&got, serde_json::from_slice::<Value>(data)) {
        (Some(c), Ok(v)) => {
            let back: Value = serde_json::from_slice(c).expect("canonical form is JSON");
            // Map equality ignores order; duplicate keys collapse the same way in both.
            assert_eq!(back, v);
            assert_eq!(canonical_json(c).as_deref(), Some(&c[..]), "not idempotent");
        }
        (None, Ok(_)) => {
            // Only the depth limit refuses valid JSON.
            assert!(data.iter().filter(|&&b| b == b'[' || b == b'{').count() > 128);
        }
        (Some(_), Err(e)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("recursion limit")
                    || msg.contains("surrogate")
                    || msg.contains("number out of range")
                    || msg.contains("invalid unicode"),
                "accepted what serde_json refuses: {msg}"
            );
        }
        (None, Err(_)) => {}
    }
});
