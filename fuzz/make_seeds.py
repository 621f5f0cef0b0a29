#!/usr/bin/env python3
"""Regenerate fuzz/seeds/ from the wire fixtures (tests/fixtures in the repository).

sse_tap seeds carry the target's control header (see fuzz_targets/sse_tap.rs) before a fixture
stream; message_request seeds are JSON bodies. Hand-found inputs (e.g. oracle_*) are kept.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")


def write(path, data):
    with open(os.path.join(HERE, "seeds", path), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


os.makedirs(os.path.join(HERE, "seeds", "sse_tap"), exist_ok=True)
os.makedirs(os.path.join(HERE, "seeds", "message_request"), exist_ok=True)

headers = {
    "whole": bytes([0x00]),  # no chunk sizes: 1-byte chunks, default limit
    "chunks_1_7_64": bytes([0x03, 0, 6, 63]),  # three chunk sizes, cycled
    "limit_48": bytes([0x50]),  # bit 4 set, control >> 5 == 2: 48-byte line limit
}
for name in ["stream_text.sse", "stream_thinking_tool_use.sse", "stream_error_midway.sse"]:
    data = fixture(name)
    base = name[: -len(".sse")]
    for tag, header in headers.items():
        write(f"sse_tap/{base}.{tag}", header + data)
    write(f"sse_tap/{base}.crlf", bytes([0x02, 2, 9]) + data.replace(b"\n", b"\r\n"))
    write(f"sse_tap/{base}.cr", bytes([0x01, 4]) + data.replace(b"\n", b"\r"))
write(
    "sse_tap/unnamed_bom_comments",
    bytes([0x01, 0])
    + b'\xef\xbb\xbf: hi\ndata: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":1}}}\n\n'
    + b'data:{"type":"message_delta",\ndata:"usage":{"output_tokens":2}}\n\n'
    + b"event: ping\ndata: x\nevent: message_stop\n\n",
)

for name in [
    "batch_create_request.json",
    "message_response.json",
    "message_response_tool_use.json",
    "count_tokens_response.json",
    "models_list.json",
    "errors.json",
]:
    write(f"message_request/{name}", fixture(name))
batch = json.loads(fixture("batch_create_request.json"))
write("message_request/params.json", json.dumps(batch["requests"][0]["params"]))
for name, body in {
    "stream_true.json": '{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"Hello"}],"system":[{"type":"text","text":"x","cache_control":{"type":"ephemeral","ttl":"1h"}}]}',
    "escaped_keys.json": '{"mod\\u0065l":"claude-\\u0068aiku","stream":null,"max_tokens":null}',
    "repeated_model.json": '{"model":"a","model":"b"}',
    "bad_types.json": '{"model":1,"max_tokens":-1.5e3,"stream":"yes"}',
    "not_object.json": '[{"model":"m"}]',
}.items():
    write(f"message_request/{name}", body)

# prompt_cache seeds: hand-written shapes of each point a marker can go (the run also reads the
# real-shaped bodies of fuzz/seeds/estimate_scan, so they are not copied here).
os.makedirs(os.path.join(HERE, "seeds", "prompt_cache"), exist_ok=True)
for name, body in {
    "empty_object.json": "{ }",
    "string_system.json": '{"model":"m","system":"caf\\u00e9 \\"cache_control\\"","messages":[{"role":"user","content":"hi"}]}',
    "array_system.json": '{"system":[{"type":"text","text":"a"},{"type":"text","text":""}],"tools":[{"name":"t","input_schema":{"properties":{"cache_control":{}}}}]}',
    "thinking_last.json": '{"messages":[{"content":[{"type":"text","text":"q"},{"type":"thinking","thinking":"t"}],"role":"user"},{"role":"assistant","content":"a"}]}',
    "nested_marker.json": '{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"1","content":[{"type":"text","text":"r","cache_control":{"type":"ephemeral"}}]}]}]}',
    "pretty.json": '{\n  "tools" : [ { "name" : "a" } ] ,\n  "system" : "s"\n}\n',
    "repeated_system.json": '{"system":"a","system":[]}',
}.items():
    write(f"prompt_cache/{name}", body)
