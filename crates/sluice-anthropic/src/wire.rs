//! Lenient borrowed building blocks shared by the JSON-reply and SSE readers: a usage object that
//! remembers which fields it carried, and string/number readers that never fail on a wrong type.
//!
//! Accounting must survive odd-but-valid JSON from upstream (a `null`, a new shape of a field), so
//! these readers turn a wrong type into "not carried" instead of failing the whole document;
//! only a syntax error makes a document unreadable.

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sluice_core::Usage;
use std::borrow::Cow;
use std::fmt;

/// Drain a sequence the caller does not want, so the deserializer's bracket check still passes.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Drain a map the caller does not want.
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// A JSON value read as a string when it is one, borrowed from the input when it has no escapes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) enum Text<'a> {
    /// The key was not in the object (set by `#[serde(default)]`).
    #[default]
    Absent,
    /// The key was there, holding a string.
    Str(Cow<'a, str>),
    /// The key was there, holding `null` or a non-string.
    NotStr,
}

impl Text<'_> {
    /// The string, if the value was one.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Text::Str(s) => Some(s),
            Text::Absent | Text::NotStr => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text::Str(Cow::Owned(v)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Text<'a>, E> {
                Ok(Text::NotStr)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Text<'a>, E> {
                Ok(Text::NotStr)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Text<'a>, E> {
                Ok(Text::NotStr)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text<'a>, E> {
                Ok(Text::NotStr)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text<'a>, E> {
                Ok(Text::NotStr)
            }
            fn visit_none<E: de::Error>(self) -> Result<Text<'a>, E> {
                Ok(Text::NotStr)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text<'a>, A::Error> {
                drain_seq(seq).map(|()| Text::NotStr)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text<'a>, A::Error> {
                drain_map(map).map(|()| Text::NotStr)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A token count: `Some` only for a non-negative integer that fits in `u64`; anything else
/// (`null`, negative, fractional, a string) reads as "not carried".
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Count(Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                Ok(Count(u64::try_from(v).ok()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Count, A::Error> {
                drain_seq(seq).map(|()| Count(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Count, A::Error> {
                drain_map(map).map(|()| Count(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The keys of a usage object (and of its `cache_creation` object) that accounting reads.
enum UsageKey {
    Input,
    Output,
    CacheCreation,
    CacheRead,
    CacheBreakdown,
    Ephemeral5m,
    Ephemeral1h,
    Other,
}

impl<'de> Deserialize<'de> for UsageKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = UsageKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UsageKey, E> {
                Ok(match v {
                    "input_tokens" => UsageKey::Input,
                    "output_tokens" => UsageKey::Output,
                    "cache_creation_input_tokens" => UsageKey::CacheCreation,
                    "cache_read_input_tokens" => UsageKey::CacheRead,
                    "cache_creation" => UsageKey::CacheBreakdown,
                    "ephemeral_5m_input_tokens" => UsageKey::Ephemeral5m,
                    "ephemeral_1h_input_tokens" => UsageKey::Ephemeral1h,
                    _ => UsageKey::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// `usage.cache_creation`: `Some((5m, 1h))` when it is an object, `None` otherwise.
struct Breakdown(Option<(Option<u64>, Option<u64>)>);

impl<'de> Deserialize<'de> for Breakdown {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Breakdown;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Breakdown, A::Error> {
                let (mut m5, mut h1) = (None, None);
                while let Some(key) = map.next_key::<UsageKey>()? {
                    match key {
                        UsageKey::Ephemeral5m => m5 = map.next_value::<Count>()?.0.or(m5),
                        UsageKey::Ephemeral1h => h1 = map.next_value::<Count>()?.0.or(h1),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Breakdown(Some((m5, h1))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Breakdown, E> {
                Ok(Breakdown(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Breakdown, E> {
                Ok(Breakdown(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Breakdown, E> {
                Ok(Breakdown(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Breakdown, E> {
                Ok(Breakdown(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Breakdown, E> {
                Ok(Breakdown(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Breakdown, E> {
                Ok(Breakdown(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Breakdown, E> {
                Ok(Breakdown(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Breakdown, A::Error> {
                drain_seq(seq).map(|()| Breakdown(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A usage object as carried on the wire: `None` means the field was not carried (absent, `null`
/// or not a count), which matters for `message_delta`, whose fields override only when carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireUsage {
    input: Option<u64>,
    output: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    ephemeral_5m: Option<u64>,
    ephemeral_1h: Option<u64>,
    /// A `cache_creation` object was carried, so the TTL split is known rather than assumed.
    breakdown: bool,
}

impl WireUsage {
    /// Whether `output_tokens` was carried.
    pub(crate) fn carries_output(&self) -> bool {
        self.output.is_some()
    }

    /// Apply a later usage object on top of this one: every field it carries wins.
    ///
    /// This is the SDKs' own accumulation rule for `message_delta` (`if (usage.x != null)`).
    pub(crate) fn merge(&mut self, newer: &WireUsage) {
        fn over(old: &mut Option<u64>, new: Option<u64>) {
            if new.is_some() {
                *old = new;
            }
        }
        over(&mut self.input, newer.input);
        over(&mut self.output, newer.output);
        over(&mut self.cache_creation, newer.cache_creation);
        over(&mut self.cache_read, newer.cache_read);
        over(&mut self.ephemeral_5m, newer.ephemeral_5m);
        over(&mut self.ephemeral_1h, newer.ephemeral_1h);
        self.breakdown |= newer.breakdown;
    }

    /// The ledger's view: absent counts are 0 and cache writes are split by TTL.
    ///
    /// Without a `cache_creation` object every cache write is at the 5-minute TTL, the API's
    /// default. With one, any part of `cache_creation_input_tokens` the split does not explain is
    /// also counted at 5 minutes, so the two TTL buckets never sum to less than the total; when
    /// only the split is carried, the total is its sum.
    pub(crate) fn to_usage(self) -> Usage {
        let m5 = self.ephemeral_5m.unwrap_or(0);
        let h1 = self.ephemeral_1h.unwrap_or(0);
        let split = m5.saturating_add(h1);
        let total = match (self.cache_creation, self.breakdown) {
            (Some(t), _) => t,
            (None, true) => split,
            (None, false) => 0,
        };
        let (five, hour) = if self.breakdown {
            (m5.saturating_add(total.saturating_sub(split)), h1)
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

impl<'de> Deserialize<'de> for WireUsage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireUsage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireUsage, A::Error> {
                let mut u = WireUsage::default();
                while let Some(key) = map.next_key::<UsageKey>()? {
                    // A repeated key overrides only when it carries a count, like a later event.
                    match key {
                        UsageKey::Input => u.input = map.next_value::<Count>()?.0.or(u.input),
                        UsageKey::Output => u.output = map.next_value::<Count>()?.0.or(u.output),
                        UsageKey::CacheCreation => {
                            u.cache_creation = map.next_value::<Count>()?.0.or(u.cache_creation);
                        }
                        UsageKey::CacheRead => {
                            u.cache_read = map.next_value::<Count>()?.0.or(u.cache_read);
                        }
                        UsageKey::CacheBreakdown => {
                            if let Breakdown(Some((m5, h1))) = map.next_value()? {
                                u.breakdown = true;
                                u.ephemeral_5m = m5.or(u.ephemeral_5m);
                                u.ephemeral_1h = h1.or(u.ephemeral_1h);
                            }
                        }
                        UsageKey::Ephemeral5m | UsageKey::Ephemeral1h | UsageKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(u)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<WireUsage, E> {
                Ok(WireUsage::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<WireUsage, E> {
                Ok(WireUsage::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<WireUsage, E> {
                Ok(WireUsage::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<WireUsage, E> {
                Ok(WireUsage::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<WireUsage, E> {
                Ok(WireUsage::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<WireUsage, E> {
                Ok(WireUsage::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<WireUsage, E> {
                Ok(WireUsage::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<WireUsage, A::Error> {
                drain_seq(seq).map(|()| WireUsage::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether `body` holds a JSON object at top level (serde's struct support also accepts arrays,
/// which are never a reply or an event we understand).
pub(crate) fn starts_as_object(body: &[u8]) -> bool {
    body.trim_ascii_start().first() == Some(&b'{')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn usage(json: &str) -> WireUsage {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn absent_split_counts_every_cache_write_at_five_minutes() {
        let u = usage(r#"{"input_tokens":1,"cache_creation_input_tokens":300}"#).to_usage();
        assert_eq!(u.cache_creation_input_tokens, 300);
        assert_eq!(u.cache_creation_5m_input_tokens, 300);
        assert_eq!(u.cache_creation_1h_input_tokens, 0);
    }

    #[test]
    fn split_is_taken_as_carried_and_unexplained_rest_is_five_minutes() {
        let u = usage(
            r#"{"cache_creation_input_tokens":300,
                "cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":150}}"#,
        )
        .to_usage();
        assert_eq!(
            (
                u.cache_creation_5m_input_tokens,
                u.cache_creation_1h_input_tokens
            ),
            (150, 150)
        );
        let only_split = usage(r#"{"cache_creation":{"ephemeral_1h_input_tokens":40}}"#).to_usage();
        assert_eq!(only_split.cache_creation_input_tokens, 40);
        assert_eq!(only_split.cache_creation_1h_input_tokens, 40);
        assert_eq!(only_split.cache_creation_5m_input_tokens, 0);
    }

    #[test]
    fn wrong_types_and_nulls_read_as_not_carried() {
        let u = usage(
            r#"{"input_tokens":null,"output_tokens":-3,"cache_read_input_tokens":1.5,
                "cache_creation_input_tokens":"9","cache_creation":[1,2],"extra":{"a":[{}]}}"#,
        );
        assert_eq!(u, WireUsage::default());
        assert_eq!(usage("null"), WireUsage::default());
        assert_eq!(usage("[1,{}]"), WireUsage::default());
    }

    #[test]
    fn merge_overrides_only_carried_fields() {
        let mut start = usage(
            r#"{"input_tokens":472,"cache_read_input_tokens":10,"output_tokens":2,
                "cache_creation":{"ephemeral_5m_input_tokens":5,"ephemeral_1h_input_tokens":7}}"#,
        );
        start.merge(&usage(
            r#"{"output_tokens":89,"input_tokens":null,"cache_creation":{"ephemeral_1h_input_tokens":9}}"#,
        ));
        let u = start.to_usage();
        assert_eq!(u.input_tokens, 472);
        assert_eq!(u.output_tokens, 89);
        assert_eq!(u.cache_read_input_tokens, 10);
        assert_eq!(
            (
                u.cache_creation_5m_input_tokens,
                u.cache_creation_1h_input_tokens
            ),
            (5, 9)
        );
        assert_eq!(u.cache_creation_input_tokens, 14);
    }

    #[test]
    fn text_borrows_when_unescaped() {
        let t: Text<'_> = serde_json::from_str(r#""abc""#).unwrap();
        assert!(matches!(t, Text::Str(Cow::Borrowed("abc"))));
        let t: Text<'_> = serde_json::from_str(r#""a\nc""#).unwrap();
        assert_eq!(t.as_str(), Some("a\nc"));
        let t: Text<'_> = serde_json::from_str("[1]").unwrap();
        assert_eq!(t, Text::NotStr);
    }
}
