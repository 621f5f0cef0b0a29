//! The Anthropic Messages API wire, as far as Sluice needs to understand it: a partial parse of
//! request bodies (model, max_tokens, stream) that never re-serialises, usage extraction from
//! JSON replies, an incremental SSE usage tap that is correct under arbitrary chunk splits, and
//! the upstream's error shape.

pub mod canonical;
pub mod content;
pub mod error;
pub mod prompt_cache;
pub mod request;
pub mod response;
pub mod sse;
mod wire;

pub use canonical::canonical_json;
pub use content::ContentBytes;
pub use error::{error_body, error_type, sse_error_event};
pub use request::{
    MAX_MODEL_LEN, MessageRequest, Spans, WireError, cache_affinity_key, parse_message_request,
    planned_affinity_key, with_model,
};
pub use response::{MessageSummary, parse_message_response};
pub use sse::{SseTap, StreamError, StreamSummary};
