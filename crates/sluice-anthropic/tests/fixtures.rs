//! The wire fixtures in the repository's `tests/fixtures`, read at test time, against the exact
//! numbers they contain.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sluice_anthropic::{
    ContentBytes, SseTap, StreamError, StreamSummary, WireError, error_body, parse_message_request,
    parse_message_response, sse_error_event,
};
use sluice_core::Usage;
use std::path::PathBuf;

fn fixture(name: &str) -> Vec<u8> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "../../tests/fixtures", name]
        .iter()
        .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tap(bytes: &[u8]) -> StreamSummary {
    let mut tap = SseTap::new();
    tap.feed(bytes);
    tap.finish();
    tap.summary().clone()
}

fn stream_text() -> StreamSummary {
    StreamSummary {
        message_id: Some("msg_01UEqDsSAVJ3Yf5Wdz8W1Cz2".into()),
        model: Some("claude-sonnet-4-5-20250929".into()),
        stop_reason: Some("end_turn".into()),
        usage: Usage {
            input_tokens: 25,
            output_tokens: 15,
            cache_read_input_tokens: 1800,
            ..Usage::default()
        },
        saw_message_start: true,
        saw_message_stop: true,
        error: None,
        events: 9,
        content: ContentBytes {
            text: 29,
            ..ContentBytes::default()
        },
        final_usage: true,
    }
}

fn stream_thinking_tool_use() -> StreamSummary {
    StreamSummary {
        message_id: Some("msg_014p7gG3wDgGV9EUtLvnow3U".into()),
        model: Some("claude-opus-4-5-20251101".into()),
        stop_reason: Some("tool_use".into()),
        usage: Usage {
            input_tokens: 472,
            output_tokens: 89,
            ..Usage::default()
        },
        saw_message_start: true,
        saw_message_stop: true,
        error: None,
        events: 12,
        content: ContentBytes {
            text: 51,
            json: 33,
            signature: 53,
        },
        final_usage: true,
    }
}

fn stream_error_midway() -> StreamSummary {
    StreamSummary {
        message_id: Some("msg_01Err0rMidStream00000001".into()),
        model: Some("claude-sonnet-4-5-20250929".into()),
        stop_reason: None,
        usage: Usage {
            input_tokens: 310,
            output_tokens: 1,
            ..Usage::default()
        },
        saw_message_start: true,
        saw_message_stop: false,
        error: Some(StreamError {
            error_type: "overloaded_error".into(),
            message: "Overloaded".into(),
        }),
        events: 4,
        content: ContentBytes {
            text: 12,
            ..ContentBytes::default()
        },
        final_usage: false,
    }
}

fn streams() -> [(&'static str, StreamSummary); 3] {
    [
        ("stream_text.sse", stream_text()),
        ("stream_thinking_tool_use.sse", stream_thinking_tool_use()),
        ("stream_error_midway.sse", stream_error_midway()),
    ]
}

#[test]
fn fixture_path_resolves() {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "../../tests/fixtures"]
        .iter()
        .collect();
    assert!(dir.join("README.md").is_file(), "{}", dir.display());
}

#[test]
fn streams_give_exact_summaries() {
    for (name, want) in streams() {
        assert_eq!(tap(&fixture(name)), want, "{name}");
    }
}

#[test]
fn streams_give_the_same_summary_byte_by_byte_and_before_finish() {
    for (name, want) in streams() {
        let bytes = fixture(name);
        let mut t = SseTap::new();
        for b in &bytes {
            t.feed(std::slice::from_ref(b));
        }
        // Every fixture ends with its blank line, so nothing is left for `finish`.
        assert_eq!(t.summary(), &want, "{name}");
        t.finish();
        assert_eq!(t.summary(), &want, "{name}");
    }
}

#[test]
fn message_delta_usage_overrides_field_by_field() {
    // The tool-use stream's message_delta repeats input_tokens; the text stream's does not, and
    // its cache read from message_start must survive.
    assert_eq!(
        tap(&fixture("stream_text.sse"))
            .usage
            .cache_read_input_tokens,
        1800
    );
    assert_eq!(
        tap(&fixture("stream_thinking_tool_use.sse"))
            .usage
            .input_tokens,
        472
    );
    let mut t = SseTap::new();
    t.feed(&fixture("stream_text.sse"));
    t.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null},\"usage\":{\"output_tokens\":20,\"cache_read_input_tokens\":null,\"cache_creation_input_tokens\":7}}\n\n");
    let s = t.summary();
    assert_eq!(
        s.stop_reason.as_deref(),
        Some("end_turn"),
        "null does not clear it"
    );
    assert_eq!(s.usage.output_tokens, 20);
    assert_eq!(s.usage.cache_read_input_tokens, 1800, "null is not carried");
    assert_eq!(s.usage.cache_creation_input_tokens, 7);
    assert_eq!(s.usage.cache_creation_5m_input_tokens, 7);
}

#[test]
fn streams_with_crlf_and_cr_line_ends() {
    for (name, want) in streams() {
        let text = String::from_utf8(fixture(name)).unwrap();
        for eol in ["\r\n", "\r"] {
            let converted = text.replace('\n', eol);
            assert_eq!(tap(converted.as_bytes()), want, "{name} {eol:?}");
        }
    }
}

#[test]
fn streams_with_comments_no_space_and_multi_line_data() {
    for (name, want) in streams() {
        let text = String::from_utf8(fixture(name)).unwrap();
        let commented = format!(
            ": stream opened\n{}",
            text.replace("\n\n", "\n: keep-alive\n\n: between events\n")
        );
        assert_eq!(tap(commented.as_bytes()), want, "{name} comments");
        let no_space = text.replace("data: ", "data:").replace("event: ", "event:");
        assert_eq!(tap(no_space.as_bytes()), want, "{name} no space");
        // Break each JSON object after every `{` that opens a typed object: JSON whitespace.
        let multi = text.replace("{\"type\":", "{\ndata: \"type\":");
        assert!(multi.len() > text.len());
        assert_eq!(tap(multi.as_bytes()), want, "{name} multi-line data");
        let ids = text.replace("event: ", "id: 1\nretry: 10\nevent: ");
        assert_eq!(tap(ids.as_bytes()), want, "{name} id and retry");
    }
}

#[test]
fn streams_without_event_lines_are_judged_by_json_type() {
    for (name, want) in streams() {
        let text = String::from_utf8(fixture(name)).unwrap();
        let unnamed: String = text
            .lines()
            .filter(|l| !l.starts_with("event:"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(tap(unnamed.as_bytes()), want, "{name}");
    }
}

#[test]
fn truncated_streams_keep_what_complete_lines_said() {
    let bytes = fixture("stream_text.sse");
    let text = std::str::from_utf8(&bytes).unwrap();
    // Cut right after the message_delta data line: no blank line, no message_stop.
    let cut = text.find("\n\nevent: message_stop").unwrap() + 1;
    let s = tap(&bytes[..cut]);
    assert_eq!(s.stop_reason.as_deref(), Some("end_turn"));
    assert_eq!(s.usage.output_tokens, 15);
    assert!(!s.saw_message_stop);
    assert_eq!(s.events, 8);
    // The final count arrived: it is charged as reported.
    assert_eq!(s.charged_usage(), (s.usage, false));
    // Cut inside the message_delta data line: the partial line is dropped.
    let s = tap(&bytes[..cut - 10]);
    assert_eq!(s.stop_reason, None);
    assert_eq!(s.usage.output_tokens, 1);
    assert_eq!(s.events, 7);
    // Without it, the output charged is the estimate from the 29 bytes of text seen.
    let (charged, estimated) = s.charged_usage();
    assert!(estimated);
    assert_eq!(charged.output_tokens, 8);
    assert_eq!(charged.input_tokens, 25);
    assert_eq!(charged.cache_read_input_tokens, 1800);
}

#[test]
fn a_cut_tool_use_stream_is_charged_for_thinking_signature_and_tool_input() {
    let bytes = fixture("stream_thinking_tool_use.sse");
    let text = std::str::from_utf8(&bytes).unwrap();
    let cut = text.find("event: message_delta").unwrap();
    let s = tap(&bytes[..cut]);
    // 51 bytes of thinking at 4, 53 of signature at 3, 33 of tool JSON at 3, each rounded up.
    assert_eq!(s.content.tokens(), 13 + 18 + 11);
    assert_eq!(s.charged_usage().0.output_tokens, 42);
    // Cut inside the last tool-input delta line: only complete lines count.
    let cut = text.find("ncisco, CA").unwrap();
    let s = tap(&bytes[..cut]);
    assert_eq!(s.content.json, 21);
}

#[test]
fn the_injected_error_event_reads_back() {
    let mut t = SseTap::new();
    let bytes = fixture("stream_text.sse");
    let text = std::str::from_utf8(&bytes).unwrap();
    let cut = text.find("event: content_block_stop").unwrap();
    t.feed(&bytes[..cut]);
    t.feed(&sse_error_event("api_error", "upstream connection lost"));
    t.finish();
    let s = t.summary();
    assert_eq!(
        s.error,
        Some(StreamError {
            error_type: "api_error".into(),
            message: "upstream connection lost".into()
        })
    );
    assert!(!s.saw_message_stop);
    assert_eq!(s.usage.cache_read_input_tokens, 1800);
}

#[test]
fn message_replies() {
    let s = parse_message_response(&fixture("message_response.json")).unwrap();
    assert_eq!(s.id.as_deref(), Some("msg_01XFDUDYJgAACzvnptvVoYEL"));
    assert_eq!(s.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(s.stop_reason.as_deref(), Some("end_turn"));
    assert_eq!(
        s.usage,
        Usage {
            input_tokens: 21,
            output_tokens: 9,
            cache_creation_input_tokens: 1532,
            cache_creation_5m_input_tokens: 1532,
            cache_creation_1h_input_tokens: 0,
            cache_read_input_tokens: 0,
        }
    );
    assert_eq!(s.usage.rate_limited_input(), 1553);

    let s = parse_message_response(&fixture("message_response_tool_use.json")).unwrap();
    assert_eq!(s.id.as_deref(), Some("msg_01Aq9w938a90dw8q"));
    assert_eq!(s.model.as_deref(), Some("claude-opus-4-5-20251101"));
    assert_eq!(s.stop_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        s.usage,
        Usage {
            input_tokens: 412,
            output_tokens: 73,
            cache_read_input_tokens: 2048,
            ..Usage::default()
        }
    );
    assert_eq!(s.usage.total_input(), 2460);
}

#[test]
fn batch_results_messages_parse_and_errors_do_not() {
    let bytes = fixture("batch_results.jsonl");
    let lines: Vec<serde_json::Value> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let message = serde_json::to_vec(&lines[0]["result"]["message"]).unwrap();
    let s = parse_message_response(&message).unwrap();
    assert_eq!(s.id.as_deref(), Some("msg_01B2"));
    assert_eq!(s.model.as_deref(), Some("claude-haiku-4-5-20251001"));
    assert_eq!(s.usage.input_tokens, 24);
    assert_eq!(s.usage.output_tokens, 14);
    let error = serde_json::to_vec(&lines[1]["result"]["error"]).unwrap();
    assert_eq!(parse_message_response(&error), None);
}

#[test]
fn non_message_replies() {
    assert_eq!(
        parse_message_response(&fixture("batch_response.json")),
        None
    );
    // Bodies without a top-level `type` are not refused; they simply carry no usage the reply
    // reader knows (count_tokens' `input_tokens` is at top level, not in `usage`).
    for name in ["count_tokens_response.json", "models_list.json"] {
        let s = parse_message_response(&fixture(name)).unwrap();
        assert_eq!(s.usage, Usage::default(), "{name}");
        assert_eq!(s.id, None, "{name}");
    }
}

#[test]
fn error_bodies_match_the_upstream_byte_for_byte() {
    let all: serde_json::Value = serde_json::from_slice(&fixture("errors.json")).unwrap();
    let mut seen = 0;
    for (status, body) in all.as_object().unwrap() {
        if status.starts_with('_') {
            continue;
        }
        seen += 1;
        let raw = serde_json::to_vec(body).unwrap();
        assert_eq!(parse_message_response(&raw), None, "{status}");
        let ours = error_body(
            body["error"]["type"].as_str().unwrap(),
            body["error"]["message"].as_str().unwrap(),
            body["request_id"].as_str(),
        );
        assert_eq!(
            std::str::from_utf8(&ours).unwrap(),
            std::str::from_utf8(&raw).unwrap(),
            "{status}"
        );
        // The body requests carry is not a message request either.
        assert_eq!(parse_message_request(&raw), Err(WireError::MissingModel));
    }
    assert_eq!(seen, 10);
}

#[test]
fn batch_create_request() {
    let bytes = fixture("batch_create_request.json");
    // The batch body nests its models in `requests[].params`; the top level has none.
    assert_eq!(parse_message_request(&bytes), Err(WireError::MissingModel));
    let all: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    for request in all["requests"].as_array().unwrap() {
        let params = serde_json::to_vec(&request["params"]).unwrap();
        let r = parse_message_request(&params).unwrap();
        assert_eq!(
            (r.model.as_str(), r.max_tokens, r.stream),
            ("claude-haiku-4-5-20251001", Some(256), false)
        );
    }
}

#[test]
fn other_json_fixtures_through_the_request_parser() {
    for name in [
        "message_response.json",
        "message_response_tool_use.json",
        "models_list.json",
    ] {
        let r = parse_message_request(&fixture(name));
        match name {
            "models_list.json" => assert_eq!(r, Err(WireError::MissingModel)),
            _ => assert!(
                r.is_ok(),
                "{name}: a reply has a model, and that is all it checks"
            ),
        }
    }
    assert!(matches!(
        parse_message_request(&fixture("batch_results.jsonl")),
        Err(WireError::MalformedJson(_))
    ));
    assert!(matches!(
        parse_message_request(&fixture("stream_text.sse")),
        Err(WireError::MalformedJson(_))
    ));
}
