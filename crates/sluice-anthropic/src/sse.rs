//! The SSE usage tap: reads `message_start`, `message_delta` and `error` events from a Messages
//! stream as its bytes pass, without buffering the stream.
//!
//! # Parsing
//!
//! Lines and events follow the WHATWG `text/event-stream` rules: a line ends at `\n`, `\r\n` or a
//! lone `\r` (a `\r\n` split across two chunks is still one line end); a blank line dispatches the
//! event; `event:` sets its type and `data:` lines are joined with `\n`; one space after the colon
//! is dropped; a line starting with `:` is a comment; a line without a colon is a field with an
//! empty value; unknown fields (`id`, `retry`, …) are ignored; an event without `data` lines is
//! not dispatched; a UTF-8 byte order mark before the first line is dropped. The result does not
//! depend on how the stream is cut into chunks.
//!
//! # Cost
//!
//! Every streamed byte passes through here, so the tap copies only what it will read: line ends
//! are found with `memchr`, complete lines are handled in place, and the data of events other than
//! `message_start`, `message_delta`, `message_stop` and `error` (pings, block starts, …) is skipped
//! without being copied once the `event:` line has named them. The upstream always sends the
//! `event:` line first; an event without one is kept and judged by its JSON `type` at dispatch
//! (a prefix check, so an unnamed delta is not parsed).
//!
//! Memory is bounded: the buffered partial line and the data of the current event are each capped
//! (1 MiB by default, see [`SseTap::with_line_limit`]). An event that overflows is counted but
//! not interpreted.
//!
//! # Content
//!
//! The data of `content_block_delta` events is not copied either: a small counter
//! ([`crate::content`]) reads the bytes of its text, thinking, tool-input JSON and signature
//! strings as the lines pass, so that a stream which ends before its final usage can still be
//! charged for the output it showed ([`StreamSummary::charged_usage`]).
//!
//! # Known limit
//!
//! Data skipped for an event named, say, `ping` cannot be recovered if a later `event:` line of
//! the same event renames it to one the tap reads; such an event is counted but not interpreted.
//! Upstream never repeats `event:` within an event.

use crate::content::{ContentBytes, DeltaScan, count_event};
use crate::wire::{Text, WireUsage, starts_as_object};
use memchr::{memchr, memchr2};
use serde::Deserialize;
use sluice_core::Usage;

/// An `event: error` seen in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// `error.type`, e.g. `overloaded_error`.
    pub error_type: String,
    /// `error.message`.
    pub message: String,
}

/// What the tap learned from a stream so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// `message.id` from `message_start`.
    pub message_id: Option<String>,
    /// `message.model` from `message_start`.
    pub model: Option<String>,
    /// `delta.stop_reason` from the last `message_delta` that carried one.
    pub stop_reason: Option<String>,
    /// Usage: `message_start.message.usage`, overridden field by field by each `message_delta.usage`.
    pub usage: Usage,
    /// A `message_start` event was seen.
    pub saw_message_start: bool,
    /// A `message_stop` event was seen (the stream completed normally).
    pub saw_message_stop: bool,
    /// An `error` event was seen.
    pub error: Option<StreamError>,
    /// Number of complete events seen.
    pub events: u64,
    /// Content of the `content_block_delta` events seen, for the output estimate.
    pub content: ContentBytes,
    /// A `message_delta` with a stop reason carried `output_tokens`: the message's final count.
    pub final_usage: bool,
}

impl StreamSummary {
    /// The usage to charge for the stream, and whether its output figure is an estimate.
    ///
    /// A stream that completed, or whose last `message_delta` (the one with the stop reason)
    /// carried the output count, is charged what it reported. Otherwise the upstream billed
    /// output it never reported here: the output charged is the larger of the last reported
    /// count and the estimate from the content seen, and it is marked as an estimate. A stream
    /// that never started a message has no usage to estimate from.
    pub fn charged_usage(&self) -> (Usage, bool) {
        if self.final_usage || self.saw_message_stop || !self.saw_message_start {
            return (self.usage, false);
        }
        let mut usage = self.usage;
        usage.output_tokens = usage.output_tokens.max(self.content.tokens());
        (usage, true)
    }
}

/// Default cap on one buffered line and on the data of one event.
pub const DEFAULT_LINE_LIMIT: usize = 1 << 20;

/// A UTF-8 byte order mark, which the SSE rules drop before the first line.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The longest field name the tap reads (`event`); a colon-less head longer than this is a field
/// the tap ignores.
const LONGEST_FIELD: usize = 5;

/// Buffers above this size are released after use rather than kept for the next line or event.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Enough bytes of a line to decide its field even after a byte order mark.
const HEAD_WINDOW: usize = BOM.len() + LONGEST_FIELD + 1;

/// The event type, as far as the tap cares.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No `event:` line (or an empty one): the SSE type is `message`; the JSON `type` decides.
    #[default]
    Unnamed,
    MessageStart,
    MessageDelta,
    MessageStop,
    Error,
    /// `content_block_delta`: its data is counted, not kept.
    ContentDelta,
    /// Any other name: its data is skipped.
    Other,
}

impl Kind {
    fn from_name(name: &[u8]) -> Kind {
        match name {
            b"" => Kind::Unnamed,
            b"message_start" => Kind::MessageStart,
            b"message_delta" => Kind::MessageDelta,
            b"message_stop" => Kind::MessageStop,
            b"error" => Kind::Error,
            b"content_block_delta" => Kind::ContentDelta,
            _ => Kind::Other,
        }
    }
}

/// The fields the tap acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Data,
    Event,
}

/// What to do with the line in progress, decided from its first bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// No byte of the current line seen yet.
    #[default]
    Start,
    /// The first few bytes are buffered; the field is not known yet.
    Head,
    /// The line is buffered, to be handled at its end.
    Keep(Field),
    /// The rest of the line is ignored.
    Skip,
    /// A `data` line of a content delta: its value goes through the counter as it passes.
    Count,
    /// The line's value is not kept (skipped data, or a line over the limit); its field still
    /// has an effect once the line is complete.
    Lost(Field),
}

/// How the first bytes of a line classify it.
enum Verdict {
    Undecided,
    Keep(Field),
    Skip,
    /// A `data` line of an event whose data is not read.
    SkipData,
    /// A `data` line of a content delta.
    CountData,
}

/// Incremental SSE parser. Feed it the chunks as they pass; it keeps at most one partial line.
#[derive(Debug)]
pub struct SseTap {
    summary: StreamSummary,
    /// Usage as carried so far, remembering which fields were carried.
    usage: WireUsage,
    /// The content counter of the current event.
    scan: DeltaScan,
    line: Line,
    /// The buffered part of the current line (only when `line` is `Head` or `Keep`).
    buf: Vec<u8>,
    /// The joined `data` of the current event, when its kind is read.
    data: Vec<u8>,
    kind: Kind,
    /// The current event has at least one `data` line (so a blank line dispatches it).
    has_data: bool,
    /// Some `data` of the current event was skipped or overflowed: it is counted, not read.
    lost_data: bool,
    /// The last byte fed was a `\r`: a `\n` first in the next chunk belongs to it.
    pending_cr: bool,
    /// A line end has been seen (the byte order mark can only precede the first line).
    past_first_line: bool,
    finished: bool,
    limit: usize,
}

impl Default for SseTap {
    fn default() -> Self {
        Self::with_line_limit(DEFAULT_LINE_LIMIT)
    }
}

/// The JSON of an event the tap reads: the union of the keys of the four event types.
#[derive(Deserialize)]
struct EventData<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Text<'a>,
    #[serde(borrow, default)]
    message: Option<StartMessage<'a>>,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    error: Option<ErrorDetail<'a>>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(borrow, default)]
    id: Text<'a>,
    #[serde(borrow, default)]
    model: Text<'a>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    stop_reason: Text<'a>,
}

/// The `error` object of the upstream's error shape (shared with [`crate::error::error_type`]).
#[derive(Deserialize)]
pub(crate) struct ErrorDetail<'a> {
    #[serde(rename = "type", borrow, default)]
    pub(crate) kind: Text<'a>,
    #[serde(borrow, default)]
    pub(crate) message: Text<'a>,
}

impl SseTap {
    /// A fresh tap.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh tap that buffers at most `limit` bytes of one line and of one event's data.
    ///
    /// The tap only buffers lines of events it reads, whose JSON is a few hundred bytes; the
    /// limit exists so that a hostile or broken stream cannot grow memory without bound. An event
    /// with a longer line is counted in [`StreamSummary::events`] but not interpreted.
    pub fn with_line_limit(limit: usize) -> Self {
        SseTap {
            summary: StreamSummary::default(),
            usage: WireUsage::default(),
            scan: DeltaScan::default(),
            line: Line::Start,
            buf: Vec::new(),
            data: Vec::new(),
            kind: Kind::Unnamed,
            has_data: false,
            lost_data: false,
            pending_cr: false,
            past_first_line: false,
            finished: false,
            limit,
        }
    }

    /// Feed the next chunk of the stream.
    ///
    /// Chunks may be cut anywhere (inside a line, a `\r\n` or a UTF-8 character). Bytes fed
    /// after [`SseTap::finish`] are ignored.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.finished || chunk.is_empty() {
            return;
        }
        let mut rest = chunk;
        if std::mem::take(&mut self.pending_cr) && rest.first() == Some(&b'\n') {
            rest = &rest[1..];
        }
        while !rest.is_empty() {
            let Some(end) = memchr2(b'\n', b'\r', rest) else {
                self.segment(rest, false);
                return;
            };
            self.segment(&rest[..end], true);
            let cr = rest[end] == b'\r';
            rest = &rest[end + 1..];
            if cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
        }
    }

    /// The stream ended: dispatch a final event that lacked its blank line, if any.
    ///
    /// The SSE rules discard such an event; for accounting the tap dispatches it, built from its
    /// complete lines only. A last line without a line end is dropped: it may have been cut short
    /// (a cut `data:` line holds incomplete JSON, and a cut `event:` line would rename the event).
    /// Calling this again does nothing.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.line = Line::Start;
        self.buf.clear();
        self.scan.drop_line();
        self.dispatch();
    }

    /// What has been learned so far.
    pub fn summary(&self) -> &StreamSummary {
        &self.summary
    }

    /// Handle one piece of a line: all of it (`eol`) or its part up to the end of the chunk.
    fn segment(&mut self, seg: &[u8], eol: bool) {
        match self.line {
            Line::Skip | Line::Lost(_) => {}
            Line::Count => self.scan.feed(seg),
            // The common case: a whole line inside one chunk, handled without copying.
            Line::Start if eol => self.line_complete(seg),
            Line::Start => match self.judge(seg) {
                Verdict::Undecided => {
                    self.line = Line::Head;
                    self.buf.extend_from_slice(seg);
                }
                verdict => self.decided(verdict, seg),
            },
            Line::Head => {
                let n = seg.len().min(HEAD_WINDOW);
                let (head, tail) = seg.split_at(n);
                self.buf.extend_from_slice(head);
                match self.judge(&self.buf) {
                    // Only possible when this piece was shorter than the window.
                    Verdict::Undecided => {}
                    Verdict::Keep(field) => {
                        self.line = Line::Keep(field);
                        self.keep(field, tail);
                    }
                    verdict @ (Verdict::Skip | Verdict::SkipData) => {
                        self.buf.clear();
                        self.decided(verdict, &[]);
                    }
                    Verdict::CountData => {
                        let head = std::mem::take(&mut self.buf);
                        self.decided(Verdict::CountData, &head);
                        self.scan.feed(tail);
                        self.buf = head;
                        self.buf.clear();
                    }
                }
            }
            Line::Keep(field) => self.keep(field, seg),
        }
        if eol {
            match self.line {
                Line::Head | Line::Keep(_) => {
                    let buf = std::mem::take(&mut self.buf);
                    self.line_complete(&buf);
                    self.buf = buf;
                    self.buf.clear();
                    // One huge line must not pin its buffer for the rest of a long stream.
                    if self.buf.capacity() > KEEP_CAPACITY {
                        self.buf = Vec::new();
                    }
                }
                Line::Lost(field) => self.lost(field),
                Line::Count => self.counted_line(),
                Line::Start | Line::Skip => {}
            }
            self.line = Line::Start;
            self.past_first_line = true;
        }
    }

    /// Act on a decided verdict for a line whose first piece is `seg`.
    fn decided(&mut self, verdict: Verdict, seg: &[u8]) {
        match verdict {
            Verdict::Undecided => {}
            Verdict::Keep(field) => {
                self.line = Line::Keep(field);
                self.keep(field, seg);
            }
            Verdict::Skip => self.line = Line::Skip,
            Verdict::SkipData => self.line = Line::Lost(Field::Data),
            Verdict::CountData => {
                self.line = Line::Count;
                self.join_data_line();
                // The value starts after the colon and its optional space, which may come in the
                // next piece.
                self.scan.skip_space();
                if let Some(colon) = memchr(b':', seg) {
                    self.scan.feed(&seg[colon + 1..]);
                }
            }
        }
    }

    /// Classify a line from its first bytes, exactly as [`SseTap::line_complete`] would treat
    /// the whole line, so that the outcome does not depend on where the chunk was cut.
    fn judge(&self, head: &[u8]) -> Verdict {
        let head = if self.past_first_line {
            head
        } else if let Some(h) = head.strip_prefix(BOM) {
            h
        } else if BOM.starts_with(head) {
            return Verdict::Undecided;
        } else {
            head
        };
        match memchr(b':', head) {
            Some(0) => Verdict::Skip,
            Some(i) => match &head[..i] {
                b"data" if self.kind == Kind::Other => Verdict::SkipData,
                b"data" if self.kind == Kind::ContentDelta => Verdict::CountData,
                b"data" => Verdict::Keep(Field::Data),
                b"event" => Verdict::Keep(Field::Event),
                _ => Verdict::Skip,
            },
            None if head.len() > LONGEST_FIELD => Verdict::Skip,
            None => Verdict::Undecided,
        }
    }

    /// Buffer more of a kept line, or give it up once it passes the limit.
    fn keep(&mut self, field: Field, bytes: &[u8]) {
        if self.buf.len().saturating_add(bytes.len()) > self.limit {
            self.buf.clear();
            self.line = Line::Lost(field);
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// A complete line whose value was not kept: its field is known, its value is not.
    fn lost(&mut self, field: Field) {
        match field {
            Field::Data => self.skipped_data(),
            // Every name the tap reads is short; whatever this one was, it is none of them.
            Field::Event => self.kind = Kind::Other,
        }
    }

    /// Data lines are joined with `\n`, for the counter as for kept data (it only matters
    /// inside a string, which valid JSON never breaks).
    fn join_data_line(&mut self) {
        if self.has_data {
            self.scan.feed(b"\n");
        }
    }

    /// A complete `data` line of a content delta went through the counter.
    fn counted_line(&mut self) {
        self.scan.end_line();
        self.skipped_data();
    }

    fn skipped_data(&mut self) {
        self.has_data = true;
        self.lost_data = true;
        self.data.clear();
    }

    /// Handle one complete line (without its line end).
    fn line_complete(&mut self, line: &[u8]) {
        if line.len() > self.limit {
            // Same outcome as when the line arrives in pieces and `keep` gives up on it; a
            // counted line is never buffered, so it has no limit.
            match self.judge(line) {
                Verdict::Keep(field) => self.lost(field),
                Verdict::SkipData => self.lost(Field::Data),
                Verdict::CountData => {
                    self.decided(Verdict::CountData, line);
                    self.line = Line::Start;
                    self.counted_line();
                }
                Verdict::Skip | Verdict::Undecided => {}
            }
            return;
        }
        let line = if self.past_first_line {
            line
        } else {
            line.strip_prefix(BOM).unwrap_or(line)
        };
        if line.is_empty() {
            self.dispatch();
            return;
        }
        let (name, value) = match memchr(b':', line) {
            Some(0) => return,
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"event" => {
                self.kind = Kind::from_name(value);
                if self.kind == Kind::ContentDelta && self.has_data && !self.lost_data {
                    // Data kept before the rename came first: it is counted first.
                    let data = std::mem::take(&mut self.data);
                    self.scan.feed(&data);
                    self.data = data;
                    self.counted_line();
                }
            }
            b"data" => self.data_line(value),
            _ => {}
        }
    }

    fn data_line(&mut self, value: &[u8]) {
        if self.kind == Kind::ContentDelta {
            self.join_data_line();
            self.scan.feed(value);
            self.counted_line();
            return;
        }
        if self.kind == Kind::Other {
            self.skipped_data();
            return;
        }
        if self.lost_data {
            return;
        }
        let sep = usize::from(self.has_data);
        if self
            .data
            .len()
            .saturating_add(sep)
            .saturating_add(value.len())
            > self.limit
        {
            self.skipped_data();
            return;
        }
        if self.has_data {
            self.data.push(b'\n');
        }
        self.data.extend_from_slice(value);
        self.has_data = true;
    }

    /// A blank line: the event is complete.
    fn dispatch(&mut self) {
        if self.has_data {
            self.summary.events = self.summary.events.saturating_add(1);
            if self.kind == Kind::ContentDelta {
                let content = self.scan.take_event();
                self.summary.content.add(&content);
            } else if !self.lost_data && self.kind != Kind::Other {
                let data = std::mem::take(&mut self.data);
                self.interpret(&data);
                self.data = data;
            }
        }
        self.kind = Kind::Unnamed;
        self.has_data = false;
        self.lost_data = false;
        self.scan.reset();
        self.data.clear();
        if self.data.capacity() > KEEP_CAPACITY {
            self.data = Vec::new();
        }
    }

    /// Read the data of a dispatched event whose kind is `message_*`, `error` or unnamed.
    fn interpret(&mut self, data: &[u8]) {
        let mut kind = self.kind;
        if kind == Kind::Unnamed {
            // The upstream puts `type` first; reading it off the bytes spares parsing unnamed
            // deltas. Anything else falls through to the full parse below.
            if let Some(name) = leading_type(data) {
                kind = Kind::from_name(name);
                if kind == Kind::ContentDelta {
                    self.summary.content.add(&count_event(data));
                }
                if matches!(kind, Kind::Unnamed | Kind::Other | Kind::ContentDelta) {
                    return;
                }
            }
        }
        if !starts_as_object(data) {
            return;
        }
        let Ok(event) = serde_json::from_slice::<EventData<'_>>(data) else {
            return;
        };
        if kind == Kind::Unnamed {
            kind = event
                .kind
                .as_str()
                .map_or(Kind::Other, |t| Kind::from_name(t.as_bytes()));
        }
        let s = &mut self.summary;
        if kind == Kind::ContentDelta {
            s.content.add(&count_event(data));
            return;
        }
        match kind {
            Kind::MessageStart => {
                s.saw_message_start = true;
                if let Some(m) = event.message {
                    if let Some(id) = m.id.as_str() {
                        s.message_id = Some(id.to_owned());
                    }
                    if let Some(model) = m.model.as_str() {
                        s.model = Some(model.to_owned());
                    }
                    // A new message starts from its own usage, not from a previous one's.
                    self.usage = m.usage.unwrap_or_default();
                    s.usage = self.usage.to_usage();
                    s.content = ContentBytes::default();
                    s.final_usage = false;
                }
            }
            Kind::MessageDelta => {
                let reason = event.delta.as_ref().and_then(|d| d.stop_reason.as_str());
                if let Some(reason) = reason {
                    s.stop_reason = Some(reason.to_owned());
                    if event.usage.as_ref().is_some_and(WireUsage::carries_output) {
                        s.final_usage = true;
                    }
                }
                if let Some(u) = event.usage {
                    self.usage.merge(&u);
                    s.usage = self.usage.to_usage();
                }
            }
            Kind::MessageStop => s.saw_message_stop = true,
            Kind::Error => {
                let text =
                    |t: Option<&Text<'_>>| t.and_then(Text::as_str).unwrap_or_default().to_owned();
                s.error = Some(StreamError {
                    error_type: text(event.error.as_ref().map(|e| &e.kind)),
                    message: text(event.error.as_ref().map(|e| &e.message)),
                });
            }
            Kind::Unnamed | Kind::Other | Kind::ContentDelta => {}
        }
    }
}

/// The value of `type` when the data starts `{"type":"…"` with no escape in the value.
fn leading_type(data: &[u8]) -> Option<&[u8]> {
    let rest = data.trim_ascii_start().strip_prefix(br#"{"type":""#)?;
    let end = memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then(|| &rest[..end])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn run(input: &[u8]) -> StreamSummary {
        let mut tap = SseTap::new();
        tap.feed(input);
        tap.finish();
        tap.summary().clone()
    }

    fn run_bytewise(input: &[u8]) -> StreamSummary {
        let mut tap = SseTap::new();
        for b in input {
            tap.feed(std::slice::from_ref(b));
        }
        tap.finish();
        tap.summary().clone()
    }

    const START: &str = r#"{"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":10,"output_tokens":1,"cache_read_input_tokens":5}}}"#;

    #[test]
    fn reads_a_minimal_stream() {
        let s = format!(
            "event: message_start\ndata: {START}\n\nevent: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":7}}}}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
        );
        let sum = run(s.as_bytes());
        assert_eq!(sum.message_id.as_deref(), Some("msg_1"));
        assert_eq!(sum.model.as_deref(), Some("m"));
        assert_eq!(sum.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(sum.usage.input_tokens, 10);
        assert_eq!(sum.usage.output_tokens, 7);
        assert_eq!(sum.usage.cache_read_input_tokens, 5);
        assert!(sum.saw_message_start && sum.saw_message_stop);
        assert_eq!(sum.events, 3);
        assert_eq!(run_bytewise(s.as_bytes()), sum);
    }

    #[test]
    fn data_without_space_and_extra_space() {
        let s = format!("event:message_start\ndata:{START}\n\n");
        assert_eq!(run(s.as_bytes()).message_id.as_deref(), Some("msg_1"));
        // Only one space is dropped; JSON does not mind the second.
        let s = format!("event: message_start\ndata:  {START}\n\n");
        assert_eq!(run(s.as_bytes()).message_id.as_deref(), Some("msg_1"));
        // A space is part of the event name after the first one.
        let s = format!("event:  message_start\ndata: {START}\n\n");
        let sum = run(s.as_bytes());
        assert_eq!(sum.message_id, None);
        assert_eq!(sum.events, 1);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let s = "event: message_start\ndata: {\"type\":\"message_start\",\ndata: \"message\":{\"id\":\"msg_2\",\ndata:\"usage\":{\"input_tokens\":3}}}\n\n";
        let sum = run(s.as_bytes());
        assert_eq!(sum.message_id.as_deref(), Some("msg_2"));
        assert_eq!(sum.usage.input_tokens, 3);
        assert_eq!(run_bytewise(s.as_bytes()), sum);
    }

    #[test]
    fn comments_ids_retries_and_unknown_fields_are_ignored() {
        let s = format!(
            ": hello\n:\nid: 7\nretry: 100\nevent: message_start\nfoo: bar\nnonsense\ndata: {START}\n: between\n\n"
        );
        let sum = run(s.as_bytes());
        assert_eq!(sum.message_id.as_deref(), Some("msg_1"));
        assert_eq!(sum.events, 1);
    }

    #[test]
    fn colonless_data_line_is_an_empty_data_line() {
        // `data` alone appends an empty line, so the event is dispatched (counted).
        let sum = run(b"event: ping\ndata\n\n");
        assert_eq!(sum.events, 1);
        let sum = run(b"event: message_stop\ndata\n\n");
        assert_eq!(sum.events, 1);
        assert!(!sum.saw_message_stop, "empty data is not JSON");
    }

    #[test]
    fn events_without_data_are_not_dispatched() {
        let sum = run(b"event: message_stop\n\n\n\nevent: ping\n\n");
        assert_eq!(sum.events, 0);
        assert!(!sum.saw_message_stop);
    }

    #[test]
    fn event_type_resets_after_dispatch() {
        // The second event has no `event:` line; its JSON type says ping, so nothing is read.
        let s = b"event: message_stop\ndata: {}\n\ndata: {\"type\":\"ping\"}\n\n";
        let sum = run(s);
        assert_eq!(sum.events, 2);
        assert!(sum.saw_message_stop);
    }

    #[test]
    fn unnamed_events_are_judged_by_json_type() {
        let s = format!(
            "data: {START}\n\ndata: {{\"type\":\"content_block_delta\",\"delta\":{{\"stop_reason\":\"x\"}}}}\n\ndata: {{\"index\":0,\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"max_tokens\"}},\"usage\":{{\"output_tokens\":4}}}}\n\ndata: {{\"type\":\"message_stop\"}}\n\n"
        );
        let sum = run(s.as_bytes());
        assert_eq!(sum.message_id.as_deref(), Some("msg_1"));
        assert_eq!(sum.stop_reason.as_deref(), Some("max_tokens"));
        assert_eq!(sum.usage.output_tokens, 4);
        assert!(sum.saw_message_stop);
        assert_eq!(sum.events, 4);
        // `event:` with an empty value is the same as none.
        let s = format!("event:\ndata: {START}\n\n");
        assert!(run(s.as_bytes()).saw_message_start);
    }

    #[test]
    fn named_event_wins_over_json_type() {
        let s = b"event: message_stop\ndata: {\"type\":\"ping\"}\n\n";
        assert!(run(s).saw_message_stop);
        let s = b"event: ping\ndata: {\"type\":\"message_stop\"}\n\n";
        assert!(!run(s).saw_message_stop);
    }

    #[test]
    fn malformed_json_in_relevant_events_is_ignored() {
        let s = b"event: message_start\ndata: {\"message\":{\"id\":\"x\"\n\nevent: message_delta\ndata: [1,2]\n\nevent: error\ndata: nope\n\nevent: message_stop\ndata: {} trailing\n\n";
        let sum = run(s);
        assert_eq!(
            sum,
            StreamSummary {
                events: 4,
                ..StreamSummary::default()
            }
        );
    }

    #[test]
    fn error_event_is_recorded() {
        let s = b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Over\\nloaded\"}}\n\n";
        let sum = run(s);
        assert_eq!(
            sum.error,
            Some(StreamError {
                error_type: "overloaded_error".into(),
                message: "Over\nloaded".into()
            })
        );
        // A well-formed error event without details is still an error.
        let sum = run(b"event: error\ndata: {}\n\n");
        assert_eq!(
            sum.error,
            Some(StreamError {
                error_type: String::new(),
                message: String::new()
            })
        );
    }

    #[test]
    fn line_endings_all_work_and_mix() {
        let lf =
            format!("event: message_start\ndata: {START}\n\nevent: message_stop\ndata: {{}}\n\n");
        let want = run(lf.as_bytes());
        assert!(want.saw_message_start && want.saw_message_stop);
        for eol in ["\r\n", "\r"] {
            let s = lf.replace('\n', eol);
            assert_eq!(run(s.as_bytes()), want, "{eol:?}");
            assert_eq!(run_bytewise(s.as_bytes()), want, "{eol:?}");
        }
        let mixed = format!(
            "event: message_start\r\ndata: {START}\r\r\nevent: message_stop\rdata: {{}}\n\r"
        );
        assert_eq!(run(mixed.as_bytes()), want);
        assert_eq!(run_bytewise(mixed.as_bytes()), want);
    }

    #[test]
    fn cr_then_lf_in_the_next_chunk_is_one_line_end() {
        let mut tap = SseTap::new();
        tap.feed(b"event: message_stop\r");
        tap.feed(b"");
        tap.feed(b"\ndata: {}\r");
        tap.feed(b"\n\r");
        tap.feed(b"\n");
        assert!(tap.summary().saw_message_stop);
        assert_eq!(tap.summary().events, 1);
    }

    #[test]
    fn a_leading_bom_is_dropped_even_when_split() {
        let s = format!("\u{feff}event: message_start\ndata: {START}\n\n");
        assert!(run(s.as_bytes()).saw_message_start);
        assert!(run_bytewise(s.as_bytes()).saw_message_start);
        // Only before the first line.
        let s = format!("\n\u{feff}event: message_start\ndata: {START}\n\n");
        let sum = run(s.as_bytes());
        assert!(
            sum.saw_message_start,
            "unknown field, then judged by JSON type"
        );
        let s = format!("\n\u{feff}event: ping\ndata: {START}\n\n");
        assert!(run(s.as_bytes()).saw_message_start);
    }

    #[test]
    fn skipped_data_is_never_copied() {
        let mut tap = SseTap::new();
        let big = "x".repeat(100_000);
        let s = format!("event: content_block_delta\ndata: {{\"delta\":\"{big}\"}}\n\n");
        for piece in s.as_bytes().chunks(4096) {
            tap.feed(piece);
            assert!(tap.buf.capacity() < 64, "{}", tap.buf.capacity());
            assert!(tap.data.capacity() < 64);
        }
        assert_eq!(tap.summary().events, 1);
    }

    #[test]
    fn overlong_lines_are_counted_not_read() {
        let s = format!("event: message_start\ndata: {START}\n\n");
        let limit = s.find('\n').unwrap() + 10;
        let mut tap = SseTap::with_line_limit(limit);
        tap.feed(s.as_bytes());
        tap.finish();
        assert_eq!(tap.summary().events, 1);
        assert!(!tap.summary().saw_message_start);

        let mut split = SseTap::with_line_limit(limit);
        for b in s.as_bytes() {
            split.feed(std::slice::from_ref(b));
        }
        split.finish();
        assert_eq!(split.summary(), tap.summary());

        // The next event is read normally.
        let mut tap = SseTap::with_line_limit(START.len() + 6);
        tap.feed(
            format!(
                "event: message_start\ndata: x{START}\n\nevent: message_start\ndata: {START}\n\n"
            )
            .as_bytes(),
        );
        assert_eq!(tap.summary().events, 2);
        assert!(tap.summary().saw_message_start);

        // An overlong event name is some other event.
        let mut tap = SseTap::with_line_limit(20);
        tap.feed(b"event: message_stop\nevent: message_stop                    \ndata: {}\n\n");
        assert_eq!(tap.summary().events, 1);
        assert!(!tap.summary().saw_message_stop);
    }

    #[test]
    fn data_is_capped_across_lines() {
        let mut tap = SseTap::with_line_limit(20);
        tap.feed(b"event: message_stop\ndata: {\ndata: \ndata: \ndata: \ndata: }\n\n");
        assert_eq!(tap.summary().events, 1);
        assert!(tap.summary().saw_message_stop);
        let mut tap = SseTap::with_line_limit(20);
        tap.feed(b"event: message_stop\ndata: {          \ndata:          }\n\n");
        assert_eq!(tap.summary().events, 1);
        assert!(!tap.summary().saw_message_stop);
    }

    #[test]
    fn renaming_after_skipped_data_loses_the_event() {
        let sum = run(b"event: ping\ndata: {}\nevent: message_stop\n\n");
        assert_eq!(sum.events, 1);
        assert!(!sum.saw_message_stop);
        // Renaming before any data was skipped is fine, either way round.
        assert!(run(b"event: ping\nevent: message_stop\ndata: {}\n\n").saw_message_stop);
        assert!(run(b"data: {}\nevent: message_stop\n\n").saw_message_stop);
        assert!(!run(b"event: message_stop\ndata: {}\nevent: ping\n\n").saw_message_stop);
    }

    #[test]
    fn finish_uses_complete_lines_only_and_is_idempotent() {
        let mut tap = SseTap::new();
        tap.feed(b"event: message_stop\ndata: {}\n");
        assert!(!tap.summary().saw_message_stop);
        tap.finish();
        assert!(tap.summary().saw_message_stop);
        assert_eq!(tap.summary().events, 1);
        tap.finish();
        tap.feed(b"\n\nevent: message_stop\ndata: {}\n\n");
        assert_eq!(tap.summary().events, 1);

        // A last line without a line end may be cut short: it is dropped.
        let sum = run(b"event: message_stop\ndata: {}");
        assert_eq!(sum.events, 0);
        let sum = run(b"event: message_stop\ndata: {}\nevent: message_sto");
        assert!(
            sum.saw_message_stop,
            "cut event line must not rename the event"
        );
        let sum = run(b"event: message_stop\ndata: {}\r");
        assert!(sum.saw_message_stop);
        // Also when the cut line is one whose value would have been skipped.
        assert_eq!(
            run(b"event: ping\ndata: {}\n\nevent: ping\ndata: {\"t").events,
            1
        );
        let sum = run(b"event: message_stop\ndata: {}\nevent: message_stop_and_more");
        assert!(sum.saw_message_stop);
    }

    #[test]
    fn second_message_start_replaces_usage() {
        let s = format!(
            "event: message_start\ndata: {START}\n\nevent: message_start\ndata: {{\"message\":{{\"usage\":{{\"output_tokens\":2}}}}}}\n\n"
        );
        let sum = run(s.as_bytes());
        assert_eq!(sum.usage.input_tokens, 0);
        assert_eq!(sum.usage.output_tokens, 2);
        assert_eq!(sum.message_id.as_deref(), Some("msg_1"));
    }

    const DELTA: &str = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"one two three"}}"#;

    #[test]
    fn content_deltas_are_counted_however_they_arrive() {
        let named = format!("event: content_block_delta\ndata: {DELTA}\n\n");
        let sum = run(named.as_bytes());
        assert_eq!(sum.content.text, 13);
        assert_eq!(sum.events, 1);
        assert_eq!(run_bytewise(named.as_bytes()), sum);
        // Unnamed (judged by its JSON type, first or not), without the space, after a BOM.
        assert_eq!(run(format!("data: {DELTA}\n\n").as_bytes()), sum);
        let late_type = DELTA.replacen(
            r#""type":"content_block_delta","index":0"#,
            r#""index":0,"type":"content_block_delta""#,
            1,
        );
        assert_eq!(run(format!("data: {late_type}\n\n").as_bytes()), sum);
        let bare = format!("\u{feff}event:content_block_delta\ndata:{DELTA}\n\n");
        assert_eq!(run(bare.as_bytes()), sum);
        assert_eq!(run_bytewise(bare.as_bytes()), sum);
        // A line longer than the limit is still counted: counting keeps nothing.
        let mut small = SseTap::with_line_limit(30);
        small.feed(named.as_bytes());
        small.finish();
        assert_eq!(small.summary().content.text, 13);
        let mut small = SseTap::with_line_limit(30);
        for b in named.as_bytes() {
            small.feed(std::slice::from_ref(b));
        }
        small.finish();
        assert_eq!(small.summary().content.text, 13);
        // Data kept before a rename to a content delta is counted too.
        let renamed = format!("data: {DELTA}\nevent: content_block_delta\n\n");
        assert_eq!(run(renamed.as_bytes()).content.text, 13);
        // A content delta renamed to something else is not.
        let away = format!("event: content_block_delta\ndata: {DELTA}\nevent: ping\n\n");
        assert_eq!(run(away.as_bytes()).content.text, 0);
        // The space after `data:` is dropped once, also when it comes in the next chunk, so a
        // string broken across lines counts the same either way.
        let broken =
            "event: content_block_delta\ndata: {\"delta\":{\"text\":\"ab\ndata:  cd\"}}\n\n";
        let want = run(broken.as_bytes());
        assert_eq!(want.content.text, 6, "ab, the joining newline, space, cd");
        assert_eq!(run_bytewise(broken.as_bytes()), want);
    }

    #[test]
    fn a_cut_line_is_not_counted_and_a_new_message_starts_afresh() {
        let s = format!(
            "event: content_block_delta\ndata: {DELTA}\n\nevent: content_block_delta\ndata: {DELTA}"
        );
        assert_eq!(run(s.as_bytes()).content.text, 13);
        let s = format!(
            "event: content_block_delta\ndata: {DELTA}\n\nevent: message_start\ndata: {START}\n\n"
        );
        assert_eq!(run(s.as_bytes()).content, ContentBytes::default());
    }

    #[test]
    fn charged_usage_estimates_only_without_the_final_count() {
        let start = format!("event: message_start\ndata: {START}\n\n");
        let delta = format!("event: content_block_delta\ndata: {DELTA}\n\n");
        let text = delta.repeat(10);
        // Cut after the deltas: 130 bytes of text at 4 per token, over the 1 reported.
        let cut = run(format!("{start}{text}").as_bytes());
        let (u, estimated) = cut.charged_usage();
        assert!(estimated);
        assert_eq!(u.output_tokens, 33);
        assert_eq!((u.input_tokens, u.cache_read_input_tokens), (10, 5));
        // A larger count reported so far wins: never less than what was seen.
        let partial = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":50}}\n\n";
        let (u, estimated) = run(format!("{start}{text}{partial}").as_bytes()).charged_usage();
        assert!(estimated);
        assert_eq!(u.output_tokens, 50);
        // The final message_delta, with or without the message_stop after it, is the truth.
        let last = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":20}}\n\n";
        let done = run(format!("{start}{text}{last}").as_bytes());
        assert!(done.final_usage);
        assert_eq!(done.charged_usage(), (done.usage, false));
        assert_eq!(done.usage.output_tokens, 20);
        // A stop reason without a count is not the final count.
        let no_count = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\n";
        assert!(
            run(format!("{start}{text}{no_count}").as_bytes())
                .charged_usage()
                .1
        );
        // Nothing started: nothing to estimate from.
        let none = run(text.as_bytes());
        assert_eq!(none.charged_usage(), (Usage::default(), false));
    }

    #[test]
    fn leading_type_reads_only_a_plain_first_key() {
        assert_eq!(leading_type(br#"{"type":"ping"}"#), Some(&b"ping"[..]));
        assert_eq!(leading_type(br#"  {"type":"pi\"ng"}"#), None);
        assert_eq!(leading_type(br#"{"index":1,"type":"ping"}"#), None);
        assert_eq!(leading_type(br#"{"type":"ping"#), None);
    }
}
