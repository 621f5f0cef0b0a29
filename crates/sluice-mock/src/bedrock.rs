//! Claude on AWS Bedrock: `InvokeModel` and `InvokeModelWithResponseStream` (event-stream frames).
//!
//! | route | what |
//! |---|---|
//! | `POST /model/{modelId}/invoke` | Messages, the JSON reply as Bedrock returns it (the Anthropic message as is) |
//! | `POST /model/{modelId}/invoke-with-response-stream` | Messages as `application/vnd.amazon.eventstream` frames, one `chunk` per Anthropic event (`ping` omitted, as Bedrock does) |
//!
//! `modelId` is percent-decoded from the path. Requests must carry a SigV4 `Authorization`
//! (`AWS4-HMAC-SHA256 Credential=<akid>/<date>/<region>/bedrock/aws4_request, …`) and
//! `x-amz-date`; when [`crate::MockOptions::aws_credentials`] is set the signature is recomputed
//! and must match (the clock skew is not checked, so tests may sign at a fixed time). The body
//! must be a JSON object with `"anthropic_version":"bedrock-2023-05-31"`, `max_tokens` and
//! `messages`, and without `model` or `stream` (Bedrock rejects them as extraneous keys).
//!
//! Errors raised by "Bedrock" are in its native shape: the status, `x-amzn-ErrorType:
//! <Shape>:http://internal.amazon.com/coral/com.amazon.bedrock/` and `{"message":…}`. The
//! `x-mock-*` knobs of the Anthropic routes apply: `status` (529 answers 503
//! `ServiceUnavailableException`: Bedrock has no 529), `fail-first`, `latency-ms`,
//! `event-interval-ms`, `stream-error-after` (after K chunk frames, a
//! `serviceUnavailableException` exception frame, then a clean end), `drop-after`,
//! `output-tokens`, `hang`; so does [`crate::MockOptions::key_status`] with the access key id as
//! the key. Usage and the prompt cache are as on the Anthropic route, with the access key id as
//! the cache scope (an account's prompt cache is its own), and `by_key` stats count requests
//! per access key id.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::{Date, Month};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue as FrameValue, Message};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::body::{DropConnection, EventStream, MockBody, StreamEnd};
use crate::messages::{
    JsonStr, StreamFault, input_usage, output_tokens, render_message, render_stream,
};
use crate::router::{Faults, parse_faults};
use crate::state::{PendingReply, State};

/// The version Bedrock requires in the body.
const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";
const EVENTSTREAM: &str = "application/vnd.amazon.eventstream";
/// Padding of chunk payloads; real Bedrock pads with a random-length run of letters (`p`).
const PADDING: &str = "abcd";

/// Answers the request when it is for a Bedrock endpoint; `None` leaves it to the Anthropic routes.
pub(crate) async fn handle(
    state: &Arc<State>,
    parts: &http::request::Parts,
    body: &Bytes,
    request_id: &str,
) -> Option<Result<Response<MockBody>, DropConnection>> {
    let rest = parts.uri.path().strip_prefix("/model/")?;
    let (raw_model, op) = rest.split_once('/')?;
    let stream = match op {
        "invoke" => false,
        "invoke-with-response-stream" => true,
        _ => return None,
    };
    let reply = if parts.method != Method::POST {
        Ok(bedrock_error(
            405,
            "UnknownOperationException",
            "The requested operation is not supported.",
            request_id,
        ))
    } else {
        invoke(state, parts, raw_model, stream, body, request_id).await
    };
    Some(reply)
}

/// A Bedrock-native error reply.
fn bedrock_error(status: u16, shape: &str, message: &str, request_id: &str) -> Response<MockBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut resp = Response::new(MockBody::full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{shape}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )) {
        h.insert(HeaderName::from_static("x-amzn-errortype"), v);
    }
    insert_request_id(h, request_id);
    resp
}

fn insert_request_id(h: &mut http::HeaderMap, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static("x-amzn-requestid"), v);
    }
}

/// Bedrock's error shape and wording for an injected status (Bedrock has no 529: an overloaded
/// model answers 503).
fn shape_for_status(status: u16) -> (u16, &'static str, &'static str) {
    match status {
        400 => (
            400,
            "ValidationException",
            "Malformed input request, please reformat your input and try again.",
        ),
        401 => (
            401,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ),
        403 => (
            403,
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        404 => (
            404,
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier.",
        ),
        408 => (
            408,
            "ModelTimeoutException",
            "Model has timed out in processing the request. Try your request again.",
        ),
        424 => (424, "ModelErrorException", "The model returned an error."),
        429 => (
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        503 | 529 => (
            503,
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
        ),
        402..=499 => (
            status,
            "ValidationException",
            "Invalid request (injected by x-mock-status)",
        ),
        _ => (
            status.clamp(500, 599),
            "InternalServerException",
            "The server encountered an internal error while processing the request.",
        ),
    }
}

fn injected_error(status: u16, request_id: &str) -> Response<MockBody> {
    let (status, shape, message) = shape_for_status(status);
    bedrock_error(status, shape, message, request_id)
}

fn validation(message: &str, request_id: &str) -> Response<MockBody> {
    bedrock_error(400, "ValidationException", message, request_id)
}

async fn invoke(
    state: &Arc<State>,
    parts: &http::request::Parts,
    raw_model: &str,
    stream: bool,
    body: &Bytes,
    request_id: &str,
) -> Result<Response<MockBody>, DropConnection> {
    state.stats.messages.fetch_add(1, Ordering::Relaxed);
    let sig = match SigV4::parse(parts) {
        Ok(sig) => sig,
        Err((shape, message)) => return Ok(bedrock_error(403, shape, &message, request_id)),
    };
    state.count_key(sig.access_key_id);
    if let Err(message) = verify(state, parts, &sig, body) {
        return Ok(bedrock_error(
            403,
            "InvalidSignatureException",
            &message,
            request_id,
        ));
    }

    let faults = match parse_faults(&parts.headers) {
        Ok(f) => f,
        Err(e) => return Ok(validation(&e.message, request_id)),
    };
    let mut pending = PendingReply { state, armed: true };
    let latency = state.opts.latency + faults.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let reply = answer(state, raw_model, stream, &sig, body, &faults, request_id).await;
    pending.armed = false;
    reply
}

/// The parsed `Authorization` and `x-amz-date` of a request.
struct SigV4<'a> {
    access_key_id: &'a str,
    region: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
    amz_date: &'a str,
}

impl<'a> SigV4<'a> {
    fn parse(parts: &'a http::request::Parts) -> Result<Self, (&'static str, String)> {
        let Some(auth) = parts.headers.get(AUTHORIZATION) else {
            return Err((
                "MissingAuthenticationTokenException",
                "Missing Authentication Token".into(),
            ));
        };
        let incomplete = |what: &str| {
            (
                "IncompleteSignatureException",
                format!("Authorization header requires {what}."),
            )
        };
        let auth = auth
            .to_str()
            .ok()
            .and_then(|a| a.strip_prefix("AWS4-HMAC-SHA256 "))
            .ok_or_else(|| incomplete("the AWS4-HMAC-SHA256 algorithm"))?;
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for field in auth.split(',').map(str::trim) {
            if let Some(v) = field.strip_prefix("Credential=") {
                credential = Some(v);
            } else if let Some(v) = field.strip_prefix("SignedHeaders=") {
                signed_headers = Some(v);
            } else if let Some(v) = field.strip_prefix("Signature=") {
                signature = Some(v);
            }
        }
        let credential = credential.ok_or_else(|| incomplete("a 'Credential' parameter"))?;
        let signed_headers =
            signed_headers.ok_or_else(|| incomplete("a 'SignedHeaders' parameter"))?;
        let signature = signature.ok_or_else(|| incomplete("a 'Signature' parameter"))?;
        let mut scope = credential.split('/');
        let (
            Some(access_key_id),
            Some(date),
            Some(region),
            Some(service),
            Some("aws4_request"),
            None,
        ) = (
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
        )
        else {
            return Err(incomplete("a well-formed 'Credential' parameter"));
        };
        if access_key_id.is_empty() || region.is_empty() {
            return Err(incomplete("a well-formed 'Credential' parameter"));
        }
        if service != "bedrock" {
            return Err((
                "InvalidSignatureException",
                format!(
                    "Credential should be scoped to correct service: 'bedrock', not '{service}'."
                ),
            ));
        }
        let amz_date = parts
            .headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| incomplete("an 'X-Amz-Date' header"))?;
        if !amz_date.starts_with(date) || date.len() != 8 {
            return Err((
                "InvalidSignatureException",
                format!(
                    "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{date}' != '{}'",
                    amz_date.get(..8).unwrap_or(amz_date)
                ),
            ));
        }
        Ok(Self {
            access_key_id,
            region,
            signed_headers,
            signature,
            amz_date,
        })
    }
}

/// `YYYYMMDDTHHMMSSZ` as a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // The month's first day from the calendar, the day counted on from it (so a 31st of a
    // shorter month runs into the next, as it always has here), for dates from 1970 on.
    let month = Month::try_from(u8::try_from(mo).ok()?).ok()?;
    let first = Date::from_calendar_date(i32::try_from(y).ok()?, month, 1).ok()?;
    let days = u64::try_from(first.midnight().assume_utc().unix_timestamp() / 86_400).ok()? + d - 1;
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + mi * 60 + sec))
}

/// Recomputes the signature with the configured credentials, as Bedrock does.
fn verify(
    state: &State,
    parts: &http::request::Parts,
    sig: &SigV4<'_>,
    body: &[u8],
) -> Result<(), String> {
    const MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";
    let Some((akid, secret)) = &state.opts.aws_credentials else {
        return Ok(());
    };
    if sig.access_key_id != akid {
        return Err(MISMATCH.into());
    }
    let time = parse_amz_date(sig.amz_date).ok_or_else(|| {
        format!(
            "X-Amz-Date must be in the ISO-8601 basic format; got '{}'",
            sig.amz_date
        )
    })?;
    let names: Vec<&str> = sig.signed_headers.split(';').collect();
    if !names.contains(&"host") {
        return Err("'Host' must be a signed header.".into());
    }
    // The signer adds `x-amz-date` and `x-amz-security-token` itself.
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(names.len());
    for name in names
        .iter()
        .filter(|n| !matches!(**n, "x-amz-date" | "x-amz-security-token"))
    {
        let mut any = false;
        for v in parts.headers.get_all(*name) {
            headers.push((name, v.to_str().map_err(|_| MISMATCH.to_owned())?));
            any = true;
        }
        if !any {
            return Err(format!("Signed header '{name}' is missing."));
        }
    }
    let token = names
        .contains(&"x-amz-security-token")
        .then(|| parts.headers.get("x-amz-security-token"))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let credentials = Credentials::new(akid.as_str(), secret.as_str(), token, None, "sluice-mock");
    let identity = credentials.into();
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = format!("http://bedrock.mock{path_and_query}");
    let expected = (|| {
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(sig.region)
            .name("bedrock")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .ok()?
            .into();
        let signable = SignableRequest::new(
            parts.method.as_str(),
            uri.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .ok()?;
        let (_, signature) = sign(signable, &params).ok()?.into_parts();
        Some(signature)
    })()
    .ok_or_else(|| MISMATCH.to_owned())?;
    if !constant_time_eq(expected.as_bytes(), sig.signature.as_bytes()) {
        return Err(MISMATCH.into());
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decodes `%XX` escapes of a path segment; `None` on a malformed escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The fields of a Bedrock request body the mock looks at.
#[derive(Deserialize)]
struct BedrockRequest<'a> {
    #[serde(default)]
    model: Option<IgnoredAny>,
    #[serde(default)]
    stream: Option<IgnoredAny>,
    /// Automatic caching: the Anthropic API and Vertex take it, Bedrock does not.
    #[serde(default)]
    cache_control: Option<IgnoredAny>,
    #[serde(borrow, default)]
    anthropic_version: Option<JsonStr<'a>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    messages: Option<IgnoredAny>,
}

async fn answer(
    state: &Arc<State>,
    raw_model: &str,
    stream: bool,
    sig: &SigV4<'_>,
    body: &Bytes,
    faults: &Faults,
    request_id: &str,
) -> Result<Response<MockBody>, DropConnection> {
    if let Some(status) = state.key_status(sig.access_key_id)
        && status != 200
    {
        return Ok(injected_error(status, request_id));
    }
    let status = faults.injected_status(state, body);
    if let Some(status) = status {
        return Ok(injected_error(status, request_id));
    }
    let Some(model) = percent_decode(raw_model).filter(|m| !m.is_empty()) else {
        return Ok(validation(
            "The provided model identifier is invalid.",
            request_id,
        ));
    };

    let req: BedrockRequest<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return Ok(validation(
                &format!("Malformed input request: {e}, please reformat your input and try again."),
                request_id,
            ));
        }
    };
    for (key, present) in [
        ("model", req.model.is_some()),
        ("stream", req.stream.is_some()),
        ("cache_control", req.cache_control.is_some()),
    ] {
        if present {
            let message = format!(
                "Malformed input request: #: extraneous key [{key}] is not permitted, please reformat your input and try again."
            );
            return Ok(validation(&message, request_id));
        }
    }
    match req.anthropic_version.as_ref().map(|v| v.0.as_ref()) {
        Some(ANTHROPIC_VERSION) => {}
        None => {
            return Ok(validation(
                "Malformed input request: #: required key [anthropic_version] not found, please reformat your input and try again.",
                request_id,
            ));
        }
        Some(_) => return Ok(validation("Invalid API version", request_id)),
    }
    let max_tokens = match req.max_tokens {
        None => {
            return Ok(validation(
                "Malformed input request: #: required key [max_tokens] not found, please reformat your input and try again.",
                request_id,
            ));
        }
        Some(0) => {
            return Ok(validation(
                "Malformed input request: #/max_tokens: 0 is not greater or equal to 1, please reformat your input and try again.",
                request_id,
            ));
        }
        Some(n) => n,
    };
    if req.messages.is_none() {
        return Ok(validation(
            "Malformed input request: #: required key [messages] not found, please reformat your input and try again.",
            request_id,
        ));
    }
    if faults.hang && !stream {
        std::future::pending::<()>().await;
    }

    let mut usage = match input_usage(state, sig.access_key_id, body, &model) {
        Ok(usage) => usage,
        Err(message) => return Ok(validation(&message, request_id)),
    };
    let (output, capped) = output_tokens(
        faults.output_tokens.or(state.opts.output_tokens),
        body.len(),
        max_tokens,
    );
    usage.output = output;
    let msg_id = state.next_message_number();
    if !stream {
        let json = render_message(msg_id, &model, &usage, capped, "standard");
        let mut resp = match faults.drop_after {
            None => Response::new(MockBody::full(json)),
            Some(0) => return Err(DropConnection),
            // Headers and half the body, then a cut connection.
            Some(_) => {
                let all = Bytes::from(json);
                let half = all.slice(..all.len() / 2);
                let s = EventStream::new(
                    vec![half],
                    Duration::ZERO,
                    StreamEnd::Drop,
                    Arc::clone(state),
                );
                Response::new(MockBody::Events(Box::new(s)))
            }
        };
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        insert_request_id(h, request_id);
        for (name, n) in [
            ("x-amzn-bedrock-input-token-count", usage.input),
            ("x-amzn-bedrock-output-token-count", usage.output),
            (
                "x-amzn-bedrock-cache-read-input-token-count",
                usage.cache_read,
            ),
            (
                "x-amzn-bedrock-cache-write-input-token-count",
                usage.cache_creation_5m + usage.cache_creation_1h,
            ),
        ] {
            h.insert(HeaderName::from_static(name), HeaderValue::from(n));
        }
        return Ok(resp);
    }

    let events = if faults.hang {
        Vec::new()
    } else {
        render_stream(msg_id, &model, &usage, capped, StreamFault::None)
    };
    let mut frames = Vec::with_capacity(events.len() + 1);
    for event in &events {
        if let Some(frame) = chunk_frame(event) {
            frames.push(frame);
        }
    }
    let end = if faults.hang {
        StreamEnd::Hang
    } else if let Some(k) = faults.drop_after {
        frames.truncate(k);
        StreamEnd::Drop
    } else if let Some(k) = faults.error_after {
        // Clamped so that the exception always replaces the last frame (`message_stop`).
        frames.truncate(k.min(frames.len().saturating_sub(1)));
        frames.push(exception_frame(
            "serviceUnavailableException",
            "Bedrock is unable to process your request.",
        ));
        StreamEnd::Finish
    } else {
        StreamEnd::Finish
    };
    let interval = faults.event_interval.unwrap_or(state.opts.event_interval);
    let s = EventStream::new(frames, interval, end, Arc::clone(state));
    let mut resp = Response::new(MockBody::Events(Box::new(s)));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(EVENTSTREAM));
    h.insert(
        HeaderName::from_static("x-amzn-bedrock-content-type"),
        HeaderValue::from_static("application/json"),
    );
    insert_request_id(h, request_id);
    Ok(resp)
}

fn encode(msg: &Message) -> Bytes {
    let mut out = Vec::with_capacity(msg.payload().len() + 128);
    // Writing fails only past the format's size limits, far beyond any rendered event.
    if write_message_to(msg, &mut out).is_err() {
        out.clear();
    }
    Bytes::from(out)
}

/// One rendered SSE event (`event: X\ndata: {json}\n\n`) as a `chunk` frame; `None` for `ping`,
/// which Bedrock does not send.
fn chunk_frame(sse: &[u8]) -> Option<Bytes> {
    let text = std::str::from_utf8(sse).ok()?;
    let (head, data) = text.split_once("\ndata: ")?;
    if head == "event: ping" {
        return None;
    }
    let data = data.trim_end_matches('\n');
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let mut payload = String::with_capacity(b64.len() + 24);
    payload.push_str(r#"{"bytes":""#);
    payload.push_str(&b64);
    payload.push_str(r#"","p":""#);
    payload.push_str(PADDING);
    payload.push_str(r#""}"#);
    let msg = Message::new(payload)
        .add_header(Header::new(
            ":event-type",
            FrameValue::String("chunk".into()),
        ))
        .add_header(Header::new(
            ":content-type",
            FrameValue::String("application/json".into()),
        ))
        .add_header(Header::new(
            ":message-type",
            FrameValue::String("event".into()),
        ));
    Some(encode(&msg))
}

fn exception_frame(exception_type: &'static str, message: &str) -> Bytes {
    let payload = serde_json::json!({ "message": message }).to_string();
    let msg = Message::new(payload)
        .add_header(Header::new(
            ":exception-type",
            FrameValue::String(exception_type.into()),
        ))
        .add_header(Header::new(
            ":content-type",
            FrameValue::String("application/json".into()),
        ))
        .add_header(Header::new(
            ":message-type",
            FrameValue::String("exception".into()),
        ));
    encode(&msg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use aws_smithy_eventstream::frame::read_message_from;

    #[test]
    fn amz_dates_parse() {
        assert_eq!(
            parse_amz_date("20150830T123600Z").unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_440_938_160)
        );
        assert_eq!(
            parse_amz_date("20000229T000000Z").unwrap(),
            UNIX_EPOCH + Duration::from_secs(951_782_400)
        );
        for bad in [
            "2015-08-30T12:36:00Z",
            "20151330T123600Z",
            "20150830T123600",
            "",
        ] {
            assert!(parse_amz_date(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn amz_dates_at_calendar_edges() {
        for (s, secs) in [
            ("19700101T000000Z", 0),
            ("19991231T235959Z", 946_684_799),
            ("20000101T000000Z", 946_684_800),
            ("20240228T235959Z", 1_709_164_799),
            ("20240229T120000Z", 1_709_208_000),
            ("20240301T000000Z", 1_709_251_200),
            ("21000301T000000Z", 4_107_542_400),
            // A 31st of a 30-day month runs into the next month.
            ("20260431T000000Z", 1_777_593_600),
        ] {
            assert_eq!(
                parse_amz_date(s),
                Some(UNIX_EPOCH + Duration::from_secs(secs)),
                "{s}"
            );
        }
        for before_1970 in ["19691231T235959Z", "00000101T000000Z", "00000301T000000Z"] {
            assert!(parse_amz_date(before_1970).is_none(), "{before_1970}");
        }
    }

    #[test]
    fn model_ids_decode() {
        assert_eq!(
            percent_decode("anthropic.claude-v1%3A0").unwrap(),
            "anthropic.claude-v1:0"
        );
        assert_eq!(percent_decode("a%2Fb").unwrap(), "a/b");
        assert!(percent_decode("a%zz").is_none());
        assert!(percent_decode("a%ff").is_none());
    }

    #[test]
    fn frames_carry_the_event_json() {
        let f = chunk_frame(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n").unwrap();
        let msg = read_message_from(f).unwrap();
        let header = |n: &str| {
            msg.headers()
                .iter()
                .find(|h| h.name().as_str() == n)
                .map(|h| h.value().as_string().unwrap().as_str().to_owned())
        };
        assert_eq!(header(":message-type").unwrap(), "event");
        assert_eq!(header(":event-type").unwrap(), "chunk");
        let v: serde_json::Value = serde_json::from_slice(msg.payload()).unwrap();
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["bytes"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, br#"{"type":"message_stop"}"#);
        assert_eq!(v["p"], PADDING);
        assert!(chunk_frame(b"event: ping\ndata: {\"type\":\"ping\"}\n\n").is_none());

        let e = read_message_from(exception_frame("throttlingException", "slow")).unwrap();
        assert_eq!(&e.payload()[..], br#"{"message":"slow"}"#);
    }

    #[test]
    fn injected_statuses_have_bedrock_shapes() {
        assert_eq!(shape_for_status(529).0, 503);
        assert_eq!(shape_for_status(529).1, "ServiceUnavailableException");
        assert_eq!(shape_for_status(429).1, "ThrottlingException");
        assert_eq!(shape_for_status(408).1, "ModelTimeoutException");
        assert_eq!(shape_for_status(500).1, "InternalServerException");
        assert_eq!(shape_for_status(418).1, "ValidationException");
    }
}
