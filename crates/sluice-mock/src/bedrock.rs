//! Claude on AWS Bedrock: `InvokeModel` and `InvokeModelWithResponseStream` (event-stream frames).

use std::sync::Arc;

use bytes::Bytes;
use http::Response;

use crate::body::{DropConnection, MockBody};
use crate::state::State;

/// Answers the request when it is for a Bedrock endpoint; `None` leaves it to the Anthropic routes.
pub(crate) async fn handle(
    state: &Arc<State>,
    parts: &http::request::Parts,
    body: &Bytes,
    request_id: &str,
) -> Option<Result<Response<MockBody>, DropConnection>> {
    let _ = (state, parts, body, request_id);
    None
}
