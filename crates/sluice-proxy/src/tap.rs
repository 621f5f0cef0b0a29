//! The streaming reply body: passes the upstream's SSE bytes to the client frame by frame as they
//! arrive (never buffering the stream) while the [`SseTap`] reads usage from them.
//!
//! Endings, and what the client sees:
//! - `message_stop` seen, upstream ends cleanly → outcome `ok`.
//! - the upstream sent `event: error` (it passed through) → outcome `stream_error`.
//! - the upstream connection broke, or it ended without `message_stop` or an error → Sluice
//!   appends its own `event: error` (`api_error`) so the client never mistakes a truncated stream
//!   for a complete one → outcome `upstream_disconnected` / `upstream_truncated`.
//! - the upstream sent nothing for `upstream.stream_idle_timeout_ms` → Sluice appends its own
//!   `event: error` and ends the stream (closing the upstream connection) → outcome
//!   `upstream_stalled`, with the usage seen so far. A healthy long stream has no total limit.
//! - the shutdown grace ran out while the stream was still going → Sluice appends its own
//!   `event: error` (`api_error`) and ends the stream, so the client knows the reply is
//!   incomplete before the gateway closes its connection → outcome `shutdown`, with the usage
//!   seen so far.
//! - the client went away → this body is dropped, which drops the upstream body and so closes
//!   the upstream connection (cancelling generation) → outcome `client_closed`, with the usage
//!   seen so far.
//!
//! On a response-cache miss the body also copies the frames (up to the tenant's
//! `max_entry_bytes`) and hands the stream to the cache only on the clean `ok` ending; any
//! other ending drops the copy.
//!
//! A stream that ends before its final `message_delta` (any of the cut endings, or an error
//! event) is charged its input and the output estimated from the content deltas seen, never less
//! than the last count reported ([`sluice_anthropic::StreamSummary::charged_usage`]); the ledger
//! row says the output is an estimate.

use crate::call::{CallRecorder, Ending};
use crate::response_cache::Capture;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use sluice_anthropic::{SseTap, sse_error_event};
use sluice_upstream::UpstreamBody;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

enum Phase {
    Streaming,
    Done,
}

/// An upstream SSE body with a usage tap.
pub struct TapBody {
    inner: UpstreamBody,
    tap: SseTap,
    call: CallRecorder,
    phase: Phase,
    status: u16,
    /// The idle limit between upstream frames, its timer, and when the last frame came. The
    /// timer is re-armed only when it fires (to `last + idle`), not on every frame: one timer
    /// operation per idle period instead of one per event.
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    last_frame: Instant,
    /// Resolves when the shutdown grace runs out. Boxed once per stream (it is `!Unpin`) and
    /// polled only when the upstream has nothing to give.
    grace_over: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    /// The response cache's copy of the stream, when it is to be stored.
    capture: Option<Capture>,
}

impl TapBody {
    /// Wrap an upstream 200 SSE body.
    pub fn new(
        inner: UpstreamBody,
        call: CallRecorder,
        status: u16,
        idle: Option<Duration>,
    ) -> Self {
        let now = Instant::now();
        let grace_over = Box::pin(call.grace_over());
        Self {
            grace_over,
            inner,
            tap: SseTap::new(),
            call,
            phase: Phase::Streaming,
            status,
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep_until(now + d)))),
            last_frame: now,
            capture: None,
        }
    }

    /// Also copy the stream for the response cache, which stores it if it ends cleanly.
    pub(crate) fn capturing(mut self, capture: Option<Capture>) -> Self {
        self.capture = capture;
        self
    }

    /// Whether the upstream has been silent for longer than the idle limit (re-arming the
    /// timer when it fired early because frames kept coming).
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((d, sleep)) = self.idle.as_mut() else {
            return false;
        };
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last_frame + *d;
            if Instant::now() >= due {
                return true;
            }
            sleep.as_mut().reset(due);
        }
    }

    fn end_stalled(&mut self) -> Option<Bytes> {
        self.tap.finish();
        let ms = self.idle.as_ref().map_or(0, |(d, _)| d.as_millis());
        tracing::warn!(idle_ms = ms as u64, "upstream stream stalled; ending it");
        let end = self.ending("upstream_stalled", Some("api_error".into()));
        self.call.finish(end);
        Some(injected(&format!(
            "upstream sent nothing for {ms} ms; the reply is incomplete"
        )))
    }

    fn end_shutdown(&mut self) -> Option<Bytes> {
        self.tap.finish();
        tracing::warn!("shutdown grace over; ending a stream still in flight");
        let end = self.ending("shutdown", Some("api_error".into()));
        self.call.finish(end);
        Some(injected(
            "the gateway is shutting down and could not finish this reply in time; it is incomplete",
        ))
    }

    fn ending(&self, outcome: &'static str, error_type: Option<String>) -> Ending {
        let s = self.tap.summary();
        let (usage, usage_estimated) = s.charged_usage();
        Ending {
            status: self.status,
            outcome,
            error_type,
            usage,
            usage_estimated,
            stop_reason: s.stop_reason.clone(),
            model_served: s.model.clone(),
        }
    }

    fn end_of_upstream(&mut self, broken: bool) -> Option<Bytes> {
        self.tap.finish();
        let s = self.tap.summary();
        let (end, inject) = if broken {
            (
                self.ending("upstream_disconnected", Some("api_error".into())),
                Some("upstream connection lost mid-stream; the reply is incomplete"),
            )
        } else if let Some(err) = &s.error {
            (
                self.ending("stream_error", Some(err.error_type.clone())),
                None,
            )
        } else if s.saw_message_stop {
            let end = self.ending("ok", None);
            // The model is copied only for an entry: most streams are not stored.
            let model = self.capture.as_ref().and_then(|_| end.model_served.clone());
            let cost = self.call.finish(end);
            // Complete and successful: the only stream the response cache keeps.
            if let Some(c) = self.capture.take() {
                c.complete(cost, model);
            }
            return None;
        } else {
            (
                self.ending("upstream_truncated", Some("api_error".into())),
                Some("upstream ended the stream before message_stop; the reply is incomplete"),
            )
        };
        self.call.finish(end);
        inject.map(injected)
    }
}

/// A Sluice `event: error`, preceded by a blank line: the upstream may have stopped mid-line,
/// and the blank line ends whatever partial event the client holds (a no-op at an event
/// boundary), so this one parses.
fn injected(message: &str) -> Bytes {
    let ev = sse_error_event("api_error", message);
    let mut b = bytes::BytesMut::with_capacity(ev.len() + 2);
    b.extend_from_slice(b"\n\n");
    b.extend_from_slice(&ev);
    b.freeze()
}

impl Drop for TapBody {
    fn drop(&mut self) {
        if matches!(self.phase, Phase::Streaming) {
            let end = self.ending("client_closed", None);
            self.call.finish(end);
        }
    }
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match std::mem::replace(&mut this.phase, Phase::Done) {
            Phase::Done => Poll::Ready(None),
            Phase::Streaming => match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => {
                    if this.stalled(cx) {
                        // The error event is the last frame; dropping this body afterwards
                        // closes the upstream connection.
                        return Poll::Ready(this.end_stalled().map(|b| Ok(Frame::data(b))));
                    }
                    if this.grace_over.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(this.end_shutdown().map(|b| Ok(Frame::data(b))));
                    }
                    this.phase = Phase::Streaming;
                    Poll::Pending
                }
                Poll::Ready(Some(Ok(frame))) => {
                    this.phase = Phase::Streaming;
                    if this.idle.is_some() {
                        this.last_frame = Instant::now();
                    }
                    match frame.into_data() {
                        Ok(data) => {
                            this.call.mark_first_byte();
                            this.tap.feed(&data);
                            if let Some(c) = this.capture.as_mut()
                                && !c.push(&data)
                            {
                                // Too large to store: let waiting callers go now.
                                this.capture = None;
                            }
                            Poll::Ready(Some(Ok(Frame::data(data))))
                        }
                        // Trailers: SSE has none worth passing; poll on.
                        Err(_) => {
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    // The injected error event is the last frame.
                    Poll::Ready(this.end_of_upstream(true).map(|b| Ok(Frame::data(b))))
                }
                Poll::Ready(None) => {
                    Poll::Ready(this.end_of_upstream(false).map(|b| Ok(Frame::data(b))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
