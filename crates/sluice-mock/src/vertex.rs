//! Claude on Google Vertex AI: `rawPredict`, `streamRawPredict` and a service-account token endpoint.

use std::sync::Arc;

use bytes::Bytes;
use http::Response;

use crate::body::{DropConnection, MockBody};
use crate::state::State;

/// Answers the request when it is for a Vertex endpoint; `None` leaves it to the Anthropic routes.
pub(crate) async fn handle(
    state: &Arc<State>,
    parts: &http::request::Parts,
    body: &Bytes,
    request_id: &str,
) -> Option<Result<Response<MockBody>, DropConnection>> {
    let _ = (state, parts, body, request_id);
    None
}
