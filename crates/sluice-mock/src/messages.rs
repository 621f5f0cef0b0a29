//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: validation, the usage model
//! (input ≈ bytes/4, split into uncached, cache-written and cache-read tokens by the prompt-cache
//! model of [`crate::prompt_cache`], output derived from the request and capped by `max_tokens`,
//! one word of about 4 bytes per output token) and the JSON / SSE renderings.

use std::borrow::Cow;
use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};

use crate::prompt_cache;
use crate::state::State;
use crate::wire::{push_json_str, push_u64};

/// A JSON string that borrows from the body when it holds no escapes (the usual case), so the
/// hot path does not allocate for the model name. (`Option<Cow<str>>` alone always allocates.)
#[derive(Debug)]
pub(crate) struct JsonStr<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = JsonStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The few fields of a Messages request the mock looks at; the rest is skipped unparsed.
#[derive(Debug, Deserialize)]
pub(crate) struct MessagesRequest<'a> {
    #[serde(borrow, default)]
    pub(crate) model: Option<JsonStr<'a>>,
    #[serde(default)]
    pub(crate) max_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) messages: Option<IgnoredAny>,
    #[serde(default)]
    pub(crate) stream: Option<bool>,
}

/// A request that passed validation.
#[derive(Debug)]
pub(crate) struct Validated<'a> {
    pub(crate) model: Cow<'a, str>,
    pub(crate) max_tokens: u64,
    pub(crate) stream: bool,
}

/// Parses and validates a Messages body; `Err` is the `invalid_request_error` message.
pub(crate) fn validate(body: &[u8], need_max_tokens: bool) -> Result<Validated<'_>, String> {
    let req: MessagesRequest<'_> =
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
    let model = req.model.ok_or("model: field required")?.0;
    let max_tokens = match req.max_tokens {
        Some(0) => return Err("max_tokens: must be greater than 0".into()),
        Some(n) => n,
        None if need_max_tokens => return Err("max_tokens: field required".into()),
        None => 0,
    };
    if req.messages.is_none() {
        return Err("messages: field required".into());
    }
    Ok(Validated {
        model,
        max_tokens,
        stream: req.stream.unwrap_or(false),
    })
}

/// The usage numbers of one reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) input: u64,
    pub(crate) cache_creation_5m: u64,
    pub(crate) cache_creation_1h: u64,
    pub(crate) cache_read: u64,
    pub(crate) output: u64,
}

impl Usage {
    fn cache_creation(&self) -> u64 {
        self.cache_creation_5m + self.cache_creation_1h
    }
}

/// The input estimate every endpoint uses: a quarter of the body bytes, at least 1.
pub(crate) fn input_estimate(body: &[u8]) -> u64 {
    (body.len() as u64 / 4).max(1)
}

/// Splits the input estimate into uncached, cache-written and cache-read tokens, with the
/// prompt-cache model of [`crate::prompt_cache`]; `Err` is the upstream's 400 message (too many
/// breakpoints, TTLs out of order).
///
/// The cache is per `scope`: the upstream's prompt cache belongs to one organisation (one key,
/// one cloud account), so a prefix cached under one key is a miss under another. Cache-affinity
/// routing is measured against exactly this.
pub(crate) fn input_usage(
    state: &State,
    scope: &str,
    body: &[u8],
    model: &str,
) -> Result<Usage, String> {
    input_usage_at(state, scope, body, model, Instant::now())
}

/// [`input_usage`] at time `now`, so tests can let entries expire.
pub(crate) fn input_usage_at(
    state: &State,
    scope: &str,
    body: &[u8],
    model: &str,
    now: Instant,
) -> Result<Usage, String> {
    let total = input_estimate(body);
    let Some(plan) = prompt_cache::plan(body)? else {
        return Ok(Usage {
            input: total,
            ..Usage::default()
        });
    };
    let min_tokens = state
        .opts
        .cache_min_tokens
        .unwrap_or_else(|| prompt_cache::min_tokens(model));
    let cache = state
        .prompt_cache
        .apply(scope, model, &plan, min_tokens, now);
    let cached = cache.read + cache.creation_5m + cache.creation_1h;
    Ok(Usage {
        input: total.saturating_sub(cached).max(1),
        cache_creation_5m: cache.creation_5m,
        cache_creation_1h: cache.creation_1h,
        cache_read: cache.read,
        output: 0,
    })
}

/// Output tokens: the override, or derived from the body; capped by `max_tokens`. The bool is
/// true when the cap applied (`stop_reason: "max_tokens"`).
pub(crate) fn output_tokens(fixed: Option<u64>, body_len: usize, max_tokens: u64) -> (u64, bool) {
    let wanted = fixed.unwrap_or(10 + body_len as u64 % 40);
    if wanted > max_tokens {
        (max_tokens, true)
    } else {
        (wanted, false)
    }
}

/// The output text, one word per output token. Each word is one token of a real tokenizer
/// (short, common, no punctuation), and with its space the cycle averages 4.0 bytes per token,
/// the rate of English prose: so the gateway's output estimate from content (4 bytes per text
/// token) can be checked against this count at any cut point.
const WORDS: [&str; 16] = [
    "yes", "here", "is", "a", "bit", "from", "the", "mock", "one", "word", "per", "unit", "as",
    "you", "see", "it",
];

/// Words per `text_delta` event.
const WORDS_PER_DELTA: u64 = 5;

/// Appends the text of output words `[from, to)`, one word per output token.
fn push_words(buf: &mut String, from: u64, to: u64) {
    for i in from..to {
        if i > 0 {
            buf.push(' ');
        }
        // `i % 16` is below 16, so the index is in range.
        buf.push_str(WORDS[(i % WORDS.len() as u64) as usize]);
    }
}

/// Writes a usage object; `tier` `None` is the compact form of `message_delta`.
fn push_usage(buf: &mut String, u: &Usage, output: u64, tier: Option<&str>) {
    buf.push_str(r#"{"input_tokens":"#);
    push_u64(buf, u.input);
    buf.push_str(r#","cache_creation_input_tokens":"#);
    push_u64(buf, u.cache_creation());
    buf.push_str(r#","cache_read_input_tokens":"#);
    push_u64(buf, u.cache_read);
    if tier.is_some() {
        buf.push_str(r#","cache_creation":{"ephemeral_5m_input_tokens":"#);
        push_u64(buf, u.cache_creation_5m);
        buf.push_str(r#","ephemeral_1h_input_tokens":"#);
        push_u64(buf, u.cache_creation_1h);
        buf.push('}');
    }
    buf.push_str(r#","output_tokens":"#);
    push_u64(buf, output);
    if let Some(tier) = tier {
        buf.push_str(r#","service_tier":"#);
        push_json_str(buf, tier);
    }
    buf.push('}');
}

fn stop_reason(capped: bool) -> &'static str {
    if capped { "max_tokens" } else { "end_turn" }
}

/// A non-streaming reply, shaped like `message_response.json`.
pub(crate) fn render_message(
    msg_id: u64,
    model: &str,
    usage: &Usage,
    capped: bool,
    service_tier: &str,
) -> String {
    let mut buf = String::with_capacity(400 + model.len() + 8 * usage.output as usize);
    buf.push_str(r#"{"id":"msg_mock_"#);
    push_u64(&mut buf, msg_id);
    buf.push_str(r#"","type":"message","role":"assistant","model":"#);
    push_json_str(&mut buf, model);
    buf.push_str(r#","content":[{"type":"text","text":""#);
    push_words(&mut buf, 0, usage.output);
    buf.push_str(r#""}],"stop_reason":""#);
    buf.push_str(stop_reason(capped));
    buf.push_str(r#"","stop_sequence":null,"usage":"#);
    push_usage(&mut buf, usage, usage.output, Some(service_tier));
    buf.push('}');
    buf
}

/// How a stream is cut short by a fault header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamFault {
    None,
    /// Replace event K+1 (and everything after it) with an `error` event.
    ErrorAfter(usize),
    /// Keep only the first K events (the caller then cuts the connection).
    Truncate(usize),
    /// No events at all.
    Empty,
}

/// The SSE events of a streaming reply, one `Bytes` per event, sliced from a single buffer.
pub(crate) fn render_stream(
    msg_id: u64,
    model: &str,
    usage: &Usage,
    capped: bool,
    fault: StreamFault,
) -> Vec<Bytes> {
    if fault == StreamFault::Empty {
        return Vec::new();
    }
    let deltas = usage.output.div_ceil(WORDS_PER_DELTA).max(1);
    let mut buf = String::with_capacity(900 + model.len() + 130 * deltas as usize);
    let mut ends: Vec<usize> = Vec::with_capacity(deltas as usize + 7);

    buf.push_str(
        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_mock_"#,
    );
    push_u64(&mut buf, msg_id);
    buf.push_str(r#"","type":"message","role":"assistant","model":"#);
    push_json_str(&mut buf, model);
    buf.push_str(r#","content":[],"stop_reason":null,"stop_sequence":null,"usage":"#);
    push_usage(&mut buf, usage, 1, Some("standard"));
    buf.push_str("}}\n\n");
    ends.push(buf.len());

    buf.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    ends.push(buf.len());
    buf.push_str("event: ping\ndata: {\"type\":\"ping\"}\n\n");
    ends.push(buf.len());

    for d in 0..deltas {
        buf.push_str("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"");
        let from = d * WORDS_PER_DELTA;
        let to = (from + WORDS_PER_DELTA).min(usage.output.max(1));
        push_words(&mut buf, from, to);
        buf.push_str("\"}}\n\n");
        ends.push(buf.len());
    }

    buf.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    );
    ends.push(buf.len());
    buf.push_str(
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"",
    );
    buf.push_str(stop_reason(capped));
    buf.push_str("\",\"stop_sequence\":null},\"usage\":");
    push_usage(&mut buf, usage, usage.output, None);
    buf.push_str("}\n\n");
    ends.push(buf.len());
    buf.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    ends.push(buf.len());

    let keep = match fault {
        StreamFault::ErrorAfter(k) => k.min(ends.len() - 1),
        StreamFault::Truncate(k) => k.min(ends.len()),
        StreamFault::None | StreamFault::Empty => ends.len(),
    };
    ends.truncate(keep);
    let mut cut = ends.last().copied().unwrap_or(0);
    buf.truncate(cut);
    if let StreamFault::ErrorAfter(_) = fault {
        buf.push_str("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        cut = buf.len();
        ends.push(cut);
    }
    let all = Bytes::from(buf);
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let chunk = all.slice(start..end);
            start = end;
            chunk
        })
        .collect()
}

/// `{"input_tokens":N}`.
pub(crate) fn render_count(n: u64) -> String {
    let mut buf = String::with_capacity(32);
    buf.push_str(r#"{"input_tokens":"#);
    push_u64(&mut buf, n);
    buf.push('}');
    buf
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn message_json_parses_and_matches_the_fixture_shape() {
        let u = Usage {
            input: 21,
            cache_creation_5m: 1532,
            output: 9,
            ..Usage::default()
        };
        let s = render_message(7, "claude-\"x\"", &u, false, "standard");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["id"], "msg_mock_7");
        assert_eq!(v["model"], "claude-\"x\"");
        assert_eq!(
            v["usage"]["cache_creation"]["ephemeral_5m_input_tokens"],
            1532
        );
        assert_eq!(v["usage"]["service_tier"], "standard");
        assert_eq!(
            v["content"][0]["text"].as_str().unwrap().split(' ').count(),
            9
        );

        let b = render_message(8, "m", &u, true, "batch");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["usage"]["service_tier"], "batch");
        assert_eq!(v["stop_reason"], "max_tokens");
    }

    #[test]
    fn stream_events_are_valid_json_and_faults_cut_them() {
        let u = Usage {
            input: 5,
            output: 12,
            ..Usage::default()
        };
        let events = render_stream(1, "m", &u, false, StreamFault::None);
        assert_eq!(events.len(), 6 + 3);
        for e in &events {
            let s = std::str::from_utf8(e).unwrap();
            let data = s.split("data: ").nth(1).unwrap().trim_end();
            serde_json::from_str::<serde_json::Value>(data).unwrap();
        }
        let err = render_stream(1, "m", &u, false, StreamFault::ErrorAfter(3));
        assert_eq!(err.len(), 4);
        assert!(err[3].starts_with(b"event: error\n"));
        let err = render_stream(1, "m", &u, false, StreamFault::ErrorAfter(100));
        assert_eq!(err.len(), 9);
        assert!(err[8].starts_with(b"event: error\n"));
        assert_eq!(
            render_stream(1, "m", &u, false, StreamFault::Truncate(2)).len(),
            2
        );
        assert!(render_stream(1, "m", &u, false, StreamFault::Empty).is_empty());
    }

    #[test]
    fn validation_messages() {
        assert!(
            validate(b"{", true)
                .unwrap_err()
                .starts_with("invalid request body")
        );
        assert_eq!(
            validate(br#"{"max_tokens":1,"messages":[]}"#, true).unwrap_err(),
            "model: field required"
        );
        assert_eq!(
            validate(br#"{"model":"m","messages":[]}"#, true).unwrap_err(),
            "max_tokens: field required"
        );
        assert_eq!(
            validate(br#"{"model":"m","max_tokens":5}"#, true).unwrap_err(),
            "messages: field required"
        );
        let ok = validate(
            br#"{"model":"m","max_tokens":5,"messages":[],"stream":true}"#,
            true,
        )
        .unwrap();
        assert!(matches!(ok.model, Cow::Borrowed("m")));
        assert!(ok.stream);
        assert!(validate(br#"{"model":"m","messages":[]}"#, false).is_ok());
    }

    #[test]
    fn output_is_capped_by_max_tokens() {
        assert_eq!(output_tokens(Some(50), 0, 20), (20, true));
        assert_eq!(output_tokens(Some(5), 0, 20), (5, false));
        assert_eq!(output_tokens(None, 41, 1000), (11, false));
    }
}
