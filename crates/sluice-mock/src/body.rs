//! The response body: either a complete buffer or a paced sequence of pre-rendered SSE events.
//!
//! The event stream is a state machine polled by hyper rather than a task feeding a channel: no
//! extra task or channel per stream, and "the client went away" is simply this body being dropped
//! before its end, which [`Drop`] turns into the `streams_cancelled` counter.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::state::State;

/// The error a body yields to make hyper cut the connection without a clean end.
#[derive(Debug)]
pub(crate) struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose (x-mock-drop-after)")
    }
}

impl std::error::Error for DropConnection {}

/// What happens once every pre-rendered event has been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// A clean end of the body.
    Finish,
    /// Cut the connection: no terminator, so the client sees an incomplete body.
    Drop,
    /// Never end (until the client goes away).
    Hang,
}

/// A response body.
pub(crate) enum MockBody {
    /// A complete body, sent at once (`None` once sent, or for an empty body).
    Full(Option<Bytes>),
    /// A paced event stream.
    Events(Box<EventStream>),
}

impl MockBody {
    /// A complete body.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Self::Full(None)
        } else {
            Self::Full(Some(bytes))
        }
    }
}

/// Pre-rendered chunks sent one frame each, `interval` apart.
pub(crate) struct EventStream {
    chunks: std::vec::IntoIter<Bytes>,
    interval: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    end: StreamEnd,
    /// Set once the drop delay has been armed, so the next poll yields the error.
    drop_armed: bool,
    /// Set when the body reached its intended end; a drop before that is a cancellation.
    done: bool,
    state: Arc<State>,
}

impl EventStream {
    pub(crate) fn new(
        chunks: Vec<Bytes>,
        interval: Duration,
        end: StreamEnd,
        state: Arc<State>,
    ) -> Self {
        Self {
            chunks: chunks.into_iter(),
            interval,
            sleep: None,
            end,
            drop_armed: false,
            done: false,
            state,
        }
    }
}

/// How long to wait before cutting: a pending poll lets hyper flush the events already written,
/// which would otherwise be lost with the connection.
const DROP_FLUSH_DELAY: Duration = Duration::from_millis(20);

impl Body for MockBody {
    type Data = Bytes;
    type Error = DropConnection;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DropConnection>>> {
        match self.get_mut() {
            Self::Full(data) => Poll::Ready(data.take().map(|b| Ok(Frame::data(b)))),
            Self::Events(s) => s.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(data) => data.is_none(),
            Self::Events(s) => s.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Events(_) => SizeHint::default(),
        }
    }
}

impl EventStream {
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DropConnection>>> {
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(chunk) = self.chunks.next() {
            let last = self.chunks.len() == 0;
            if last && self.end == StreamEnd::Finish {
                // Marking the end here lets hyper write the chunked terminator with this chunk.
                self.done = true;
            } else if !last && !self.interval.is_zero() {
                self.sleep = Some(Box::pin(tokio::time::sleep(self.interval)));
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match self.end {
            StreamEnd::Finish => {
                self.done = true;
                Poll::Ready(None)
            }
            StreamEnd::Drop if !self.drop_armed => {
                self.drop_armed = true;
                let mut sleep = Box::pin(tokio::time::sleep(DROP_FLUSH_DELAY));
                // Register the waker now; the sleep cannot be ready yet.
                let _ = sleep.as_mut().poll(cx);
                self.sleep = Some(sleep);
                Poll::Pending
            }
            StreamEnd::Drop => {
                self.done = true;
                Poll::Ready(Some(Err(DropConnection)))
            }
            // Nothing will wake this task again: only the client going away (hyper dropping the
            // body) or the server shutting down ends it.
            StreamEnd::Hang => Poll::Pending,
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if !self.done {
            self.state
                .stats
                .streams_cancelled
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
