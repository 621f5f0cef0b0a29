//! Property tests of the canonical JSON form behind the response cache's key: a document
//! written with other member orders and other whitespace has the same canonical form; changing
//! any one value (a leaf, a key) changes it; the form is JSON with the same value.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use sluice_anthropic::canonical_json;

/// A JSON tree whose objects have distinct keys, numbers and strings kept as their text.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

fn leaf() -> impl Strategy<Value = J> {
    prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (any::<i32>(), 0u32..1000).prop_map(|(a, b)| format!("{a}.{b}")),
            (1u32..9, -30i32..30).prop_map(|(a, e)| format!("{a}e{e}")),
        ]
        .prop_map(J::Num),
        "[a-z \\\\\"é{}:,\\[\\]]{0,12}".prop_map(J::Str),
    ]
}

fn tree() -> impl Strategy<Value = J> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..6)
                .prop_map(|m| J::Obj(m.into_iter().collect())),
        ]
    })
}

fn esc(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Writes `j`, taking whitespace and member order from `choices`.
fn write(j: &J, choices: &[u8], k: &mut usize, out: &mut String) {
    let mut pick = || {
        let c = choices[*k % choices.len()].wrapping_add((*k % 251) as u8);
        *k += 1;
        c
    };
    let ws = ["", " ", "\n  ", "\t", "\r\n"];
    let w = ws[usize::from(pick()) % ws.len()];
    out.push_str(w);
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) => out.push_str(n),
        J::Str(s) => out.push_str(&esc(s)),
        J::Arr(v) => {
            out.push('[');
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(x, choices, k, out);
            }
            out.push_str(w);
            out.push(']');
        }
        J::Obj(m) => {
            let mut order: Vec<usize> = (0..m.len()).collect();
            // A rotation and maybe a reversal, chosen by the choices.
            let r = usize::from(pick());
            if !order.is_empty() {
                let len = order.len();
                order.rotate_left(r % len);
            }
            if r % 2 == 1 {
                order.reverse();
            }
            out.push('{');
            for (n, &i) in order.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(w);
                out.push_str(&esc(&m[i].0));
                out.push_str(w);
                out.push(':');
                write(&m[i].1, choices, k, out);
            }
            out.push_str(w);
            out.push('}');
        }
    }
}

fn text(j: &J, choices: &[u8]) -> String {
    let mut out = String::new();
    write(j, choices, &mut 0, &mut out);
    out
}

/// Change the `n`-th leaf or key (counted depth first, modulo their number): returns whether
/// something was changed.
fn mutate(j: &mut J, n: &mut usize) -> bool {
    match j {
        J::Arr(v) => v.iter_mut().any(|x| mutate(x, n)),
        J::Obj(m) => {
            let keys: Vec<String> = m.iter().map(|(k, _)| k.clone()).collect();
            for (k, v) in m.iter_mut() {
                if *n == 0 {
                    // A key no sibling has.
                    let mut nk = format!("{k}Z");
                    while keys.contains(&nk) {
                        nk.push('Z');
                    }
                    *k = nk;
                    return true;
                }
                *n -= 1;
                if mutate(v, n) {
                    return true;
                }
            }
            false
        }
        leaf => {
            if *n > 0 {
                *n -= 1;
                return false;
            }
            *leaf = match leaf {
                J::Null => J::Bool(false),
                J::Bool(b) => J::Bool(!*b),
                // A digit after the sign: another valid number.
                J::Num(s) => J::Num(match s.strip_prefix('-') {
                    Some(rest) => format!("-1{rest}"),
                    None => format!("1{s}"),
                }),
                J::Str(s) => J::Str(format!("{s}x")),
                _ => unreachable!(),
            };
            true
        }
    }
}

/// Leaves and keys: what [`mutate`] can change.
fn count(j: &J) -> usize {
    match j {
        J::Arr(v) => v.iter().map(count).sum(),
        J::Obj(m) => m.iter().map(|(_, v)| 1 + count(v)).sum(),
        _ => 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn order_and_whitespace_do_not_matter(
        j in tree(),
        a in prop::collection::vec(any::<u8>(), 1..32),
        b in prop::collection::vec(any::<u8>(), 1..32),
    ) {
        let (ta, tb) = (text(&j, &a), text(&j, &b));
        let ca = canonical_json(ta.as_bytes()).unwrap();
        let cb = canonical_json(tb.as_bytes()).unwrap();
        prop_assert_eq!(&ca, &cb, "{} vs {}", ta, tb);
        // The form is JSON with the same value, and canonical itself.
        let v: serde_json::Value = serde_json::from_slice(&ca).unwrap();
        prop_assert_eq!(v, serde_json::from_str::<serde_json::Value>(&ta).unwrap());
        prop_assert_eq!(canonical_json(&ca).unwrap(), ca);
    }

    #[test]
    fn any_changed_value_changes_the_form(
        j in tree(),
        which in any::<usize>(),
        a in prop::collection::vec(any::<u8>(), 1..32),
    ) {
        let mut m = j.clone();
        prop_assume!(count(&j) > 0);
        let mut n = which % count(&j);
        prop_assert!(mutate(&mut m, &mut n));
        let ca = canonical_json(text(&j, &a).as_bytes()).unwrap();
        let cm = canonical_json(text(&m, &a).as_bytes()).unwrap();
        prop_assert_ne!(ca, cm);
    }

    #[test]
    fn never_panics_on_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = canonical_json(&data);
    }
}
