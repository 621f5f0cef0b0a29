//! The output estimate of a stream that ends before its final usage: the content of its
//! `content_block_delta` events, counted as the bytes pass and turned into tokens by class.
//!
//! The upstream reports a stream's output tokens only in its last `message_delta`. A stream cut
//! before that (the client went away, the upstream connection broke or stalled) has been billed
//! upstream for what was generated, and the content deltas already seen are the best evidence of
//! how much that was. The counter reads the string value of `text` and `thinking` (prose and
//! code), `partial_json` (tool input) and `signature` (base64) in the event's JSON, decoding
//! escapes, without copying or allocating: it is a small state machine over the data lines as the
//! tap meets them. Every other string (`type`, keys, citations) is not content and not counted.
//!
//! # Rates
//!
//! | class | bytes per token | why |
//! |---|---|---|
//! | text, thinking | 4.0 | English prose tokenizes at 3.8–4.05 bytes per token (the input estimator's corpus, public Claude tokenizer); code at 3.4–4.3 |
//! | tool input JSON | 3.0 | compact JSON at 2.4–3.0 (numbers and punctuation split finely), string-heavy tool input nearer 3.5 |
//! | signature | 3.0 | base64 has no words for a vocabulary to match: it splits into 2–4 character pieces |
//!
//! Each class is rounded up separately, so a stream is never charged less than one token for a
//! class it showed.

/// Bytes of delta content seen (escapes decoded), by how they tokenize.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContentBytes {
    /// `text_delta.text` and `thinking_delta.thinking`.
    pub text: u64,
    /// `input_json_delta.partial_json`.
    pub json: u64,
    /// `signature_delta.signature`.
    pub signature: u64,
}

/// Tenths of a byte per token, per class (integer arithmetic on the hot path's result).
const TEXT_TENTHS: u64 = 40;
const JSON_TENTHS: u64 = 30;
const SIGNATURE_TENTHS: u64 = 30;

impl ContentBytes {
    /// The output tokens these bytes are estimated to be.
    pub fn tokens(&self) -> u64 {
        let class = |bytes: u64, tenths: u64| bytes.saturating_mul(10).div_ceil(tenths);
        class(self.text, TEXT_TENTHS)
            .saturating_add(class(self.json, JSON_TENTHS))
            .saturating_add(class(self.signature, SIGNATURE_TENTHS))
    }

    pub(crate) fn add(&mut self, other: &ContentBytes) {
        self.text = self.text.saturating_add(other.text);
        self.json = self.json.saturating_add(other.json);
        self.signature = self.signature.saturating_add(other.signature);
    }

    fn add_class(&mut self, class: Class, n: u64) {
        let slot = match class {
            Class::Text => &mut self.text,
            Class::Json => &mut self.json,
            Class::Signature => &mut self.signature,
        };
        *slot = slot.saturating_add(n);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Text,
    Json,
    Signature,
}

/// The longest key whose value is counted (`partial_json`).
const KEY_MAX: usize = 12;

fn class_of(key: &[u8]) -> Option<Class> {
    match key {
        b"text" | b"thinking" => Some(Class::Text),
        b"partial_json" => Some(Class::Json),
        b"signature" => Some(Class::Signature),
        _ => None,
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between strings.
    #[default]
    Out,
    /// Inside a string; `key` when it is an object key.
    Str { key: bool },
    /// After a backslash in a string.
    Escape { key: bool },
    /// Inside `\uXXXX`: hex digits still to come and the code unit so far.
    Unicode { key: bool, left: u8, unit: u16 },
}

/// The streaming counter over the JSON of one `content_block_delta` event.
///
/// Counts go to the current line first and reach the event only when the line is complete, so
/// that a line cut short at the end of the stream is dropped exactly as the tap drops it.
#[derive(Debug, Default)]
pub(crate) struct DeltaScan {
    state: State,
    /// The last byte outside strings that was not whitespace (`b'"'` after a value string,
    /// `b'k'` after a key): a string after `{` or `,` is a key, after `:` a value.
    after: u8,
    /// The class of the key just read, until the value after its `:`.
    key_class: Option<Class>,
    /// The class of the value string being read.
    class: Option<Class>,
    key: [u8; KEY_MAX],
    /// Bytes of the key so far; above [`KEY_MAX`] (or after an escape) it matches nothing.
    key_len: usize,
    line: ContentBytes,
    event: ContentBytes,
    /// Drop the next byte if it is a space (the one after `data:`).
    skip_space: bool,
}

impl DeltaScan {
    /// Scan more bytes of the current line.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0;
        if self.skip_space && !bytes.is_empty() {
            self.skip_space = false;
            i = usize::from(bytes[0] == b' ');
        }
        while i < bytes.len() {
            match self.state {
                State::Out => {
                    let b = bytes[i];
                    i += 1;
                    match b {
                        b'"' => {
                            let key = matches!(self.after, b'{' | b',');
                            if key {
                                self.key_len = 0;
                            } else {
                                self.class = if self.after == b':' {
                                    self.key_class
                                } else {
                                    None
                                };
                            }
                            self.key_class = None;
                            self.state = State::Str { key };
                        }
                        b' ' | b'\t' | b'\n' | b'\r' => {}
                        b':' => self.after = b':',
                        other => {
                            self.after = other;
                            self.key_class = None;
                        }
                    }
                }
                State::Str { key } => {
                    let rest = &bytes[i..];
                    let (n, end) = match memchr::memchr2(b'"', b'\\', rest) {
                        Some(j) => (j, Some(rest[j])),
                        None => (rest.len(), None),
                    };
                    if key {
                        self.push_key(&rest[..n]);
                    } else {
                        self.count(n as u64);
                    }
                    i += n;
                    match end {
                        None => {}
                        Some(b'"') => {
                            i += 1;
                            self.state = State::Out;
                            if key {
                                self.after = b'k';
                                self.key_class = self.key.get(..self.key_len).and_then(class_of);
                            } else {
                                self.after = b'"';
                                self.class = None;
                            }
                        }
                        Some(_) => {
                            i += 1;
                            self.state = State::Escape { key };
                        }
                    }
                }
                State::Escape { key } => {
                    let b = bytes[i];
                    i += 1;
                    if b == b'u' {
                        self.state = State::Unicode {
                            key,
                            left: 4,
                            unit: 0,
                        };
                        continue;
                    }
                    if key {
                        // No counted key holds an escape.
                        self.key_len = usize::MAX;
                    } else {
                        self.count(1);
                    }
                    self.state = State::Str { key };
                }
                State::Unicode { key, left, unit } => {
                    let b = bytes[i];
                    i += 1;
                    // Broken JSON (a non-hex digit) still ends the escape after four bytes.
                    let digit = char::from(b).to_digit(16).unwrap_or(0);
                    let unit = unit.wrapping_mul(16).wrapping_add(digit as u16);
                    if left > 1 {
                        self.state = State::Unicode {
                            key,
                            left: left - 1,
                            unit,
                        };
                        continue;
                    }
                    if key {
                        self.key_len = usize::MAX;
                    } else {
                        // The UTF-8 length of the character; a surrogate is half of a 4-byte one.
                        self.count(match unit {
                            0..0x80 => 1,
                            0x80..0x800 => 2,
                            0xD800..=0xDFFF => 2,
                            _ => 3,
                        });
                    }
                    self.state = State::Str { key };
                }
            }
        }
    }

    fn push_key(&mut self, bytes: &[u8]) {
        let end = self.key_len.saturating_add(bytes.len());
        match self.key.get_mut(self.key_len..end) {
            Some(slot) => {
                slot.copy_from_slice(bytes);
                self.key_len = end;
            }
            None => self.key_len = usize::MAX,
        }
    }

    fn count(&mut self, n: u64) {
        if let Some(class) = self.class {
            self.line.add_class(class, n);
        }
    }

    /// The next byte fed is dropped if it is a space.
    pub(crate) fn skip_space(&mut self) {
        self.skip_space = true;
    }

    /// The current line is complete: its counts belong to the event.
    pub(crate) fn end_line(&mut self) {
        self.skip_space = false;
        let line = std::mem::take(&mut self.line);
        self.event.add(&line);
    }

    /// The current line will never be complete (the stream ended inside it).
    pub(crate) fn drop_line(&mut self) {
        self.line = ContentBytes::default();
    }

    /// The event is complete: its counts, and a fresh counter for the next one.
    pub(crate) fn take_event(&mut self) -> ContentBytes {
        let event = self.event;
        *self = DeltaScan::default();
        event
    }

    /// Forget the current event.
    pub(crate) fn reset(&mut self) {
        *self = DeltaScan::default();
    }
}

/// The content of one complete event's data, for an event whose data the tap kept.
pub(crate) fn count_event(data: &[u8]) -> ContentBytes {
    let mut scan = DeltaScan::default();
    scan.feed(data);
    scan.end_line();
    scan.take_event()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn scan(data: &str) -> ContentBytes {
        count_event(data.as_bytes())
    }

    #[test]
    fn counts_each_kind_of_delta_and_nothing_else() {
        let t = scan(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello, world"}}"#,
        );
        assert_eq!(
            t,
            ContentBytes {
                text: 12,
                ..ContentBytes::default()
            }
        );
        let t = scan(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"abc"}}"#,
        );
        assert_eq!(t.text, 3);
        let t = scan(
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\": 1"}}"#,
        );
        assert_eq!(
            t,
            ContentBytes {
                json: 7,
                ..ContentBytes::default()
            }
        );
        let t = scan(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCg=="}}"#,
        );
        assert_eq!(
            t,
            ContentBytes {
                signature: 8,
                ..ContentBytes::default()
            }
        );
        // Citations and unknown deltas carry no counted key; `type` values never count.
        let t = scan(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{"cited_text":"long quote","document_title":"t"}}}"#,
        );
        assert_eq!(t, ContentBytes::default());
        // A key named like a counted one, but as a value, is not a key.
        assert_eq!(
            scan(r#"{"type":"text","x":["text","y"]}"#),
            ContentBytes::default()
        );
    }

    #[test]
    fn escapes_count_as_the_bytes_they_stand_for() {
        // `\n` 1, `\"` 1, `\u00e9` 2, `\u20ac` 3, a surrogate pair 4, `\\` 1.
        let t = scan(r#"{"delta":{"text":"a\nb\"\u00e9\u20ac\ud83d\ude00\\"}}"#);
        assert_eq!(t.text, 3 + 1 + 2 + 3 + 4 + 1);
        // Raw UTF-8 counts its bytes.
        assert_eq!(scan(r#"{"delta":{"text":"é€😀"}}"#).text, 2 + 3 + 4);
        // A key with an escape matches nothing.
        assert_eq!(scan(r#"{"delta":{"te\u0078t":"abc"}}"#).text, 0);
    }

    #[test]
    fn whitespace_and_layout_do_not_matter() {
        let t = scan("{ \"delta\" : { \"type\" : \"text_delta\" ,\n \"text\" :\t\"abcd\" } }");
        assert_eq!(t.text, 4);
    }

    #[test]
    fn the_result_does_not_depend_on_where_the_bytes_are_cut() {
        let data = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x\u00e9\"yz"}}"#;
        let want = scan(data);
        assert_eq!(want.text, 6);
        for cut in 0..=data.len() {
            let mut s = DeltaScan::default();
            s.feed(&data.as_bytes()[..cut]);
            s.feed(&data.as_bytes()[cut..]);
            s.end_line();
            assert_eq!(s.take_event(), want, "cut at {cut}");
        }
    }

    #[test]
    fn only_complete_lines_reach_the_event() {
        let mut s = DeltaScan::default();
        s.feed(br#"{"delta":{"text":"abc"#);
        s.end_line();
        s.feed(br#"def"#);
        s.drop_line();
        assert_eq!(s.take_event().text, 3);
    }

    #[test]
    fn tokens_round_each_class_up() {
        assert_eq!(ContentBytes::default().tokens(), 0);
        let c = ContentBytes {
            text: 400,
            json: 300,
            signature: 1,
        };
        assert_eq!(c.tokens(), 100 + 100 + 1);
        let c = ContentBytes {
            text: u64::MAX,
            json: u64::MAX,
            signature: u64::MAX,
        };
        assert!(c.tokens() >= u64::MAX / 40, "saturates, never wraps");
    }
}
