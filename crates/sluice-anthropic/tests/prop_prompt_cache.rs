//! Property tests of the prompt-cache editor: on generated Messages bodies (random whitespace,
//! key order, string and block forms, escaped characters, decoy `cache_control` text), `apply`
//! yields exactly the input's JSON value plus the planned markers, keeps every input byte in
//! order, finds any marker a body already carries, and never panics on arbitrary bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sluice_anthropic::prompt_cache::{Marker, Plan, Spot, Ttl, apply, layout};

/// Writes a `Value` as JSON, taking whitespace, key order and escapes from `choices`.
struct Writer<'a> {
    out: String,
    choices: &'a [u8],
    k: usize,
}

impl Writer<'_> {
    fn pick(&mut self) -> u8 {
        let c = self.choices[self.k % self.choices.len()];
        self.k += 1;
        c.wrapping_add(u8::try_from(self.k % 251).unwrap())
    }

    fn ws(&mut self) {
        let w = ["", "", " ", "\n  ", "\t", "\r\n", "  \n"];
        let i = usize::from(self.pick()) % w.len();
        self.out.push_str(w[i]);
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for ch in s.chars() {
            if self.pick().is_multiple_of(4) {
                let mut units = [0u16; 2];
                for u in ch.encode_utf16(&mut units) {
                    self.out.push_str(&format!("\\u{u:04x}"));
                }
            } else {
                let quoted = serde_json::to_string(&ch.to_string()).unwrap();
                self.out.push_str(&quoted[1..quoted.len() - 1]);
            }
        }
        self.out.push('"');
    }

    fn value(&mut self, v: &Value) {
        self.ws();
        match v {
            Value::Object(m) => {
                self.out.push('{');
                let mut entries: Vec<_> = m.iter().collect();
                if !entries.is_empty() {
                    let r = usize::from(self.pick()) % entries.len();
                    entries.rotate_left(r);
                    if self.pick().is_multiple_of(2) {
                        entries.reverse();
                    }
                }
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.ws();
                    self.string(k);
                    self.ws();
                    self.out.push(':');
                    self.value(v);
                }
                self.ws();
                self.out.push('}');
            }
            Value::Array(a) => {
                self.out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.value(v);
                }
                self.ws();
                self.out.push(']');
            }
            Value::String(s) => self.string(s),
            other => self.out.push_str(&other.to_string()),
        }
        self.ws();
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z ]{1,12}",
        1 => Just(r#"say "cache_control": {"type":"ephemeral"} please"#.to_owned()),
        2 => "\\PC{1,6}",
        1 => Just(String::new()),
    ]
}

fn text_block() -> impl Strategy<Value = Value> {
    text().prop_map(|t| json!({"type": "text", "text": t}))
}

fn block() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => text_block(),
        1 => text().prop_map(|t| json!({"type": "thinking", "thinking": t, "signature": "sig"})),
        1 => Just(json!({"type": "redacted_thinking", "data": "xyz"})),
        1 => Just(json!({"type": "tool_use", "id": "t1", "name": "f", "input": {"cache_control": "x"}})),
        1 => prop::collection::vec(text_block(), 0..3)
            .prop_map(|c| json!({"type": "tool_result", "tool_use_id": "t1", "content": c})),
        1 => Just(json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})),
    ]
}

fn content() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::String),
        prop::collection::vec(block(), 0..4).prop_map(Value::Array),
    ]
}

fn message() -> impl Strategy<Value = Value> {
    (prop::bool::ANY, content()).prop_map(
        |(user, c)| json!({"role": if user { "user" } else { "assistant" }, "content": c}),
    )
}

fn tool() -> impl Strategy<Value = Value> {
    "[a-z]{1,8}".prop_map(|name| {
        json!({"name": name, "description": "d",
               "input_schema": {"type": "object", "properties": {"cache_control": {"type": "string"}}}})
    })
}

fn body() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(tool(), 0..3)),
        prop::option::of(prop_oneof![
            text().prop_map(Value::String),
            prop::collection::vec(text_block(), 0..3).prop_map(Value::Array),
        ]),
        prop::option::of(prop::collection::vec(message(), 0..5)),
        prop::bool::ANY,
    )
        .prop_map(|(tools, system, messages, meta)| {
            let mut m = Map::new();
            m.insert("model".into(), json!("claude-sonnet-4-5"));
            m.insert("max_tokens".into(), json!(1024));
            if let Some(t) = tools {
                m.insert("tools".into(), Value::Array(t));
            }
            if let Some(s) = system {
                m.insert("system".into(), s);
            }
            if let Some(ms) = messages {
                m.insert("messages".into(), Value::Array(ms));
            }
            if meta {
                m.insert(
                    "metadata".into(),
                    json!({"user_id": "u", "cache_control": 1}),
                );
            }
            Value::Object(m)
        })
}

fn marker_json(m: Marker) -> Value {
    match m.ttl {
        Ttl::FiveMinutes => json!({"type": "ephemeral"}),
        Ttl::OneHour => json!({"type": "ephemeral", "ttl": "1h"}),
    }
}

fn cacheable(b: &Value) -> bool {
    let ty = b.get("type").and_then(Value::as_str);
    let empty_text = ty == Some("text") && b.get("text").and_then(Value::as_str) == Some("");
    b.is_object() && !matches!(ty, Some("thinking" | "redacted_thinking")) && !empty_text
}

/// Put a marker where the module should, computed on the `Value`: a string becomes one text
/// block, a list of blocks gets it on its last cacheable block. Returns whether there was a
/// place for it; `wrapped` is set when a string was wrapped.
fn mark_content(v: &mut Value, m: Marker, wrapped: &mut bool) -> bool {
    match v {
        Value::String(s) if !s.is_empty() => {
            *v = json!([{"type": "text", "text": s.clone(), "cache_control": marker_json(m)}]);
            *wrapped = true;
            true
        }
        Value::Array(blocks) => match blocks.iter_mut().rev().find(|b| cacheable(b)) {
            Some(b) => {
                b.as_object_mut()
                    .unwrap()
                    .insert("cache_control".into(), marker_json(m));
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// The input's value with the plan's markers, how many there are, and whether a string was
/// wrapped.
fn expected(input: &Value, plan: &Plan) -> (Value, usize, bool) {
    let mut v = input.clone();
    let (mut n, mut wrapped) = (0, false);
    let obj = v.as_object_mut().unwrap();
    if let Some(m) = plan.marker(Spot::Tools)
        && let Some(Value::Object(last)) = obj
            .get_mut("tools")
            .and_then(Value::as_array_mut)
            .and_then(|t| t.last_mut())
    {
        last.insert("cache_control".into(), marker_json(m));
        n += 1;
    }
    if let Some(m) = plan.marker(Spot::System)
        && let Some(s) = obj.get_mut("system")
        && mark_content(s, m, &mut wrapped)
    {
        n += 1;
    }
    if let Some(m) = plan.marker(Spot::LastUser)
        && let Some(msgs) = obj.get_mut("messages").and_then(Value::as_array_mut)
        && let Some(last) = msgs
            .iter_mut()
            .rev()
            .find(|msg| msg.get("role").and_then(Value::as_str) == Some("user"))
        && mark_content(last.get_mut("content").unwrap(), m, &mut wrapped)
    {
        n += 1;
    }
    if let Some(m) = plan.marker(Spot::TopLevel) {
        obj.insert("cache_control".into(), marker_json(m));
        n += 1;
    }
    (v, n, wrapped)
}

/// Whether `small` is `big` with bytes taken out (in order).
fn is_subsequence(small: &[u8], big: &[u8]) -> bool {
    let mut it = big.iter();
    small.iter().all(|c| it.any(|b| b == c))
}

fn plan_from(spots: [bool; 4], hours: usize) -> Plan {
    // TTLs non-increasing in prompt order: the first `hours` planned markers are 1-hour.
    let marks: Vec<_> = Spot::ALL
        .into_iter()
        .zip(spots)
        .filter(|&(_, on)| on)
        .enumerate()
        .map(|(i, (s, _))| {
            let ttl = if i < hours {
                Ttl::OneHour
            } else {
                Ttl::FiveMinutes
            };
            (s, Marker { ttl })
        })
        .collect();
    Plan::new(&marks).unwrap()
}

/// Put a real marker somewhere the upstream reads one, if the body has such a place.
fn inject(v: &mut Value, at: u8) -> bool {
    let m = json!({"type": "ephemeral"});
    let obj = v.as_object_mut().unwrap();
    let block = |b: &mut Value| {
        b.as_object_mut()
            .map(|o| o.insert("cache_control".into(), m.clone()))
            .is_some()
    };
    match at % 5 {
        0 => {
            obj.insert("cache_control".into(), m.clone());
            true
        }
        1 => obj
            .get_mut("tools")
            .and_then(Value::as_array_mut)
            .and_then(|t| t.first_mut())
            .is_some_and(block),
        2 => obj
            .get_mut("system")
            .and_then(Value::as_array_mut)
            .and_then(|s| s.first_mut())
            .is_some_and(block),
        3 => obj
            .get_mut("messages")
            .and_then(Value::as_array_mut)
            .and_then(|ms| ms.first_mut())
            .and_then(|msg| msg.get_mut("content"))
            .and_then(Value::as_array_mut)
            .and_then(|c| c.first_mut())
            .is_some_and(block),
        _ => obj
            .get_mut("messages")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(|msg| msg.get_mut("content").and_then(Value::as_array_mut))
            .flatten()
            .filter_map(|b| b.get_mut("content").and_then(Value::as_array_mut))
            .flatten()
            .next()
            .is_some_and(block),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn apply_adds_exactly_the_planned_markers(
        v in body(),
        choices in prop::collection::vec(any::<u8>(), 1..64),
        spots in any::<[bool; 4]>(),
        hours in 0usize..=4,
    ) {
        let mut w = Writer { out: String::new(), choices: &choices, k: 0 };
        w.value(&v);
        let raw = w.out.into_bytes();
        prop_assert_eq!(&serde_json::from_slice::<Value>(&raw).unwrap(), &v);

        let l = layout(&raw).unwrap();
        prop_assert!(!l.has_marker());
        let plan = plan_from(spots, hours);
        let out = apply(&raw, &l, &plan);
        let (want, n, wrapped) = expected(&v, &plan);
        let got: Value = serde_json::from_slice(&out)
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))?;
        prop_assert_eq!(&got, &want);
        prop_assert!(is_subsequence(&raw, &out));
        // The markers sit where the upstream reads them.
        prop_assert_eq!(layout(&out).unwrap().has_marker(), n > 0);

        prop_assert!(n <= plan.len());
        let members = [
            Marker { ttl: Ttl::FiveMinutes }.member(),
            Marker { ttl: Ttl::OneHour }.member(),
        ];
        // Insert-only edits (no string was wrapped): removing the inserted members gives the
        // input back, byte for byte.
        if !wrapped {
            let mut s = String::from_utf8(out.clone()).unwrap();
            for m in members {
                let m = std::str::from_utf8(m).unwrap();
                s = s.replace(&format!(",{m}"), "").replace(m, "");
            }
            prop_assert_eq!(s.as_bytes(), &raw[..]);
        }
    }

    #[test]
    fn a_body_with_a_marker_is_recognised_and_left_alone(
        mut v in body(),
        at in any::<u8>(),
        choices in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let injected = inject(&mut v, at);
        let mut w = Writer { out: String::new(), choices: &choices, k: 0 };
        w.value(&v);
        let raw = w.out.into_bytes();
        let l = layout(&raw).unwrap();
        prop_assert_eq!(l.has_marker(), injected);
        if injected {
            prop_assert_eq!(apply(&raw, &l, &plan_from([true; 4], 0)), raw);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_edits_stay_json(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(l) = layout(&bytes) {
            let out = apply(&bytes, &l, &plan_from([true; 4], 2));
            prop_assert!(serde_json::from_slice::<&serde_json::value::RawValue>(&out).is_ok());
        }
    }

    #[test]
    fn mangled_bodies_never_panic(
        v in body(),
        choices in prop::collection::vec(any::<u8>(), 1..64),
        cut in any::<prop::sample::Index>(),
        junk in any::<u8>(),
    ) {
        let mut w = Writer { out: String::new(), choices: &choices, k: 0 };
        w.value(&v);
        let mut raw = w.out.into_bytes();
        let at = cut.index(raw.len());
        raw[at] = junk;
        let strict = serde_json::from_slice::<&serde_json::value::RawValue>(&raw).is_ok();
        if let Ok(l) = layout(&raw) {
            prop_assert!(strict);
            let out = apply(&raw, &l, &plan_from([true; 4], 0));
            prop_assert!(serde_json::from_slice::<&serde_json::value::RawValue>(&out).is_ok());
        }
    }
}
