//! The walker's tests: whole bodies in, estimates and prefixes out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

fn est(s: &str) -> InputEstimate {
    estimate_input(s.as_bytes())
}

const SYS: &str = "You are a careful assistant for the accounts team. Answer briefly and cite the policy section you rely on.";

#[test]
fn key_order_and_layout_do_not_matter() {
    let a = est(&format!(
        r#"{{"model":"m","max_tokens":5,"system":"{SYS}","messages":[{{"role":"user","content":"Hello there, how are you?"}}]}}"#
    ));
    let b = est(&format!(
        "{{\n  \"messages\": [ {{ \"content\": \"Hello there, how are you?\", \"role\": \"user\" }} ],\n  \"system\": \"{SYS}\",\n  \"model\": \"m\"\n}}"
    ));
    assert!(a.parsed && b.parsed);
    assert_eq!(a.total, b.total);
    assert!(a.total > 20 && a.total < 60, "{}", a.total);
    assert_eq!(a.prefix_hash, None);
    assert_eq!(a.cached_prefix_tokens, 0);
}

#[test]
fn tracking_prefixes_does_not_change_the_count() {
    // Only a body naming `cache_control` is walked with prefix tracking; the count must
    // not depend on it.
    for body in [
        format!(r#"{{"model":"m","system":"{SYS}","messages":[{{"role":"user","content":"Hi"}}]}}"#),
        format!(
            r#"{{"tools":[{{"name":"t","description":"d","input_schema":{{"type":"object"}}}}],"tool_choice":{{"type":"any"}},"system":[{{"type":"text","text":"{SYS}"}}],"messages":[{{"content":[{{"type":"text","text":"a"}},{{"type":"image","source":{{"type":"url","url":"u"}}}}],"role":"user"}},{{"role":"assistant","content":"b"}}],"model":"claude-opus-4-7"}}"#
        ),
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}]}]}"#.to_string(),
        r#"{"messages":"hi","system":42,"tools":{"a":1}}"#.to_string(),
    ] {
        let (plain, tracked) = (walk(body.as_bytes(), false, false), walk(body.as_bytes(), true, false));
        assert_eq!(plain.total, tracked.total, "{body}");
        assert_eq!(plain.breakpoints(), &[][..]);
        assert_eq!(estimate_input(body.as_bytes()), if body.contains("cache_control") { tracked } else { plain });
    }
    // The word in a text is not a breakpoint.
    let e = est(
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"what is cache_control?"}]}]}"#,
    );
    assert!(e.parsed && e.prefix_hash.is_none());
}

#[test]
fn malformed_or_hostile_bodies_fall_back() {
    for bad in [
        &b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"[..],
        b"[]",
        b"\"just a string\"",
        b"{\"messages\": [1, 2,]}",
        b"{} trailing",
        b"",
    ] {
        let e = estimate_input(bad);
        assert!(!e.parsed, "{}", String::from_utf8_lossy(bad));
        assert_eq!(e.total, (bad.len() as u64).div_ceil(4).max(1));
    }
    // Deep nesting is refused without recursing to the bottom.
    let deep = format!(
        "{{\"messages\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(!est(&deep).parsed);
    // Odd shapes that are still JSON objects are walked, never trusted.
    let e = est(r#"{"messages":"hi","system":42,"tools":{"a":1}}"#);
    assert!(e.parsed);
}

#[test]
fn cache_prefix_ends_at_the_last_breakpoint_in_upstream_order() {
    // Messages come first in the body (as the Python SDK writes it); tools and system
    // still come first in the prefix.
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":[{{"type":"text","text":"What is the refund window for annual plans?"}}]}}],
               "model":"m","system":[{{"type":"text","text":"{SYS}","cache_control":{{"type":"ephemeral"}}}}],
               "tools":[{{"name":"lookup","description":"Look up a policy section.","input_schema":{{"type":"object","properties":{{"q":{{"type":"string"}}}}}}}}]}}"#
    );
    let e = est(&body);
    let h = e.prefix_hash.unwrap();
    assert_eq!(e.breakpoints().len(), 1);
    assert!(
        e.cached_prefix_tokens > 346,
        "tool prompt, tool and system are in the prefix"
    );
    assert!(e.cached_prefix_tokens < e.total);
    // Another question, same prefix: same hash and tokens.
    let other = est(&body.replace("refund window for annual plans", "price of the team plan"));
    assert_eq!(other.prefix_hash, Some(h));
    assert_eq!(other.cached_prefix_tokens, e.cached_prefix_tokens);
    // Another model, another cache.
    assert_ne!(est(&body.replace("\"m\"", "\"m2\"")).prefix_hash, Some(h));
    // Another system prompt, another prefix.
    assert_ne!(
        est(&body.replace("careful", "cheerful")).prefix_hash,
        Some(h)
    );
    // tool_choice any costs the documented 33 tokens less.
    let any = est(&body.replace(
        "\"model\":\"m\"",
        "\"model\":\"m\",\"tool_choice\":{\"type\":\"any\"}",
    ));
    assert_eq!(e.total - any.total, 33);
}

#[test]
fn a_moved_breakpoint_is_found_by_lookback() {
    let turn = |q: &str, a: &str| {
        format!(
            r#"{{"role":"user","content":[{{"type":"text","text":"{q}"}}]}},{{"role":"assistant","content":"{a}"}}"#
        )
    };
    let cc = r#","cache_control":{"type":"ephemeral"}"#;
    let last = |q: &str, cached: bool| {
        format!(
            r#"{{"role":"user","content":[{{"type":"text","text":"{q}"{}}}]}}"#,
            if cached { cc } else { "" }
        )
    };
    let t1 = turn(
        "Draft a polite reminder about the unpaid invoice.",
        "Here is a draft: Dear customer, ...",
    );
    let first = est(&format!(
        r#"{{"model":"m","system":"{SYS}","messages":[{t1},{}]}}"#,
        last("Make it shorter.", true)
    ));
    // The next turn: the old breakpoint lost its marker, a new one sits on the new question.
    let second = est(&format!(
        r#"{{"model":"m","system":"{SYS}","messages":[{t1},{},{{"role":"assistant","content":"Dear customer, please pay invoice 42."}},{}]}}"#,
        last("Make it shorter.", false),
        last("Now translate it to German.", true)
    ));
    let written = first.breakpoints()[0];
    assert_ne!(second.prefix_hash, Some(written.hash));
    let hit = second.lookback().iter().find(|p| p.hash == written.hash);
    assert_eq!(
        hit.copied(),
        Some(written),
        "lookback: {:?}",
        second.lookback()
    );
    assert!(second.cached_prefix_tokens > written.tokens);
}

#[test]
fn images_documents_and_models() {
    let url = est(
        r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://example.com/a.png"}}]}]}"#,
    );
    let hi = est(
        r#"{"model":"claude-opus-4-7","messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://example.com/a.png"}}]}]}"#,
    );
    assert!((1600..1620).contains(&url.total), "{}", url.total);
    assert!((4784..4810).contains(&hi.total), "{}", hi.total);
    // A 2×2 PNG, its header readable through base64.
    let png = est(
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMAAAA0ABAUqn9eGAAAAAElFTkSuQmCC"}}]}]}"#,
    );
    assert!(png.total < 20, "{}", png.total);
    let pdf_url = est(
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"document","source":{"type":"url","url":"https://example.com/a.pdf"}}]}]}"#,
    );
    assert!(pdf_url.total >= 5 * 2250);
}

#[test]
fn automatic_breakpoints_close_each_part_and_match_a_clients_own() {
    let body = |user: &str, marker: &str| {
        format!(
            r#"{{"model":"m","system":[{{"type":"text","text":"{SYS}"{marker}}}],"messages":[{{"role":"user","content":"{user}"}}]}}"#
        )
    };
    let plain = body("Hello there", "");
    // Without markers, the plain estimate tracks nothing; the automatic one closes `system`
    // and the last message, and counts the same tokens.
    assert!(est(&plain).breakpoints().is_empty());
    let a = estimate_input_auto(plain.as_bytes());
    assert_eq!(a.total, est(&plain).total);
    assert_eq!(a.breakpoints().len(), 2);
    let (sys, last) = (a.breakpoints()[0], a.breakpoints()[1]);
    assert!(sys.tokens < last.tokens && last.tokens <= a.total);
    // Another conversation on the same system prompt shares the system breakpoint, which is
    // the prefix a client's own marker there would name.
    let b = estimate_input_auto(body("Something else entirely", "").as_bytes());
    assert_eq!(b.breakpoints()[0].hash, sys.hash);
    assert_ne!(b.breakpoints()[1].hash, last.hash);
    let own = est(&body(
        "Hello there",
        r#","cache_control":{"type":"ephemeral"}"#,
    ));
    assert_eq!(own.breakpoints()[0].hash, sys.hash);
    // A body that declares its own breakpoints keeps them, automatic or not.
    let own_auto = estimate_input_auto(
        body("Hello there", r#","cache_control":{"type":"ephemeral"}"#).as_bytes(),
    );
    assert_eq!(own_auto.breakpoints().len(), own.breakpoints().len());
}
