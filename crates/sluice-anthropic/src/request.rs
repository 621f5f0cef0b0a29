//! Partial parse of a `POST /v1/messages` (or `count_tokens`) body: only the fields policy needs.
//!
//! The body is forwarded byte for byte, so it is never built into a `serde_json::Value`: unknown
//! keys are skipped by the tokenizer and the three policy fields are read through borrowed
//! visitors.

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

/// Longest `model` accepted, in bytes. Model ids are a few dozen bytes; the value keys the
/// gateway's per-model state (the limiter's estimators, its class memo) and appears in logs and
/// ledger rows, so a client-chosen string of any length would only cost memory.
pub const MAX_MODEL_LEN: usize = 256;

/// Why a request body was refused before it reached the upstream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The body is not valid JSON (the string says where, as serde_json reports it).
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// Valid JSON, but not an object.
    #[error("request body must be a JSON object")]
    NotAnObject,
    /// `model` is absent (or null).
    #[error("model: field required")]
    MissingModel,
    /// A field policy reads has the wrong type (e.g. `max_tokens: "ten"`).
    #[error("{field}: {reason}")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// What was wrong with it.
        reason: String,
    },
}

/// What the data plane reads from a Messages request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRequest {
    /// The requested model id.
    pub model: String,
    /// `max_tokens`, when present.
    pub max_tokens: Option<u64>,
    /// `stream: true`.
    pub stream: bool,
    /// Where parts of the body are, for routing and rewriting without a second parse.
    pub spans: Spans,
}

/// Byte ranges of top-level parts of a Messages body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spans {
    /// The `model` value's JSON string token, quotes included (`None` when it holds escapes:
    /// then only a full rewrite can replace it).
    pub model: Option<Range<usize>>,
    /// The `tools` value.
    pub tools: Option<Range<usize>>,
    /// The `system` value.
    pub system: Option<Range<usize>>,
    /// The first element of `messages`.
    pub first_message: Option<Range<usize>>,
    /// A top-level `cache_control` (automatic prompt caching) is present.
    pub cache_control: bool,
}

/// Parse just enough of a Messages body; unknown fields are skipped without being built.
///
/// Checks, in order (the first failure is returned):
/// 1. the body is UTF-8 JSON with nothing after the value, else [`WireError::MalformedJson`];
/// 2. the value is an object, else [`WireError::NotAnObject`];
/// 3. none of `model`, `max_tokens`, `stream` appears twice, else [`WireError::InvalidField`];
/// 4. `model` is present and not `null`, else [`WireError::MissingModel`];
/// 5. `model` is a non-empty string of at most [`MAX_MODEL_LEN`] bytes, all printable ASCII
///    (`0x20..=0x7e`, after JSON unescaping), `max_tokens` (if present and not `null`) is an
///    integer in `0..=u64::MAX`, `stream` (if present and not `null`) is a boolean, else
///    [`WireError::InvalidField`].
///
/// The only allocation on success is the returned model string (plus serde_json's scratch buffer
/// when a key or the model contains escapes).
pub fn parse_message_request(body: &[u8]) -> Result<MessageRequest, WireError> {
    // serde_json's slice reader does not check UTF-8 inside strings it skips, and the JSON
    // grammar requires UTF-8 throughout; checking here keeps "is it JSON" one answer.
    let text = std::str::from_utf8(body).map_err(|e| {
        WireError::MalformedJson(format!("invalid UTF-8 at byte {}", e.valid_up_to()))
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let top = Top::deserialize(&mut de)
        .and_then(|top| de.end().map(|()| top))
        .map_err(|e| WireError::MalformedJson(e.to_string()))?;
    let fields = match top {
        Top::Object(fields) => fields,
        Top::Other => return Err(WireError::NotAnObject),
    };
    if let Some(field) = fields.duplicate {
        // Gateway policy and the upstream must read the same value; with a repeated key they
        // might not (first wins here, last wins in many parsers), so neither is trusted.
        return Err(invalid(field, "must not be repeated"));
    }
    let mut model_span = None;
    let model = match fields.model {
        None | Some(Val::Null) => return Err(WireError::MissingModel),
        Some(Val::Str(s)) if s.is_empty() => return Err(invalid("model", "must not be empty")),
        Some(Val::Str(s)) if s.len() > MAX_MODEL_LEN => {
            return Err(invalid(
                "model",
                &format!("must be at most {MAX_MODEL_LEN} bytes"),
            ));
        }
        // Every model id is ASCII; a control byte or a non-ASCII name is junk that would
        // otherwise reach logs, metrics and the estimators' maps as it is.
        Some(Val::Str(s)) if !s.bytes().all(is_model_byte) => {
            return Err(invalid("model", "must be printable ASCII"));
        }
        Some(Val::Str(s)) => {
            if let Cow::Borrowed(b) = &s {
                model_span = Some((b.as_ptr() as usize, b.len()));
            }
            s.into_owned()
        }
        Some(other) => return Err(invalid_kind("model", "must be a string", &other)),
    };
    let max_tokens = match fields.max_tokens {
        None | Some(Val::Null) => None,
        Some(Val::UInt(n)) => Some(n),
        Some(other) => {
            return Err(invalid_kind(
                "max_tokens",
                "must be a non-negative integer",
                &other,
            ));
        }
    };
    let stream = match fields.stream {
        None | Some(Val::Null) => false,
        Some(Val::Bool(b)) => b,
        Some(other) => return Err(invalid_kind("stream", "must be a boolean", &other)),
    };
    let base = text.as_ptr() as usize;
    let span = |r: &RawValue| {
        let start = r.get().as_ptr() as usize - base;
        start..start + r.get().len()
    };
    let spans = Spans {
        model: model_span.map(|(p, len)| {
            // The token's quotes sit just outside the borrowed contents.
            let start = p - base - 1;
            start..start + len + 2
        }),
        tools: fields.tools.map(span),
        system: fields.system.map(span),
        first_message: fields.first_message.map(span),
        cache_control: fields.cache_control,
    };
    Ok(MessageRequest {
        model,
        max_tokens,
        stream,
        spans,
    })
}

const CACHE_MARKER: &[u8] = b"\"cache_control\"";

/// The key that keeps calls sharing a cacheable prefix on one upstream member (the upstream's
/// prompt cache is per organisation, so a prefix cached under one key is a miss under another).
///
/// The prefix is what stays the same across a conversation's turns and across the conversations
/// of one application: the model, `tools` and `system`, up to the last `cache_control`
/// breakpoint within them. When the only breakpoints are in `messages` (or caching is automatic,
/// a top-level `cache_control`), the conversation's first message is added, so one
/// conversation keeps to one member. A body without any breakpoint has no key: nothing of it is
/// cached, and it is spread by weight.
///
/// The key is XXH3-64 (seed 0) of the model, a `0xff` byte, then the parts above separated by
/// `0xff`: a fixed, published algorithm, so every replica, whatever it was built with, sends a
/// prefix to the same member (pinned by a test vector).
pub fn cache_affinity_key(body: &[u8], req: &MessageRequest) -> Option<u64> {
    let part = |r: &Option<Range<usize>>| r.clone().and_then(|r| body.get(r)).unwrap_or(&[]);
    let (tools, system) = (part(&req.spans.tools), part(&req.spans.system));
    let rfind = |h: &[u8]| memchr::memmem::rfind(h, CACHE_MARKER);
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(req.model.as_bytes());
    h.update(&[0xff]);
    if let Some(pos) = rfind(system) {
        h.update(tools);
        h.update(&[0xff]);
        h.update(&system[..pos]);
    } else if let Some(pos) = rfind(tools) {
        h.update(&tools[..pos]);
    } else if req.spans.cache_control || memchr::memmem::find(body, CACHE_MARKER).is_some() {
        h.update(tools);
        h.update(&[0xff]);
        h.update(system);
        h.update(&[0xff]);
        h.update(part(&req.spans.first_message));
    } else {
        return None;
    }
    Some(h.digest())
}

/// The [`cache_affinity_key`] of a body that carries no marker of its own but will get
/// breakpoints from the gateway (automatic prompt caching: at the end of `system` when
/// `system`, else at the end of `tools` when `tools`, else only the conversation's tail), read
/// from the unmarked body, so the key is the same whichever provider form the markers later
/// take. As in [`cache_affinity_key`], calls sharing the marked prefix share a key (a new
/// conversation goes where the shared system prompt was cached), and a conversation cached
/// only by its tail keeps to one member by its first message.
pub fn planned_affinity_key(body: &[u8], req: &MessageRequest, tools: bool, system: bool) -> u64 {
    let part = |r: &Option<Range<usize>>| r.clone().and_then(|r| body.get(r)).unwrap_or(&[]);
    let (t, s) = (part(&req.spans.tools), part(&req.spans.system));
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(req.model.as_bytes());
    h.update(&[0xff]);
    if system {
        h.update(t);
        h.update(&[0xff]);
        h.update(s);
    } else if tools {
        h.update(t);
    } else {
        h.update(t);
        h.update(&[0xff]);
        h.update(s);
        h.update(&[0xff]);
        h.update(part(&req.spans.first_message));
    }
    h.digest()
}

/// `body` with its `model` replaced by `model` (a fallback step to another model). The bytes
/// around the value are kept as they are; only a model string with escapes in it forces a
/// rewrite of the whole body (`None` if the body is not a JSON object).
pub fn with_model(body: &[u8], req: &MessageRequest, model: &str) -> Option<Vec<u8>> {
    let token = serde_json::to_string(model).ok()?;
    if let Some(r) = req.spans.model.clone()
        && r.end <= body.len()
    {
        let mut out = Vec::with_capacity(body.len() + token.len());
        out.extend_from_slice(&body[..r.start]);
        out.extend_from_slice(token.as_bytes());
        out.extend_from_slice(&body[r.end..]);
        return Some(out);
    }
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    v.insert("model".into(), serde_json::Value::String(model.to_owned()));
    serde_json::to_vec(&v).ok()
}

/// Printable ASCII: what a model id may hold.
fn is_model_byte(b: u8) -> bool {
    (0x20..=0x7e).contains(&b)
}

fn invalid(field: &'static str, reason: &str) -> WireError {
    WireError::InvalidField {
        field,
        reason: reason.to_owned(),
    }
}

fn invalid_kind(field: &'static str, reason: &str, got: &Val<'_>) -> WireError {
    WireError::InvalidField {
        field,
        reason: format!("{reason}, not {}", got.describe()),
    }
}

/// The top-level value: only whether it is an object matters, and then only three of its keys.
enum Top<'a> {
    Object(Fields<'a>),
    Other,
}

#[derive(Default)]
struct Fields<'a> {
    model: Option<Val<'a>>,
    max_tokens: Option<Val<'a>>,
    stream: Option<Val<'a>>,
    tools: Option<&'a RawValue>,
    system: Option<&'a RawValue>,
    first_message: Option<&'a RawValue>,
    cache_control: bool,
    /// The first policy field seen twice.
    duplicate: Option<&'static str>,
}

/// A policy field's value, classified but never rejected during the parse: type errors are
/// reported only once the whole body is known to be JSON, so a syntax error always wins.
enum Val<'a> {
    Null,
    Bool(bool),
    UInt(u64),
    /// A negative integer.
    Int,
    /// A number with a fraction or exponent, or an integer beyond `u64`.
    Float,
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Val<'_> {
    fn describe(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::UInt(_) | Val::Int | Val::Float => "a number",
            Val::Str(_) => "a string",
            Val::Array => "an array",
            Val::Object => "an object",
        }
    }
}

enum Key {
    Model,
    MaxTokens,
    Stream,
    Tools,
    System,
    Messages,
    CacheControl,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            // Keys arrive unescaped, so `"mod\u0065l"` is `model` here as it is upstream.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "model" => Key::Model,
                    "max_tokens" => Key::MaxTokens,
                    "stream" => Key::Stream,
                    "tools" => Key::Tools,
                    "system" => Key::System,
                    "messages" => Key::Messages,
                    "cache_control" => Key::CacheControl,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Val<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Val<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Val<'a>, E> {
                Ok(Val::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Val<'a>, E> {
                Ok(Val::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Val<'a>, E> {
                Ok(Val::Bool(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Val<'a>, E> {
                Ok(Val::UInt(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Val<'a>, E> {
                Ok(u64::try_from(v).map_or(Val::Int, Val::UInt))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Val<'a>, E> {
                Ok(Val::Float)
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Val<'a>, E> {
                Ok(Val::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Val<'a>, E> {
                Ok(Val::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'a>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Val::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'a>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Val::Object)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// The first element of an array, raw; anything else has none.
struct FirstElement<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstElement<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = FirstElement<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<&'a RawValue>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstElement(first))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(FirstElement(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FirstElement(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(FirstElement(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(FirstElement(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(FirstElement(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(FirstElement(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(FirstElement(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Top<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Top<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'a>, A::Error> {
                let mut f = Fields::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let (slot, name) = match key {
                        Key::Model => (&mut f.model, "model"),
                        Key::MaxTokens => (&mut f.max_tokens, "max_tokens"),
                        Key::Stream => (&mut f.stream, "stream"),
                        // Where these are is routing's business; the upstream judges them.
                        Key::Tools => {
                            f.tools = Some(map.next_value::<&'a RawValue>()?);
                            continue;
                        }
                        Key::System => {
                            f.system = Some(map.next_value::<&'a RawValue>()?);
                            continue;
                        }
                        Key::Messages => {
                            f.first_message = map.next_value::<FirstElement<'a>>()?.0;
                            continue;
                        }
                        Key::CacheControl => {
                            f.cache_control = !matches!(map.next_value::<Val<'a>>()?, Val::Null);
                            continue;
                        }
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    let value = map.next_value::<Val<'a>>()?;
                    if slot.is_some() {
                        f.duplicate.get_or_insert(name);
                    } else {
                        *slot = Some(value);
                    }
                }
                Ok(Top::Object(f))
            }
            // Arrays are drained rather than refused early so that a broken array is still
            // reported as malformed JSON, not as "not an object".
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top<'a>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Top::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Top<'a>, E> {
                Ok(Top::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Top<'a>, E> {
                Ok(Top::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Top<'a>, E> {
                Ok(Top::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Top<'a>, E> {
                Ok(Top::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top<'a>, E> {
                Ok(Top::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Top<'a>, E> {
                Ok(Top::Other)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ok(body: &str) -> MessageRequest {
        parse_message_request(body.as_bytes()).unwrap()
    }

    fn err(body: &[u8]) -> WireError {
        parse_message_request(body).unwrap_err()
    }

    fn field(name: &'static str, reason: &str) -> WireError {
        WireError::InvalidField {
            field: name,
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn reads_the_three_fields_and_skips_everything_else() {
        let r = ok(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi \"model\": x"}]}],
                       "model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,
                       "metadata":{"model":"other","stream":false},"tools":[],"temperature":0.5}"#,
        );
        assert_eq!(
            r,
            MessageRequest {
                model: "claude-sonnet-4-5".into(),
                max_tokens: Some(1024),
                stream: true,
                spans: r.spans.clone(),
            }
        );
    }

    #[test]
    fn optional_fields_default() {
        let r = ok(r#" {"model":"m"} "#);
        assert_eq!((r.max_tokens, r.stream), (None, false));
        let r = ok(r#"{"model":"m","max_tokens":null,"stream":null}"#);
        assert_eq!((r.max_tokens, r.stream), (None, false));
        let r = ok(r#"{"model":"m","max_tokens":0,"stream":false}"#);
        assert_eq!((r.max_tokens, r.stream), (Some(0), false));
        let r = ok(&format!(r#"{{"model":"m","max_tokens":{}}}"#, u64::MAX));
        assert_eq!(r.max_tokens, Some(u64::MAX));
    }

    #[test]
    fn escaped_keys_and_values_are_decoded() {
        let r = ok(r#"{"mod\u0065l":"claude-\u0068aiku","str\u0065am":true}"#);
        assert_eq!(r.model, "claude-haiku");
        assert!(r.stream);
    }

    #[test]
    fn syntax_errors_are_malformed_json() {
        for body in [
            &b""[..],
            b"   ",
            b"{",
            b"{\"model\":\"m\"",
            b"{\"model\":\"m\",}",
            b"{\"model\":\"m\"} x",
            b"{\"model\":\"m\"}{}",
            b"{'model':'m'}",
            b"[1,2",
            b"nul",
            b"{\"model\":\"m\",\"x\":\"\xff\"}",
            b"{\"model\":\"m\",\"x\":\"a\x01b\"}",
            // A syntax error after a wrongly typed field still reports the syntax error.
            b"{\"max_tokens\":\"ten\",",
        ] {
            assert!(
                matches!(err(body), WireError::MalformedJson(_)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let WireError::MalformedJson(msg) = err(b"{\"model\":") else {
            unreachable!()
        };
        assert!(msg.contains("line 1 column"), "{msg}");
        let WireError::MalformedJson(msg) = err(b"{\"model\":\"\xc3\"}") else {
            unreachable!()
        };
        assert_eq!(msg, "invalid UTF-8 at byte 10");
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion() {
        // serde_json skips ignored values with a loop, not recursion, so depth costs no stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let body = format!(r#"{{"model":"m","x":{deep}}}"#);
        assert_eq!(ok(&body).model, "m");
        let body = format!(r#"{{"model":{deep}}}"#);
        assert_eq!(
            err(body.as_bytes()),
            field("model", "must be a string, not an array")
        );
        assert_eq!(err(deep.as_bytes()), WireError::NotAnObject);
        let broken = format!(r#"{{"model":"m","x":{}}}"#, "[".repeat(100_000));
        assert!(matches!(
            err(broken.as_bytes()),
            WireError::MalformedJson(_)
        ));
    }

    #[test]
    fn skipped_values_are_checked_for_syntax_only() {
        // Valid by the JSON grammar but not representable in serde_json's `Value`: skipped values
        // are not built, so they pass (the upstream decides what it makes of them).
        assert_eq!(ok(r#"{"model":"m","temperature":1e400}"#).model, "m");
        assert_eq!(ok(r#"{"model":"m","system":"\ud800"}"#).model, "m");
        // In a field that is read they are refused, as JSON serde_json cannot represent.
        assert!(matches!(
            err(br#"{"model":"m","max_tokens":1e400}"#),
            WireError::MalformedJson(m) if m.contains("number out of range")
        ));
        assert!(matches!(
            err(br#"{"model":"\ud800"}"#),
            WireError::MalformedJson(_)
        ));
    }

    #[test]
    fn other_json_values_are_not_objects() {
        for body in [
            "[]",
            "[{\"model\":\"m\"}]",
            "null",
            "true",
            "1",
            "-1.5e3",
            "\"model\"",
        ] {
            assert_eq!(err(body.as_bytes()), WireError::NotAnObject, "{body}");
        }
    }

    #[test]
    fn model_must_be_present_non_null_non_empty_string() {
        assert_eq!(err(b"{}"), WireError::MissingModel);
        assert_eq!(
            err(br#"{"model":null,"max_tokens":"x"}"#),
            WireError::MissingModel
        );
        assert_eq!(err(br#"{"model":""}"#), field("model", "must not be empty"));
        // Bounded: a model id keys per-model state, so junk of any length or bytes is refused.
        let at_limit = "m".repeat(MAX_MODEL_LEN);
        assert_eq!(ok(&format!(r#"{{"model":"{at_limit}"}}"#)).model, at_limit);
        assert_eq!(
            err(format!(r#"{{"model":"{at_limit}x"}}"#).as_bytes()),
            field("model", "must be at most 256 bytes")
        );
        // Measured after unescaping: six bytes of `\u0041` are one byte of model.
        let escaped = "\\u0041".repeat(MAX_MODEL_LEN);
        assert_eq!(
            ok(&format!(r#"{{"model":"{escaped}"}}"#)).model.len(),
            MAX_MODEL_LEN
        );
        for junk in [
            r#""a\nb""#,
            r#""a\u0000""#,
            r#""caf\u00e9""#,
            "\"café\"",
            r#""\u007f""#,
        ] {
            assert_eq!(
                err(format!(r#"{{"model":{junk}}}"#).as_bytes()),
                field("model", "must be printable ASCII"),
                "{junk}"
            );
        }
        assert_eq!(ok(r#"{"model":"claude 4 ~ x"}"#).model, "claude 4 ~ x");
        assert_eq!(
            err(br#"{"model":42}"#),
            field("model", "must be a string, not a number")
        );
        assert_eq!(
            err(br#"{"model":["m"]}"#),
            field("model", "must be a string, not an array")
        );
        assert_eq!(
            err(br#"{"model":{"id":"m"}}"#),
            field("model", "must be a string, not an object")
        );
    }

    #[test]
    fn max_tokens_must_be_a_non_negative_integer() {
        for (v, got) in [
            ("\"ten\"", "a string"),
            ("-1", "a number"),
            ("10.0", "a number"),
            ("1e3", "a number"),
            ("18446744073709551616", "a number"),
            ("true", "a boolean"),
            ("[10]", "an array"),
        ] {
            let body = format!(r#"{{"model":"m","max_tokens":{v}}}"#);
            assert_eq!(
                err(body.as_bytes()),
                field(
                    "max_tokens",
                    &format!("must be a non-negative integer, not {got}")
                ),
                "{v}"
            );
        }
    }

    #[test]
    fn stream_must_be_a_boolean() {
        for (v, got) in [
            ("\"true\"", "a string"),
            ("1", "a number"),
            ("{}", "an object"),
        ] {
            let body = format!(r#"{{"model":"m","stream":{v}}}"#);
            assert_eq!(
                err(body.as_bytes()),
                field("stream", &format!("must be a boolean, not {got}")),
                "{v}"
            );
        }
    }

    #[test]
    fn repeated_policy_fields_are_refused() {
        assert_eq!(
            err(br#"{"model":"allowed","model":"forbidden"}"#),
            field("model", "must not be repeated")
        );
        assert_eq!(
            err(br#"{"model":"m","str\u0065am":false,"stream":true}"#),
            field("stream", "must not be repeated")
        );
        assert_eq!(
            err(br#"{"max_tokens":1,"model":"m","max_tokens":1}"#),
            field("max_tokens", "must not be repeated")
        );
        // Other keys may repeat; they are the upstream's business.
        assert_eq!(ok(r#"{"model":"m","x":1,"x":2}"#).model, "m");
    }

    #[test]
    fn errors_display_like_the_upstream() {
        assert_eq!(err(b"{}").to_string(), "model: field required");
        assert_eq!(
            err(br#"{"model":""}"#).to_string(),
            "model: must not be empty"
        );
    }

    fn key(body: &str) -> Option<u64> {
        cache_affinity_key(body.as_bytes(), &ok(body))
    }

    #[test]
    fn spans_point_at_the_raw_parts() {
        let body = r#"{"model" : "claude-x","system":[{"type":"text","text":"S"}],
            "tools":[{"name":"t"}],"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#;
        let r = ok(body);
        let at = |s: &Option<Range<usize>>| &body[s.clone().unwrap()];
        assert_eq!(at(&r.spans.model), r#""claude-x""#);
        assert_eq!(at(&r.spans.system), r#"[{"type":"text","text":"S"}]"#);
        assert_eq!(at(&r.spans.tools), r#"[{"name":"t"}]"#);
        assert_eq!(
            at(&r.spans.first_message),
            r#"{"role":"user","content":"a"}"#
        );
        assert!(!r.spans.cache_control);
        // An escaped model has no span to splice.
        assert_eq!(ok(r#"{"model":"claude\u002dx"}"#).spans.model, None);
        assert!(
            ok(r#"{"model":"m","cache_control":{"type":"ephemeral"}}"#)
                .spans
                .cache_control
        );
    }

    #[test]
    fn affinity_follows_the_cached_prefix_only() {
        let sys = |tail: &str, msg: &str| {
            format!(
                r#"{{"model":"m","max_tokens":5,"system":[{{"type":"text","text":"long shared prompt","cache_control":{{"type":"ephemeral"}}}},{{"type":"text","text":"{tail}"}}],"messages":[{{"role":"user","content":"{msg}"}}]}}"#
            )
        };
        // What follows the last breakpoint, and the conversation, do not move the key.
        assert_eq!(key(&sys("a", "x")), key(&sys("b", "y")));
        assert!(key(&sys("a", "x")).is_some());
        // Another model or another prompt does.
        assert_ne!(
            key(&sys("a", "x")),
            key(&sys("a", "x").replace(r#""m""#, r#""n""#))
        );
        assert_ne!(
            key(&sys("a", "x")),
            key(&sys("a", "x").replace("long shared", "other"))
        );
        // Breakpoints only in messages: one key per conversation (its first message).
        let conv = |first: &str, last: &str| {
            format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"{first}"}},{{"role":"user","content":[{{"type":"text","text":"{last}","cache_control":{{"type":"ephemeral"}}}}]}}]}}"#
            )
        };
        assert_eq!(key(&conv("hello", "1")), key(&conv("hello", "2")));
        assert_ne!(key(&conv("hello", "1")), key(&conv("bye", "1")));
        // No breakpoint: nothing cached, no key.
        assert_eq!(key(r#"{"model":"m","system":"s","messages":[]}"#), None);
        // Automatic caching counts as a breakpoint.
        assert!(
            key(r#"{"model":"m","cache_control":{"type":"ephemeral"},"messages":[]}"#).is_some()
        );
    }

    #[test]
    fn planned_affinity_shares_the_system_prompt_or_keeps_one_conversation() {
        let body = |sys: &str, first: &str, last: &str| {
            format!(
                r#"{{"model":"m","system":"{sys}","messages":[{{"role":"user","content":"{first}"}},{{"role":"user","content":"{last}"}}]}}"#
            )
        };
        let k = |b: &str, tools, system| planned_affinity_key(b.as_bytes(), &ok(b), tools, system);
        // A system breakpoint: every conversation on that prompt goes to one member.
        assert_eq!(
            k(&body("s", "a", "x"), true, true),
            k(&body("s", "b", "y"), true, true)
        );
        assert_ne!(
            k(&body("s", "a", "x"), true, true),
            k(&body("t", "a", "x"), true, true)
        );
        // The tail only: one key per conversation, whatever its later turns.
        assert_eq!(
            k(&body("s", "a", "x"), false, false),
            k(&body("s", "a", "y"), false, false)
        );
        assert_ne!(
            k(&body("s", "a", "x"), false, false),
            k(&body("s", "b", "x"), false, false)
        );
        // Another model moves every key.
        let other = body("s", "a", "x").replace(r#""m""#, r#""n""#);
        assert_ne!(k(&body("s", "a", "x"), true, true), k(&other, true, true));
    }

    #[test]
    fn affinity_key_is_xxh3_64_of_a_fixed_layout() {
        // Published XXH3-64 vectors (seed 0): a dependency bump or a hasher swap that changes
        // the algorithm fails here, before two replicas disagree in production.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        // The layout: model, 0xff, then the system prefix before its last breakpoint.
        let body = r#"{"model":"m","system":[{"type":"text","text":"s","cache_control":{"type":"ephemeral"}}]}"#;
        let sys = r#"[{"type":"text","text":"s","#;
        let mut bytes = b"m\xff".to_vec();
        bytes.extend_from_slice(b"\xff");
        bytes.extend_from_slice(sys.as_bytes());
        let want = xxhash_rust::xxh3::xxh3_64(&bytes);
        assert_eq!(key(body), Some(want));
        assert_eq!(key(body), Some(0x1086_3dab_bba9_18e6));
    }

    #[test]
    fn with_model_splices_only_the_model() {
        let body = r#"{ "max_tokens": 5, "model":  "claude-a" ,"messages":[]}"#;
        let out = with_model(body.as_bytes(), &ok(body), "claude-b").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "max_tokens": 5, "model":  "claude-b" ,"messages":[]}"#
        );
        let escaped = r#"{"model":"claude\u002da","messages":[]}"#;
        let out = with_model(escaped.as_bytes(), &ok(escaped), "claude-b").unwrap();
        assert_eq!(ok(std::str::from_utf8(&out).unwrap()).model, "claude-b");
    }
}
