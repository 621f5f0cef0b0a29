//! Usage extraction from a non-streaming Messages reply.

use crate::wire::{Text, WireUsage, starts_as_object};
use serde::Deserialize;
use sluice_core::Usage;

/// What the ledger needs from a JSON reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageSummary {
    /// `id` of the message.
    pub id: Option<String>,
    /// `model` actually served.
    pub model: Option<String>,
    /// `stop_reason`.
    pub stop_reason: Option<String>,
    /// `usage`, with absent fields as 0.
    pub usage: Usage,
}

/// Read the summary of a JSON Messages reply; `None` if the body is not a message object.
///
/// `None` when the body is not a JSON object (syntax error, trailing bytes, another JSON type) or
/// its `type` is present and is anything but `"message"` (an error body, a batch object). A
/// field of an unexpected type reads as absent rather than failing the reply, so a reply is
/// still accounted when the upstream adds or reshapes fields: `id`, `model`, `stop_reason` are
/// `None` unless strings; counts are 0 unless non-negative integers. Cache writes without a
/// `usage.cache_creation` split are counted at the 5-minute TTL, the API default.
pub fn parse_message_response(body: &[u8]) -> Option<MessageSummary> {
    if !starts_as_object(body) {
        return None;
    }
    let reply: Reply<'_> = serde_json::from_slice(body).ok()?;
    match reply.kind {
        Text::Absent => {}
        Text::Str(ref t) if t == "message" => {}
        Text::Str(_) | Text::NotStr => return None,
    }
    let owned = |t: &Text<'_>| t.as_str().map(str::to_owned);
    Some(MessageSummary {
        id: owned(&reply.id),
        model: owned(&reply.model),
        stop_reason: owned(&reply.stop_reason),
        usage: reply.usage.unwrap_or_default().to_usage(),
    })
}

/// The part of a reply the ledger reads; every other key is skipped by the tokenizer.
#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Text<'a>,
    #[serde(borrow, default)]
    id: Text<'a>,
    #[serde(borrow, default)]
    model: Text<'a>,
    #[serde(borrow, default)]
    stop_reason: Text<'a>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn reads_a_reply_with_a_cache_split() {
        let s = parse_message_response(
            br#"{"id":"msg_1","type":"message","model":"m","content":[{"type":"text","text":"x"}],
                "stop_reason":"end_turn","usage":{"input_tokens":21,"cache_creation_input_tokens":1532,
                "cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":1000,
                "ephemeral_1h_input_tokens":532},"output_tokens":9}}"#,
        )
        .unwrap();
        assert_eq!(s.id.as_deref(), Some("msg_1"));
        assert_eq!(s.model.as_deref(), Some("m"));
        assert_eq!(s.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(
            s.usage,
            Usage {
                input_tokens: 21,
                output_tokens: 9,
                cache_creation_input_tokens: 1532,
                cache_creation_5m_input_tokens: 1000,
                cache_creation_1h_input_tokens: 532,
                cache_read_input_tokens: 0,
            }
        );
    }

    #[test]
    fn missing_split_means_five_minutes_and_nulls_mean_zero() {
        let s = parse_message_response(
            br#"{"type":"message","stop_reason":null,"usage":{"input_tokens":5,"output_tokens":null,
                "cache_creation_input_tokens":40,"cache_creation":null}}"#,
        )
        .unwrap();
        assert_eq!(s.stop_reason, None);
        assert_eq!(s.usage.output_tokens, 0);
        assert_eq!(s.usage.cache_creation_5m_input_tokens, 40);
        assert_eq!(s.usage.cache_creation_1h_input_tokens, 0);
    }

    #[test]
    fn type_may_be_absent_but_not_something_else() {
        assert!(parse_message_response(br#"{"id":"x","usage":{"output_tokens":3}}"#).is_some());
        assert_eq!(
            parse_message_response(br#"{}"#),
            Some(MessageSummary::default())
        );
        for body in [
            &br#"{"type":"error","error":{"type":"api_error","message":"x"}}"#[..],
            br#"{"type":"message_batch","id":"b"}"#,
            br#"{"type":null}"#,
            br#"{"type":1}"#,
        ] {
            assert_eq!(parse_message_response(body), None);
        }
    }

    #[test]
    fn non_objects_and_broken_json_are_none() {
        for body in [
            &b""[..],
            b"[]",
            b"[\"message\"]",
            b"null",
            b"\"message\"",
            b"{\"type\":\"message\"",
            b"{\"type\":\"message\"} x",
            b"{\"type\":\"message\",\"id\":\"\xff\"}",
        ] {
            assert_eq!(parse_message_response(body), None);
        }
    }

    #[test]
    fn odd_field_types_read_as_absent() {
        let s = parse_message_response(
            br#"{"type":"message","id":7,"model":["m"],"stop_reason":{},"usage":{"input_tokens":"3","output_tokens":2.0,"cache_read_input_tokens":4}}"#,
        )
        .unwrap();
        assert_eq!((s.id, s.model, s.stop_reason), (None, None, None));
        assert_eq!(
            s.usage,
            Usage {
                cache_read_input_tokens: 4,
                ..Usage::default()
            }
        );
        let s = parse_message_response(br#"{"type":"message","usage":"lots"}"#).unwrap();
        assert_eq!(s.usage, Usage::default());
    }
}
