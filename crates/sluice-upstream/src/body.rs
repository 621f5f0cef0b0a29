//! The body of an upstream reply as the data plane sees it: the Anthropic wire whatever the
//! provider. An enum rather than a boxed trait object: no allocation per call, and the common
//! case (the Anthropic API's own bytes) is a plain pass-through.

use crate::bedrock::SseFromEventStream;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A reply body in the Anthropic wire format.
#[derive(Debug)]
pub enum UpstreamBody {
    /// The upstream's bytes, unchanged (Anthropic API, Vertex successes).
    Plain(Incoming),
    /// A Bedrock event stream, transcoded to Anthropic SSE.
    Bedrock(SseFromEventStream<Incoming>),
    /// A body rewritten in full (a provider's error in the Anthropic error shape).
    Full(Full<Bytes>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Plain(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Bedrock(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Full(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Plain(b) => b.is_end_stream(),
            UpstreamBody::Bedrock(b) => b.is_end_stream(),
            UpstreamBody::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Plain(b) => b.size_hint(),
            UpstreamBody::Bedrock(b) => b.size_hint(),
            UpstreamBody::Full(b) => b.size_hint(),
        }
    }
}
