//! `InvokeModelWithResponseStream` replies are AWS event-stream frames (binary, CRC-checked), each
//! `chunk` event carrying one Anthropic stream event as base64 JSON. This turns them back into the
//! Anthropic SSE byte stream, so a client cannot tell Bedrock from the Anthropic API.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame};
use serde::Deserialize;

use super::error::{by_type, error_json};

/// Event-stream messages are at most 16 MiB (prelude `total_len`); a larger length is a corrupt
/// prelude, caught here before buffering up to it (the decoder checks the prelude CRC only once
/// the whole frame has arrived).
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Prelude (total length, headers length, prelude CRC) plus the message CRC.
const MIN_FRAME: usize = 16;
const PRELUDE: usize = 12;

/// Adapts an `InvokeModelWithResponseStream` body (AWS event-stream frames) into the Anthropic SSE
/// byte stream.
///
/// Each `chunk` event becomes `event: <type>\ndata: <its JSON, bytes unchanged>\n\n`. An exception
/// frame (`throttlingException`, `modelStreamErrorException`, …) becomes one Anthropic `error`
/// event, mapped as [`super::anthropic_error`] maps error replies, and ends the body; so does a
/// corrupt or truncated frame (as an `api_error`). Errors of the inner body pass through.
pub struct SseFromEventStream<B> {
    inner: B,
    buf: BytesMut,
    decoder: MessageFrameDecoder,
    /// Whether the decoder still has to read the next frame's prelude from `buf` (it keeps the
    /// prelude internally once read, so `buf` alone does not tell).
    awaiting_prelude: bool,
    /// Reused for base64 decoding, so a chunk costs no allocation beyond its output.
    scratch: Vec<u8>,
    done: bool,
}

impl<B> std::fmt::Debug for SseFromEventStream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseFromEventStream")
            .field("buffered", &self.buf.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<B> SseFromEventStream<B> {
    /// Wraps the body of a 200 `InvokeModelWithResponseStream` reply.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            decoder: MessageFrameDecoder::new(),
            awaiting_prelude: true,
            scratch: Vec::new(),
            done: false,
        }
    }

    /// The next complete message in `buf`, `None` when more bytes are needed.
    fn next_message(&mut self) -> Result<Option<Message>, String> {
        if self.awaiting_prelude {
            let Some(prelude) = self.buf.get(..4) else {
                return Ok(None);
            };
            let total = u32::from_be_bytes([prelude[0], prelude[1], prelude[2], prelude[3]]);
            let total = usize::try_from(total).unwrap_or(usize::MAX);
            if !(MIN_FRAME..=MAX_FRAME).contains(&total) {
                return Err(format!("invalid event-stream frame length {total}"));
            }
        }
        let prelude_available = self.awaiting_prelude && self.buf.len() >= PRELUDE;
        match self.decoder.decode_frame(&mut self.buf) {
            Ok(DecodedFrame::Complete(msg)) => {
                self.awaiting_prelude = true;
                Ok(Some(msg))
            }
            Ok(DecodedFrame::Incomplete) => {
                if prelude_available {
                    self.awaiting_prelude = false;
                }
                Ok(None)
            }
            Err(e) => Err(format!("invalid event-stream frame: {e}")),
        }
    }

    /// What one message becomes: an SSE event to send (`Ok(Some)`), nothing (`Ok(None)`: an
    /// event type this adapter does not know), or a final error event (`Err`).
    fn transcode(&mut self, msg: &Message) -> Result<Option<Bytes>, Bytes> {
        let header = |name: &str| {
            msg.headers()
                .iter()
                .find(|h| h.name().as_str() == name)
                .and_then(|h| match h.value() {
                    HeaderValue::String(s) => Some(s.as_str()),
                    _ => None,
                })
        };
        match header(":message-type") {
            Some("event") => {}
            Some("exception") => {
                let name = header(":exception-type").unwrap_or("");
                let kind = by_type(name).map_or("api_error", |m| m.kind);
                let message = message_of(msg.payload())
                    .unwrap_or_else(|| format!("Bedrock stream exception {name}"));
                return Err(error_event(kind, &message));
            }
            Some("error") => {
                let code = header(":error-code").unwrap_or("unknown");
                let message = header(":error-message").unwrap_or("");
                return Err(error_event(
                    "api_error",
                    &format!("Bedrock stream error {code}: {message}"),
                ));
            }
            other => {
                return Err(malformed(&format!(
                    "event-stream message type {}",
                    other.unwrap_or("missing")
                )));
            }
        }
        if header(":event-type") != Some("chunk") {
            return Ok(None);
        }
        self.chunk_to_sse(msg.payload())
            .map(Some)
            .map_err(|e| malformed(&e))
    }

    /// `{"bytes":"<base64 of one Anthropic event>"}` as an SSE event.
    fn chunk_to_sse(&mut self, payload: &[u8]) -> Result<Bytes, String> {
        #[derive(Deserialize)]
        struct Chunk<'a> {
            #[serde(borrow)]
            bytes: Cow<'a, str>,
        }
        #[derive(Deserialize)]
        struct Event<'a> {
            #[serde(borrow, rename = "type")]
            kind: Cow<'a, str>,
        }
        let chunk: Chunk<'_> =
            serde_json::from_slice(payload).map_err(|e| format!("chunk payload: {e}"))?;
        self.scratch.clear();
        base64::engine::general_purpose::STANDARD
            .decode_vec(chunk.bytes.as_bytes(), &mut self.scratch)
            .map_err(|e| format!("chunk bytes: {e}"))?;
        let data = &self.scratch[..];
        let event: Event<'_> =
            serde_json::from_slice(data).map_err(|e| format!("chunk event: {e}"))?;
        let kind = event.kind.as_ref();
        if kind.is_empty() || kind.bytes().any(|b| b == b'\n' || b == b'\r') {
            return Err("chunk event: invalid type".into());
        }
        let mut out = BytesMut::with_capacity(17 + kind.len() + data.len());
        out.put_slice(b"event: ");
        out.put_slice(kind.as_bytes());
        out.put_slice(b"\ndata: ");
        if data.iter().any(|b| *b == b'\n' || *b == b'\r') {
            // Pretty-printed JSON: one `data:` line per line, which SSE joins back with `\n`.
            let text = std::str::from_utf8(data).map_err(|e| format!("chunk event: {e}"))?;
            for (i, line) in text.lines().enumerate() {
                if i > 0 {
                    out.put_slice(b"\ndata: ");
                }
                out.put_slice(line.trim_end_matches('\r').as_bytes());
            }
        } else {
            out.put_slice(data);
        }
        out.put_slice(b"\n\n");
        Ok(out.freeze())
    }
}

/// The `message` of an exception payload (`{"message":"..."}`).
fn message_of(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Fields {
        #[serde(default, alias = "Message")]
        message: Option<String>,
    }
    serde_json::from_slice::<Fields>(payload)
        .ok()?
        .message
        .filter(|m| !m.is_empty())
}

fn error_event(kind: &str, message: &str) -> Bytes {
    let json = error_json(kind, message);
    let mut out = BytesMut::with_capacity(json.len() + 22);
    out.put_slice(b"event: error\ndata: ");
    out.put_slice(&json);
    out.put_slice(b"\n\n");
    out.freeze()
}

fn malformed(why: &str) -> Bytes {
    tracing::warn!(error = why, "bedrock: malformed response stream");
    error_event(
        "api_error",
        &format!("Malformed Bedrock response stream: {why}"),
    )
}

impl<B> Body for SseFromEventStream<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            // Drain what is buffered before reading more: one inner chunk may hold many frames.
            match this.next_message() {
                Ok(Some(msg)) => match this.transcode(&msg) {
                    Ok(Some(sse)) => return Poll::Ready(Some(Ok(Frame::data(sse)))),
                    Ok(None) => continue,
                    Err(last) => {
                        this.done = true;
                        return Poll::Ready(Some(Ok(Frame::data(last))));
                    }
                },
                Ok(None) => {}
                Err(why) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::data(malformed(&why)))));
                }
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers carry nothing for the client.
                    if let Ok(data) = frame.into_data() {
                        this.buf.extend_from_slice(&data);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if this.buf.is_empty() && this.awaiting_prelude {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(malformed(
                        "the stream ended inside a frame",
                    )))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::Header;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// A body yielding the given chunks, then optionally an error.
    pub(crate) struct Chunks {
        chunks: VecDeque<Bytes>,
        error: Option<std::io::Error>,
    }

    impl Chunks {
        pub(crate) fn new(chunks: Vec<Bytes>) -> Self {
            Self {
                chunks: chunks.into(),
                error: None,
            }
        }
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if let Some(c) = self.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(c))));
            }
            Poll::Ready(self.error.take().map(Err))
        }
    }

    pub(crate) fn frame(headers: &[(&'static str, &'static str)], payload: &[u8]) -> Vec<u8> {
        let mut msg = Message::new(Bytes::copy_from_slice(payload));
        for (n, v) in headers {
            msg = msg.add_header(Header::new(*n, HeaderValue::String((*v).into())));
        }
        let mut out = Vec::new();
        write_message_to(&msg, &mut out).unwrap();
        out
    }

    pub(crate) fn chunk_frame(event_json: &str) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(event_json);
        frame(
            &[
                (":event-type", "chunk"),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            format!(r#"{{"bytes":"{b64}","p":"abcdefghij"}}"#).as_bytes(),
        )
    }

    const EVENTS: [&str; 4] = [
        r#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":5,"output_tokens":1}}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"h\u00e9 \"x\""}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}"#,
        r#"{"type":"message_stop"}"#,
    ];

    fn expected_sse() -> String {
        EVENTS
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(e).unwrap();
                format!("event: {}\ndata: {e}\n\n", v["type"].as_str().unwrap())
            })
            .collect()
    }

    async fn run(chunks: Vec<Bytes>) -> Result<String, std::io::Error> {
        let out = SseFromEventStream::new(Chunks::new(chunks))
            .collect()
            .await?
            .to_bytes();
        Ok(String::from_utf8(out.to_vec()).unwrap())
    }

    fn all_frames() -> Vec<u8> {
        EVENTS.iter().flat_map(|e| chunk_frame(e)).collect()
    }

    #[tokio::test]
    async fn frames_in_one_chunk_and_split_at_every_byte() {
        let all = all_frames();
        let expected = expected_sse();
        assert_eq!(run(vec![Bytes::from(all.clone())]).await.unwrap(), expected);
        for cut in 0..=all.len() {
            let chunks = vec![
                Bytes::copy_from_slice(&all[..cut]),
                Bytes::copy_from_slice(&all[cut..]),
            ];
            assert_eq!(run(chunks).await.unwrap(), expected, "cut at {cut}");
        }
        let bytewise = all.iter().map(|b| Bytes::copy_from_slice(&[*b])).collect();
        assert_eq!(run(bytewise).await.unwrap(), expected);
    }

    #[tokio::test]
    async fn exception_frame_becomes_an_error_event_and_ends() {
        let mut all = chunk_frame(EVENTS[0]);
        all.extend(frame(
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
            ],
            br#"{"message":"Too many requests, please wait."}"#,
        ));
        // Anything after the exception is ignored.
        all.extend(chunk_frame(EVENTS[3]));
        let out = run(vec![Bytes::from(all)]).await.unwrap();
        let (first, rest) = out.split_once("\n\n").unwrap();
        assert!(first.starts_with("event: message_start\n"));
        assert_eq!(
            rest,
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Too many requests, please wait.\"}}\n\n"
        );
        for (name, kind) in [
            ("modelStreamErrorException", "api_error"),
            ("internalServerException", "api_error"),
            ("serviceUnavailableException", "overloaded_error"),
            ("validationException", "invalid_request_error"),
            ("modelTimeoutException", "api_error"),
            ("somethingNewException", "api_error"),
        ] {
            let f = frame(
                &[(":message-type", "exception"), (":exception-type", name)],
                b"{}",
            );
            let out = run(vec![Bytes::from(f)]).await.unwrap();
            let data = out.strip_prefix("event: error\ndata: ").unwrap();
            let v: serde_json::Value = serde_json::from_str(data.trim_end()).unwrap();
            assert_eq!(v["error"]["type"], kind, "{name}");
            assert!(v["error"]["message"].as_str().unwrap().contains(name));
        }
    }

    fn assert_single_api_error_after_first_event(out: &str) {
        let (first, rest) = out.split_once("\n\n").unwrap();
        assert!(first.starts_with("event: message_start\n"), "{out}");
        let data = rest.strip_prefix("event: error\ndata: ").unwrap();
        let v: serde_json::Value = serde_json::from_str(data.trim_end()).unwrap();
        assert_eq!(v["error"]["type"], "api_error");
        assert!(
            rest.ends_with("\n\n") && rest.matches("\n\n").count() == 1,
            "{out}"
        );
    }

    #[tokio::test]
    async fn corruption_is_an_api_error() {
        let first = chunk_frame(EVENTS[0]);
        let second = chunk_frame(EVENTS[1]);
        // Flip one byte in each region of the second frame: prelude length, prelude CRC,
        // headers, payload, message CRC.
        for pos in [2, 9, 14, second.len() / 2, second.len() - 1] {
            let mut bad = second.clone();
            bad[pos] ^= 0x20;
            let mut all = first.clone();
            all.extend(&bad);
            all.extend(chunk_frame(EVENTS[3]));
            let out = run(vec![Bytes::from(all)]).await.unwrap();
            assert_single_api_error_after_first_event(&out);
        }
    }

    #[tokio::test]
    async fn truncation_and_bad_payloads_are_api_errors() {
        let first = chunk_frame(EVENTS[0]);
        let second = chunk_frame(EVENTS[1]);
        for cut in [1, 11, 12, second.len() - 1] {
            let mut all = first.clone();
            all.extend(&second[..cut]);
            let out = run(vec![Bytes::from(all)]).await.unwrap();
            assert_single_api_error_after_first_event(&out);
        }
        let chunk_headers = [(":message-type", "event"), (":event-type", "chunk")];
        for payload in [
            &b"not json"[..],
            br#"{"bytes":"!!!not base64"}"#,
            br#"{"bytes":"bm90IGpzb24="}"#,         // "not json"
            br#"{"bytes":"eyJubyI6InR5cGUifQ=="}"#, // {"no":"type"}
        ] {
            let mut all = first.clone();
            all.extend(frame(&chunk_headers, payload));
            let out = run(vec![Bytes::from(all)]).await.unwrap();
            assert_single_api_error_after_first_event(&out);
        }
        let mut all = first.clone();
        all.extend(frame(&[(":event-type", "chunk")], b"{}"));
        assert_single_api_error_after_first_event(&run(vec![Bytes::from(all)]).await.unwrap());
    }

    #[tokio::test]
    async fn unknown_events_are_skipped_and_empty_stream_is_empty() {
        let mut all = frame(
            &[(":message-type", "event"), (":event-type", "metrics")],
            b"{}",
        );
        all.extend(all_frames());
        assert_eq!(run(vec![Bytes::from(all)]).await.unwrap(), expected_sse());
        assert_eq!(run(vec![]).await.unwrap(), "");
    }

    #[tokio::test]
    async fn multiline_json_keeps_sse_framing() {
        let pretty = "{\n  \"type\": \"message_stop\"\n}";
        let out = run(vec![Bytes::from(chunk_frame(pretty))]).await.unwrap();
        assert_eq!(
            out,
            "event: message_stop\ndata: {\ndata:   \"type\": \"message_stop\"\ndata: }\n\n"
        );
    }

    #[tokio::test]
    async fn inner_errors_pass_through() {
        let mut body = Chunks::new(vec![Bytes::from(chunk_frame(EVENTS[0]))]);
        body.error = Some(std::io::Error::other("reset"));
        let mut s = SseFromEventStream::new(body);
        let first = s.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(first.starts_with(b"event: message_start\n"));
        let err = s.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "reset");
        assert!(s.frame().await.is_none());
        assert!(s.is_end_stream());
    }
}
