//! Message Batches, in memory. Results are computed at creation (each request is validated and
//! answered like `POST /v1/messages`); a batch ends when it is observed by a `GET` at least
//! [`MockOptions::batch_processing`](crate::MockOptions::batch_processing) after creation, so with
//! the default of zero the first fetch after the create call sees it ended. Cancel and delete do
//! not advance a batch, which keeps "delete refuses a batch still processing" testable.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_core::{Clock, SystemClock};

use crate::messages::{Usage, input_estimate, output_tokens, render_message, validate};
use crate::models::{PageQuery, list_envelope, page};
use crate::state::{State, lock};
use crate::wire::{ApiError, error_body, rfc3339, unix_now};

const ID_PREFIX: &str = "msgbatch_mock_";
const MAX_REQUESTS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    InProgress,
    Canceling,
    Ended,
}

/// One request's outcome, rendered at creation.
#[derive(Debug)]
struct Outcome {
    custom_id: String,
    /// The full JSONL line when the request succeeded or errored.
    line: String,
    errored: bool,
}

/// A batch held by the mock.
#[derive(Debug)]
pub(crate) struct Batch {
    id: String,
    status: Status,
    created_at: i64,
    created: Instant,
    ended_at: Option<i64>,
    cancel_initiated_at: Option<i64>,
    canceled: bool,
    outcomes: Vec<Outcome>,
}

impl Batch {
    fn observe(&mut self, processing: Duration) {
        let due = match self.status {
            Status::InProgress => SystemClock.now().duration_since(self.created) >= processing,
            Status::Canceling => true,
            Status::Ended => false,
        };
        if due {
            self.canceled = self.status == Status::Canceling;
            self.status = Status::Ended;
            self.ended_at = Some(unix_now());
        }
    }

    fn to_json(&self, host: &str) -> Value {
        let n = self.outcomes.len();
        let errored = self.outcomes.iter().filter(|o| o.errored).count();
        let (processing, succeeded, errored, canceled) = match (self.status, self.canceled) {
            (Status::Ended, true) => (0, 0, 0, n),
            (Status::Ended, false) => (0, n - errored, errored, 0),
            _ => (n, 0, 0, 0),
        };
        let status = match self.status {
            Status::InProgress => "in_progress",
            Status::Canceling => "canceling",
            Status::Ended => "ended",
        };
        let results_url = (self.status == Status::Ended)
            .then(|| format!("http://{host}/v1/messages/batches/{}/results", self.id));
        json!({
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                "processing": processing,
                "succeeded": succeeded,
                "errored": errored,
                "canceled": canceled,
                "expired": 0,
            },
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.created_at + 86_400),
            "ended_at": self.ended_at.map(rfc3339),
            "cancel_initiated_at": self.cancel_initiated_at.map(rfc3339),
            "archived_at": null,
            "results_url": results_url,
        })
    }
}

fn number_of(id: &str) -> Option<u64> {
    id.strip_prefix(ID_PREFIX)?.parse().ok()
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("message batch {id} not found"))
}

/// `POST /v1/messages/batches`.
pub(crate) fn create(state: &State, body: &[u8], request_id: &str) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))?;
    let requests = v
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("requests: field required"))?;
    if requests.is_empty() || requests.len() > MAX_REQUESTS {
        return Err(ApiError::invalid(format!(
            "requests: must hold between 1 and {MAX_REQUESTS} items"
        )));
    }
    let mut seen = HashSet::new();
    let mut outcomes = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let custom_id = r
            .get("custom_id")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid(format!("requests.{i}.custom_id: field required")))?;
        if !seen.insert(custom_id) {
            return Err(ApiError::invalid(format!(
                "requests.{i}.custom_id: duplicate custom_id {custom_id}"
            )));
        }
        let params = r
            .get("params")
            .filter(|p| p.is_object())
            .ok_or_else(|| ApiError::invalid(format!("requests.{i}.params: field required")))?;
        let params_bytes = serde_json::to_vec(params).unwrap_or_default();
        let result = match validate(&params_bytes, true) {
            Ok(req) => {
                let (output, capped) =
                    output_tokens(state.opts.output_tokens, params_bytes.len(), req.max_tokens);
                let usage = Usage {
                    input: input_estimate(&params_bytes),
                    output,
                    ..Usage::default()
                };
                let msg = render_message(
                    state.next_message_number(),
                    &req.model,
                    &usage,
                    capped,
                    "batch",
                );
                Ok(msg)
            }
            Err(message) => Err(error_body("invalid_request_error", &message, request_id)),
        };
        let mut line = String::with_capacity(64 + custom_id.len());
        line.push_str(r#"{"custom_id":"#);
        line.push_str(&Value::from(custom_id).to_string());
        let errored = result.is_err();
        match result {
            Ok(msg) => {
                line.push_str(r#","result":{"type":"succeeded","message":"#);
                line.push_str(&msg);
            }
            Err(err) => {
                line.push_str(r#","result":{"type":"errored","error":"#);
                line.push_str(&err);
            }
        }
        line.push_str("}}");
        outcomes.push(Outcome {
            custom_id: custom_id.to_owned(),
            line,
            errored,
        });
    }
    let number = state.next_batch_number();
    let batch = Batch {
        id: format!("{ID_PREFIX}{number}"),
        status: Status::InProgress,
        created_at: unix_now(),
        created: SystemClock.now(),
        ended_at: None,
        cancel_initiated_at: None,
        canceled: false,
        outcomes,
    };
    // The create reply never needs a host: a batch is not ended yet.
    let reply = batch.to_json("");
    lock(&state.batches).insert(number, batch);
    Ok(reply)
}

/// `GET /v1/messages/batches/{id}`.
pub(crate) fn get(state: &State, id: &str, host: &str) -> Result<Value, ApiError> {
    let mut batches = lock(&state.batches);
    let batch = number_of(id)
        .and_then(|n| batches.get_mut(&n))
        .ok_or_else(|| not_found(id))?;
    batch.observe(state.opts.batch_processing);
    Ok(batch.to_json(host))
}

/// `GET /v1/messages/batches`, newest first.
pub(crate) fn list(state: &State, q: &PageQuery, host: &str) -> Value {
    let mut batches = lock(&state.batches);
    let keys: Vec<u64> = batches.keys().rev().copied().collect();
    // Cursors compare by number, so a deleted batch's id still works as a cursor; an
    // unparseable cursor is past every item.
    let after = q.after_id.as_deref().map(|id| match number_of(id) {
        Some(n) => keys.partition_point(|&k| k >= n),
        None => keys.len(),
    });
    let before = q.before_id.as_deref().map(|id| match number_of(id) {
        Some(n) => keys.partition_point(|&k| k > n),
        None => 0,
    });
    let (range, has_more) = page(keys.len(), q.limit, after, before);
    let processing = state.opts.batch_processing;
    let mut data = Vec::with_capacity(range.len());
    for k in &keys[range] {
        if let Some(b) = batches.get_mut(k) {
            b.observe(processing);
            data.push(b.to_json(host));
        }
    }
    list_envelope(data, has_more)
}

/// `POST /v1/messages/batches/{id}/cancel`.
pub(crate) fn cancel(state: &State, id: &str, host: &str) -> Result<Value, ApiError> {
    let mut batches = lock(&state.batches);
    let batch = number_of(id)
        .and_then(|n| batches.get_mut(&n))
        .ok_or_else(|| not_found(id))?;
    if batch.status == Status::InProgress {
        batch.status = Status::Canceling;
        batch.cancel_initiated_at = Some(unix_now());
    }
    Ok(batch.to_json(host))
}

/// `DELETE /v1/messages/batches/{id}`.
pub(crate) fn delete(state: &State, id: &str) -> Result<Value, ApiError> {
    let mut batches = lock(&state.batches);
    let n = number_of(id).ok_or_else(|| not_found(id))?;
    let batch = batches.get(&n).ok_or_else(|| not_found(id))?;
    if batch.status != Status::Ended {
        return Err(ApiError::invalid(format!(
            "message batch {id} cannot be deleted while it is processing; cancel it first"
        )));
    }
    batches.remove(&n);
    Ok(json!({"id": id, "type": "message_batch_deleted"}))
}

/// `GET /v1/messages/batches/{id}/results`: JSONL, one line per request, in request order.
pub(crate) fn results(state: &State, id: &str) -> Result<String, ApiError> {
    let mut batches = lock(&state.batches);
    let batch = number_of(id)
        .and_then(|n| batches.get_mut(&n))
        .ok_or_else(|| not_found(id))?;
    batch.observe(state.opts.batch_processing);
    if batch.status != Status::Ended {
        return Err(ApiError::invalid(format!(
            "message batch {id} has not ended; results are not available yet"
        )));
    }
    let mut out = String::new();
    for o in &batch.outcomes {
        if batch.canceled {
            out.push_str(r#"{"custom_id":"#);
            out.push_str(&Value::from(o.custom_id.as_str()).to_string());
            out.push_str(r#","result":{"type":"canceled"}}"#);
        } else {
            out.push_str(&o.line);
        }
        out.push('\n');
    }
    Ok(out)
}
