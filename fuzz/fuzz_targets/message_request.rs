//! The request parser (and the reply parser) on arbitrary bytes: no panic, and the request
//! parser agrees with a full `serde_json::Value` parse of the same bytes.
//!
//! Known, accepted differences from `Value`, all in values the parser skips and all valid by the
//! JSON grammar: nesting deeper than serde_json's recursion limit of 128, lone UTF-16 surrogate
//! escapes (`"\ud800"`) and numbers beyond `f64` (`1e400`). serde_json checks skipped values
//! for syntax only, without building them. A repeated `model`, `max_tokens` or `stream` key is
//! refused, which `Value` (last key wins) cannot show. A `model` longer than `MAX_MODEL_LEN`
//! bytes or holding anything but printable ASCII is `InvalidField("model")`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sluice_anthropic::{
    MAX_MODEL_LEN, MessageRequest, Spans, WireError, cache_affinity_key, parse_message_request,
    parse_message_response, with_model,
};

/// What the request parser should say, computed from a full parse.
fn expected(v: &Value) -> Result<MessageRequest, WireError> {
    let Some(obj) = v.as_object() else {
        return Err(WireError::NotAnObject);
    };
    let invalid = |field: &'static str| WireError::InvalidField {
        field,
        reason: String::new(),
    };
    let model = match obj.get("model") {
        None | Some(Value::Null) => return Err(WireError::MissingModel),
        Some(Value::String(s)) if s.is_empty() => return Err(invalid("model")),
        // Bounded at parse: at most MAX_MODEL_LEN bytes of printable ASCII, after unescaping.
        Some(Value::String(s))
            if s.len() > MAX_MODEL_LEN || !s.bytes().all(|b| (b' '..=b'~').contains(&b)) =>
        {
            return Err(invalid("model"));
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid("model")),
    };
    let max_tokens = match obj.get("max_tokens") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(_) => return Err(invalid("max_tokens")),
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream")),
    };
    Ok(MessageRequest {
        model,
        max_tokens,
        stream,
        spans: Spans::default(),
    })
}

/// Errors compared without their free text.
fn shape(r: &Result<MessageRequest, WireError>) -> Result<MessageRequest, WireError> {
    match r {
        Ok(m) => Ok(MessageRequest {
            spans: Spans::default(),
            ..m.clone()
        }),
        Err(WireError::MalformedJson(_)) => Err(WireError::MalformedJson(String::new())),
        Err(WireError::NotAnObject) => Err(WireError::NotAnObject),
        Err(WireError::MissingModel) => Err(WireError::MissingModel),
        Err(WireError::InvalidField { field, .. }) => Err(WireError::InvalidField {
            field,
            reason: String::new(),
        }),
    }
}

fuzz_target!(|data: &[u8]| {
    let got = parse_message_request(data);
    let _ = parse_message_response(data);

    // Spans lie inside the body, the model's span is exactly its string token, and replacing
    // the model yields a body whose model is the new one.
    if let Ok(m) = &got {
        let _ = cache_affinity_key(data, m);
        for r in [&m.spans.tools, &m.spans.system, &m.spans.first_message].into_iter().flatten() {
            assert!(data.get(r.clone()).is_some(), "span {r:?} outside the body");
        }
        if let Some(r) = &m.spans.model {
            let token: String = serde_json::from_slice(&data[r.clone()]).unwrap();
            assert_eq!(token, m.model);
        }
        // `None` only where a full parse refuses what the partial one skipped (see above).
        if let Some(swapped) = with_model(data, m, "fuzz-model") {
            assert_eq!(parse_message_request(&swapped).unwrap().model, "fuzz-model");
        }
    }

    match (&got, serde_json::from_slice::<Value>(data)) {
        (Err(WireError::MalformedJson(_)), Err(_)) => {}
        (Err(WireError::MalformedJson(m)), Ok(_)) => panic!("valid JSON called malformed: {m}"),
        (_, Err(e)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("recursion limit")
                    || msg.contains("surrogate")
                    || msg.contains("number out of range"),
                "accepted what serde_json refuses: {msg} / {got:?}"
            );
        }
        (Err(WireError::InvalidField { reason, .. }), Ok(_))
            if reason == "must not be repeated" => {}
        (_, Ok(v)) => assert_eq!(shape(&got), expected(&v), "{v}"),
    }
});
