//! Property tests of the SSE tap: the summary does not depend on chunking or line-end style, it
//! matches a model of generated streams, its framing matches a plain whole-buffer reading of the
//! SSE rules, and no input panics it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sluice_anthropic::{ContentBytes, SseTap, StreamError, StreamSummary, parse_message_request};
use sluice_core::Usage;
use std::path::PathBuf;

const FIXTURES: [&str; 3] = [
    "stream_text.sse",
    "stream_thinking_tool_use.sse",
    "stream_error_midway.sse",
];

fn fixture(name: &str) -> Vec<u8> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "../../tests/fixtures", name]
        .iter()
        .collect();
    std::fs::read(path).unwrap()
}

fn whole(bytes: &[u8], limit: usize) -> StreamSummary {
    let mut tap = SseTap::with_line_limit(limit);
    tap.feed(bytes);
    tap.finish();
    tap.summary().clone()
}

/// Feed `bytes` cut at the given points (taken modulo the length, in any order).
fn chunked(bytes: &[u8], cuts: &[usize], limit: usize) -> StreamSummary {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| c % (bytes.len() + 1))
        .chain([0, bytes.len()])
        .collect();
    points.sort_unstable();
    let mut tap = SseTap::with_line_limit(limit);
    for w in points.windows(2) {
        tap.feed(&bytes[w[0]..w[1]]);
    }
    tap.finish();
    tap.summary().clone()
}

fn bytewise(bytes: &[u8], limit: usize) -> StreamSummary {
    let mut tap = SseTap::with_line_limit(limit);
    for b in bytes {
        tap.feed(std::slice::from_ref(b));
    }
    tap.finish();
    tap.summary().clone()
}

const BIG: usize = 1 << 20;

// ---- generated streams with a model of what they mean ----------------------------------------

/// One usage field as generated: absent, `null`, or a count.
type Field = Option<Option<u64>>;

#[derive(Debug, Clone, Default)]
struct GenUsage {
    input: Field,
    output: Field,
    cache_creation: Field,
    cache_read: Field,
    /// `cache_creation` object: absent, `null`, or with its two fields.
    split: Option<Option<(Field, Field)>>,
}

#[derive(Debug, Clone)]
enum GenEvent {
    Start {
        id: String,
        model: String,
        usage: Option<GenUsage>,
    },
    Delta {
        stop_reason: Option<Option<String>>,
        usage: Option<GenUsage>,
    },
    Stop,
    Error {
        kind: String,
        message: String,
    },
    /// A `content_block_delta` with a string under one of the delta kinds' keys.
    Content {
        key: &'static str,
        value: String,
    },
    Noise {
        name: &'static str,
        data: String,
    },
}

#[derive(Debug, Clone)]
struct Style {
    named: bool,
    space: bool,
    split_data: bool,
    comment: bool,
    id_line: bool,
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..5000, any::<u64>()]
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        Just(None),
        Just(Some(None)),
        count().prop_map(|n| Some(Some(n)))
    ]
}

fn gen_usage() -> impl Strategy<Value = GenUsage> {
    (
        field(),
        field(),
        field(),
        field(),
        prop_oneof![
            Just(None),
            Just(Some(None)),
            (field(), field()).prop_map(|s| Some(Some(s)))
        ],
    )
        .prop_map(
            |(input, output, cache_creation, cache_read, split)| GenUsage {
                input,
                output,
                cache_creation,
                cache_read,
                split,
            },
        )
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _:\\-\"\\\\\n\r\t\u{e9}\u{2028}\u{1F600}]{0,16}"
}

fn gen_event() -> impl Strategy<Value = GenEvent> {
    prop_oneof![
        (text(), text(), proptest::option::of(gen_usage()))
            .prop_map(|(id, model, usage)| GenEvent::Start { id, model, usage }),
        (
            proptest::option::of(proptest::option::of(text())),
            proptest::option::of(gen_usage())
        )
            .prop_map(|(stop_reason, usage)| GenEvent::Delta { stop_reason, usage }),
        Just(GenEvent::Stop),
        (text(), text()).prop_map(|(kind, message)| GenEvent::Error { kind, message }),
        (
            prop::sample::select(vec![
                "text",
                "thinking",
                "partial_json",
                "signature",
                "other"
            ]),
            text()
        )
            .prop_map(|(key, value)| GenEvent::Content { key, value }),
        (
            prop::sample::select(vec![
                "content_block_delta",
                "content_block_start",
                "content_block_stop",
                "ping",
                "message",
                "error_",
                "message_start_",
            ]),
            "[^\r\n]{0,40}"
        )
            .prop_map(|(name, data)| GenEvent::Noise { name, data }),
    ]
}

fn style() -> impl Strategy<Value = Style> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(named, space, split_data, comment, id_line)| Style {
            named,
            space,
            split_data,
            comment,
            id_line,
        })
}

fn put(obj: &mut Map<String, Value>, key: &str, f: Field) {
    match f {
        None => {}
        Some(None) => {
            obj.insert(key.into(), Value::Null);
        }
        Some(Some(n)) => {
            obj.insert(key.into(), json!(n));
        }
    }
}

fn usage_json(u: &GenUsage) -> Value {
    let mut o = Map::new();
    put(&mut o, "input_tokens", u.input);
    put(&mut o, "cache_creation_input_tokens", u.cache_creation);
    put(&mut o, "cache_read_input_tokens", u.cache_read);
    match u.split {
        None => {}
        Some(None) => {
            o.insert("cache_creation".into(), Value::Null);
        }
        Some(Some((m5, h1))) => {
            let mut s = Map::new();
            put(&mut s, "ephemeral_5m_input_tokens", m5);
            put(&mut s, "ephemeral_1h_input_tokens", h1);
            o.insert("cache_creation".into(), Value::Object(s));
        }
    }
    put(&mut o, "output_tokens", u.output);
    Value::Object(o)
}

fn event_json(e: &GenEvent) -> (Option<&'static str>, String) {
    let v = match e {
        GenEvent::Start { id, model, usage } => {
            let mut m = json!({"id": id, "type": "message", "role": "assistant", "model": model,
                               "content": [], "stop_reason": null});
            if let Some(u) = usage {
                m["usage"] = usage_json(u);
            }
            (
                "message_start",
                json!({"type": "message_start", "message": m}),
            )
        }
        GenEvent::Delta { stop_reason, usage } => {
            let mut d = json!({"type": "message_delta", "delta": {"stop_sequence": null}});
            if let Some(r) = stop_reason {
                d["delta"]["stop_reason"] = json!(r);
            }
            if let Some(u) = usage {
                d["usage"] = usage_json(u);
            }
            ("message_delta", d)
        }
        GenEvent::Stop => ("message_stop", json!({"type": "message_stop"})),
        GenEvent::Error { kind, message } => (
            "error",
            json!({"type": "error", "error": {"type": kind, "message": message}}),
        ),
        GenEvent::Content { key, value } => {
            let kind = match *key {
                "text" => "text_delta",
                "thinking" => "thinking_delta",
                "partial_json" => "input_json_delta",
                "signature" => "signature_delta",
                _ => "citations_delta",
            };
            let mut delta = json!({"type": kind});
            delta[*key] = json!(value);
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": delta}),
            )
        }
        GenEvent::Noise { name, data } => return (Some(name), data.clone()),
    };
    (Some(v.0), serde_json::to_string(&v.1).unwrap())
}

fn render(events: &[(GenEvent, Style)]) -> String {
    let mut out = String::new();
    for (e, st) in events {
        let (name, data) = event_json(e);
        let noise = matches!(e, GenEvent::Noise { .. });
        if st.comment {
            out.push_str(": keep-alive\n");
        }
        // Noise stays named: unnamed, random data would be judged by whatever JSON it holds.
        if st.named || noise {
            out.push_str("event:");
            if st.space {
                out.push(' ');
            }
            out.push_str(name.unwrap());
            out.push('\n');
        }
        if st.id_line {
            out.push_str("id: 42\nretry: 3000\n");
        }
        let sep = if st.space { "data: " } else { "data:" };
        if st.split_data && !noise {
            // `,"` only occurs between members: serde_json escapes every `"` inside strings.
            out.push_str(sep);
            out.push_str(&data.replace(",\"", &format!(",\n{sep}\"")));
            out.push('\n');
        } else {
            out.push_str(sep);
            out.push_str(&data);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// The usage rules, written out independently of the crate.
#[derive(Default, Clone, Copy)]
struct ModelUsage {
    input: Option<u64>,
    output: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    m5: Option<u64>,
    h1: Option<u64>,
    split: bool,
}

impl ModelUsage {
    fn from(u: &GenUsage) -> Self {
        let c = |f: Field| f.flatten();
        let (split, m5, h1) = match u.split {
            Some(Some((m5, h1))) => (true, c(m5), c(h1)),
            _ => (false, None, None),
        };
        ModelUsage {
            input: c(u.input),
            output: c(u.output),
            cache_creation: c(u.cache_creation),
            cache_read: c(u.cache_read),
            m5,
            h1,
            split,
        }
    }

    fn merge(&mut self, d: &ModelUsage) {
        self.input = d.input.or(self.input);
        self.output = d.output.or(self.output);
        self.cache_creation = d.cache_creation.or(self.cache_creation);
        self.cache_read = d.cache_read.or(self.cache_read);
        self.m5 = d.m5.or(self.m5);
        self.h1 = d.h1.or(self.h1);
        self.split |= d.split;
    }

    fn usage(&self) -> Usage {
        let m5 = self.m5.unwrap_or(0);
        let h1 = self.h1.unwrap_or(0);
        let total =
            self.cache_creation
                .unwrap_or(if self.split { m5.saturating_add(h1) } else { 0 });
        let (five, hour) = if self.split {
            (
                m5.saturating_add(total.saturating_sub(m5.saturating_add(h1))),
                h1,
            )
        } else {
            (total, 0)
        };
        Usage {
            input_tokens: self.input.unwrap_or(0),
            output_tokens: self.output.unwrap_or(0),
            cache_creation_input_tokens: total,
            cache_creation_5m_input_tokens: five,
            cache_creation_1h_input_tokens: hour,
            cache_read_input_tokens: self.cache_read.unwrap_or(0),
        }
    }
}

fn expected(events: &[(GenEvent, Style)]) -> StreamSummary {
    let mut s = StreamSummary::default();
    let mut u = ModelUsage::default();
    for (e, _) in events {
        s.events += 1;
        match e {
            GenEvent::Start { id, model, usage } => {
                s.saw_message_start = true;
                s.message_id = Some(id.clone());
                s.model = Some(model.clone());
                u = usage.as_ref().map(ModelUsage::from).unwrap_or_default();
                s.usage = u.usage();
                s.content = ContentBytes::default();
                s.final_usage = false;
            }
            GenEvent::Delta { stop_reason, usage } => {
                if let Some(Some(r)) = stop_reason {
                    s.stop_reason = Some(r.clone());
                    if usage
                        .as_ref()
                        .is_some_and(|d| ModelUsage::from(d).output.is_some())
                    {
                        s.final_usage = true;
                    }
                }
                if let Some(d) = usage {
                    u.merge(&ModelUsage::from(d));
                    s.usage = u.usage();
                }
            }
            GenEvent::Stop => s.saw_message_stop = true,
            GenEvent::Error { kind, message } => {
                s.error = Some(StreamError {
                    error_type: kind.clone(),
                    message: message.clone(),
                });
            }
            GenEvent::Content { key, value } => {
                // The decoded string's UTF-8 bytes, whatever escapes carried it.
                let n = value.len() as u64;
                match *key {
                    "text" | "thinking" => s.content.text += n,
                    "partial_json" => s.content.json += n,
                    "signature" => s.content.signature += n,
                    _ => {}
                }
            }
            GenEvent::Noise { .. } => {}
        }
    }
    s
}

fn gen_stream() -> impl Strategy<Value = Vec<(GenEvent, Style)>> {
    prop::collection::vec((gen_event(), style()), 0..12)
}

// ---- a plain reading of the SSE rules, for the framing -----------------------------------------

/// The events a whole-buffer reading of the SSE rules dispatches: (type, data, data was lost).
///
/// "Lost" follows the tap's one documented limit: data of an event whose type is, at that line,
/// one the tap does not read is not kept.
fn reference_events(input: &[u8]) -> Vec<(Vec<u8>, Vec<u8>, bool)> {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let read = |t: &[u8]| {
        matches!(
            t,
            b"" | b"message_start" | b"message_delta" | b"message_stop" | b"error"
        )
    };
    let mut out = Vec::new();
    let (mut kind, mut data, mut has_data, mut lost) = (Vec::new(), Vec::new(), false, false);
    let mut i = 0;
    let mut start = 0;
    while i < input.len() {
        let eol_len = match input[i] {
            b'\n' => 1,
            b'\r' if input.get(i + 1) == Some(&b'\n') => 2,
            b'\r' => 1,
            _ => {
                i += 1;
                continue;
            }
        };
        let line = &input[start..i];
        i += eol_len;
        start = i;
        if line.is_empty() {
            if has_data {
                out.push((std::mem::take(&mut kind), std::mem::take(&mut data), lost));
            }
            kind.clear();
            data.clear();
            has_data = false;
            lost = false;
            continue;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => continue,
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"event" => kind = value.to_vec(),
            b"data" => {
                if !read(&kind) {
                    lost = true;
                }
                if has_data {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                has_data = true;
            }
            _ => {}
        }
    }
    // The tap's `finish`: the unterminated last line is dropped, a pending event dispatched.
    if has_data {
        out.push((kind, data, lost));
    }
    out
}

/// The reference's events, written out canonically: one line per field, `\n` only.
fn canonical(events: &[(Vec<u8>, Vec<u8>, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, data, lost) in events {
        if *lost {
            out.extend_from_slice(b"event: lost\ndata:\n\n");
            continue;
        }
        if !kind.is_empty() {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(kind);
            out.push(b'\n');
        }
        for line in data.split(|&b| b == b'\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}

/// Streams built from SSE-ish pieces, so that framing corner cases are common.
fn sse_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(&b"event: message_start"[..]),
        Just(&b"event: message_delta"[..]),
        Just(&b"event: message_stop"[..]),
        Just(&b"event: error"[..]),
        Just(&b"event: ping"[..]),
        Just(&b"event:"[..]),
        Just(&b"event"[..]),
        Just(&b"data: "[..]),
        Just(&b"data:"[..]),
        Just(&b"data"[..]),
        Just(&b"id: 1"[..]),
        Just(&b": c"[..]),
        Just(&b":"[..]),
        Just(&b" "[..]),
        Just(&b"\n"[..]),
        Just(&b"\n\n"[..]),
        Just(&b"\r"[..]),
        Just(&b"\r\n"[..]),
        Just(&b"\xEF\xBB\xBF"[..]),
        Just(&b"\xEF\xBB"[..]),
        Just(&br#"{"type":"message_start","message":{"id":"m","model":"x","usage":{"input_tokens":3,"output_tokens":1}}}"#[..]),
        Just(&br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#[..]),
        Just(&br#"{"type":"message_stop"}"#[..]),
        Just(&br#"{"type":"error","error":{"type":"overloaded_error","message":"o"}}"#[..]),
        Just(&br#"{"type":"ping"}"#[..]),
        Just(&b"{}"[..]),
        Just(&b"{"[..]),
        Just(&b"}"[..]),
        Just(&b"\xff\xc3"[..]),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|ps| ps.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn fixtures_do_not_depend_on_chunking(
        which in 0..FIXTURES.len(),
        cuts in prop::collection::vec(any::<usize>(), 0..64),
    ) {
        let bytes = fixture(FIXTURES[which]);
        prop_assert_eq!(chunked(&bytes, &cuts, BIG), whole(&bytes, BIG));
    }

    #[test]
    fn fixtures_in_small_chunks(which in 0..FIXTURES.len(), size in 1usize..8) {
        let bytes = fixture(FIXTURES[which]);
        let want = whole(&bytes, BIG);
        let mut tap = SseTap::new();
        for c in bytes.chunks(size) {
            tap.feed(c);
        }
        tap.finish();
        prop_assert_eq!(tap.summary(), &want);
    }

    #[test]
    fn fixtures_do_not_depend_on_line_ends(
        which in 0..FIXTURES.len(),
        eols in prop::collection::vec(0u8..3, 64),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        // Every line end becomes LF, CRLF or CR, independently.
        let text = fixture(FIXTURES[which]);
        let mut mixed = Vec::new();
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            if n > 0 {
                let mut eol = usize::from(eols[n % eols.len()]);
                // After a CR, an LF would join it into one CRLF line end: that is a different stream.
                if eol == 0 && mixed.last() == Some(&b'\r') {
                    eol = 1;
                }
                mixed.extend_from_slice([&b"\n"[..], b"\r\n", b"\r"][eol]);
            }
            mixed.extend_from_slice(line);
        }
        prop_assert_eq!(chunked(&mixed, &cuts, BIG), whole(&text, BIG));
    }

    #[test]
    fn generated_streams_match_the_model(
        events in gen_stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..32),
    ) {
        let text = render(&events);
        let want = expected(&events);
        prop_assert_eq!(&whole(text.as_bytes(), BIG), &want, "{}", text);
        prop_assert_eq!(&chunked(text.as_bytes(), &cuts, BIG), &want);
        for eol in ["\r\n", "\r"] {
            let converted = text.replace('\n', eol);
            prop_assert_eq!(&chunked(converted.as_bytes(), &cuts, BIG), &want);
        }
    }

    #[test]
    fn generated_streams_bytewise(events in gen_stream()) {
        let text = render(&events);
        prop_assert_eq!(bytewise(text.as_bytes(), BIG), expected(&events));
    }

    #[test]
    fn framing_matches_a_whole_buffer_reading(
        soup in sse_soup(),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let want = whole(&canonical(&reference_events(&soup)), BIG);
        prop_assert_eq!(&whole(&soup, BIG), &want, "{:?}", String::from_utf8_lossy(&soup));
        prop_assert_eq!(&chunked(&soup, &cuts, BIG), &want);
    }

    #[test]
    fn soup_does_not_depend_on_chunking_even_with_a_tiny_limit(
        soup in sse_soup(),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
        limit in 0usize..140,
    ) {
        prop_assert_eq!(chunked(&soup, &cuts, limit), whole(&soup, limit));
        prop_assert_eq!(bytewise(&soup, limit), whole(&soup, limit));
    }

    #[test]
    fn garbage_never_panics_and_does_not_depend_on_chunking(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
        limit in prop_oneof![0usize..64, Just(BIG)],
    ) {
        prop_assert_eq!(chunked(&bytes, &cuts, limit), whole(&bytes, limit));
        let _ = parse_message_request(&bytes);
        let _ = sluice_anthropic::parse_message_response(&bytes);
    }
}
