"""Messages, token counting and models through the gateway, with the official Python SDK."""

from __future__ import annotations

import asyncio
import uuid

import anthropic
import pytest

from conftest import MODEL


def _prompt(tag: str) -> tuple[str, list[dict]]:
    marker = f"{tag}-{uuid.uuid4().hex}"
    return marker, [{"role": "user", "content": f"Say hello ({marker})"}]


def _check_usage(usage) -> None:
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    # The cache fields are part of the upstream shape; the SDK must parse them.
    assert usage.cache_creation_input_tokens is not None
    assert usage.cache_read_input_tokens is not None


def test_create(client, sluice):
    marker, messages = _prompt("create")
    msg = client.messages.create(model=MODEL, max_tokens=64, messages=messages)
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.model == MODEL
    assert msg.id.startswith("msg_")
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.content and msg.content[0].type == "text"
    assert msg.content[0].text.strip()
    _check_usage(msg.usage)
    # The request id the upstream assigned reaches the SDK (`request-id` response header).
    assert msg._request_id and msg._request_id.startswith("req_")

    # The upstream saw the upstream key, never the gateway key.
    seen = sluice.upstream_request_containing(marker)
    assert seen["method"] == "POST" and seen["path"] == "/v1/messages"
    assert seen["headers"]["x-api-key"] == sluice.upstream_key
    assert sluice.key not in str(seen["headers"])
    # The SDK's own API version header reaches the upstream unchanged.
    from anthropic._constants import ANTHROPIC_API_VERSION

    assert seen["headers"].get("anthropic-version") == ANTHROPIC_API_VERSION


def test_create_with_raw_response_headers(client):
    _, messages = _prompt("raw")
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=16, messages=messages)
    assert raw.status_code == 200
    assert raw.headers.get("request-id", "").startswith("req_")
    # Organisation-wide rate-limit headers of the upstream account are not leaked to tenants.
    leaked = [h for h in raw.headers if h.lower().startswith("anthropic-ratelimit-")]
    assert leaked == []
    msg = raw.parse()
    assert msg.content[0].text


def test_output_tokens_knob_passes_through(client):
    _, messages = _prompt("tokens")
    msg = client.messages.create(
        model=MODEL, max_tokens=64, messages=messages,
        extra_headers={"x-mock-output-tokens": "5"},
    )
    assert msg.usage.output_tokens == 5


def test_stream_helper(client):
    _, messages = _prompt("stream")
    with client.messages.stream(model=MODEL, max_tokens=64, messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip()
    assert final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens")
    _check_usage(final.usage)


def test_create_stream_raw_events(client):
    _, messages = _prompt("rawstream")
    stream = client.messages.create(model=MODEL, max_tokens=32, messages=messages, stream=True)
    types = []
    text = ""
    output_tokens = None
    input_tokens = None
    with stream:
        for event in stream:
            types.append(event.type)
            if event.type == "message_start":
                input_tokens = event.message.usage.input_tokens
            elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
            elif event.type == "message_delta":
                output_tokens = event.usage.output_tokens
    assert types[0] == "message_start"
    assert types[-1] == "message_stop"
    for t in ("content_block_start", "content_block_delta", "content_block_stop", "message_delta"):
        assert t in types
    assert text.strip()
    assert input_tokens and input_tokens > 0
    assert output_tokens and output_tokens > 0


def test_count_tokens(client):
    _, messages = _prompt("count")
    res = client.messages.count_tokens(model=MODEL, messages=messages)
    assert res.input_tokens > 0
    longer = client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "word " * 400}]
    )
    assert longer.input_tokens > res.input_tokens


def test_models_list_and_retrieve(client):
    first_page = client.models.list(limit=2)
    assert len(first_page.data) == 2
    assert first_page.has_more is True
    all_ids = [m.id for m in client.models.list(limit=2)]  # auto-paginates (after_id)
    assert len(all_ids) > 2
    assert len(set(all_ids)) == len(all_ids)
    assert MODEL in all_ids
    pages = list(client.models.list(limit=2).iter_pages())
    assert len(pages) >= 2
    assert [m.id for p in pages for m in p.data] == all_ids

    model = client.models.retrieve(MODEL)
    assert model.id == MODEL
    assert model.type == "model"
    assert model.display_name


def test_bearer_auth_token(sluice):
    _, messages = _prompt("bearer")
    with anthropic.Anthropic(
        base_url=sluice.gateway_url, auth_token=sluice.key, max_retries=0
    ) as c:
        msg = c.messages.create(model=MODEL, max_tokens=16, messages=messages)
        assert msg.content[0].text
        assert c.models.retrieve(MODEL).id == MODEL


def test_x_api_key_header(sluice):
    """`x-api-key`, as SDKs before 2.x send `api_key` (2.x sends it as a Bearer token)."""
    marker, messages = _prompt("xapikey")
    with anthropic.Anthropic(
        base_url=sluice.gateway_url, default_headers={"x-api-key": sluice.key}, max_retries=0
    ) as c:
        raw = c.messages.with_raw_response.create(model=MODEL, max_tokens=16, messages=messages)
        assert raw.http_request.headers.get("x-api-key") == sluice.key
        assert "authorization" not in raw.http_request.headers
        assert raw.parse().content[0].text
    seen = sluice.upstream_request_containing(marker)
    assert seen["headers"]["x-api-key"] == sluice.upstream_key


def test_second_tenant_key_works(sluice):
    _, messages = _prompt("email")
    with anthropic.Anthropic(
        base_url=sluice.gateway_url, api_key=sluice.keys["email"], max_retries=0
    ) as c:
        assert c.messages.create(model=MODEL, max_tokens=16, messages=messages).content


def test_beta_messages(client, sluice):
    marker, messages = _prompt("beta")
    raw = client.beta.messages.with_raw_response.create(
        model=MODEL, max_tokens=32, messages=messages, betas=["prompt-caching-2024-07-31"]
    )
    msg = raw.parse()
    assert msg.content[0].text
    assert msg.usage.input_tokens > 0

    seen = sluice.upstream_request_containing(marker)
    assert seen["path"] == "/v1/messages"
    # Whatever query the SDK sends (older SDKs add `?beta=true`, 2.x does not) reaches the upstream.
    sent_query = raw.http_request.url.query.decode() or None
    assert seen["query"] == sent_query
    assert "prompt-caching-2024-07-31" in seen["headers"].get("anthropic-beta", "")
    assert seen["headers"]["x-api-key"] == sluice.upstream_key
    assert sluice.key not in str(seen["headers"])
    assert "authorization" not in seen["headers"]


def test_beta_query_passes_through(client, sluice):
    """`?beta=true`, as the SDKs before 2.x send it on every beta call, reaches the upstream."""
    marker, messages = _prompt("betaquery")
    msg = client.beta.messages.create(
        model=MODEL, max_tokens=16, messages=messages, betas=["prompt-caching-2024-07-31"],
        extra_query={"beta": "true"},
    )
    assert msg.content[0].text
    seen = sluice.upstream_request_containing(marker)
    assert seen["path"] == "/v1/messages"
    assert "beta=true" in (seen["query"] or "")
    assert "prompt-caching-2024-07-31" in seen["headers"].get("anthropic-beta", "")
    assert seen["headers"]["x-api-key"] == sluice.upstream_key
    assert sluice.key not in str(seen["headers"])


def test_beta_stream_and_count_tokens(client):
    _, messages = _prompt("betastream")
    with client.beta.messages.stream(
        model=MODEL, max_tokens=32, messages=messages, betas=["prompt-caching-2024-07-31"]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip() and final.usage.output_tokens > 0
    counted = client.beta.messages.count_tokens(
        model=MODEL, messages=messages, betas=["prompt-caching-2024-07-31"]
    )
    assert counted.input_tokens > 0


def test_async_client(sluice):
    async def run():
        async with anthropic.AsyncAnthropic(
            base_url=sluice.gateway_url, api_key=sluice.key, max_retries=0
        ) as c:
            _, messages = _prompt("async")
            msg = await c.messages.create(model=MODEL, max_tokens=32, messages=messages)
            assert msg.content[0].text
            assert msg._request_id
            _check_usage(msg.usage)

            _, messages = _prompt("asyncstream")
            async with c.messages.stream(model=MODEL, max_tokens=32, messages=messages) as s:
                chunks = [t async for t in s.text_stream]
                final = await s.get_final_message()
            assert "".join(chunks).strip()
            assert final.content[0].text == "".join(chunks)
            _check_usage(final.usage)

    asyncio.run(run())


def _call_log_line(sluice, request_id: str, timeout: float = 5.0) -> dict:
    import json
    import time

    deadline = time.monotonic() + timeout
    while True:
        for line in sluice.gateway_log().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("target") == "sluice::call" and rec.get("request_id") == request_id:
                return rec
        assert time.monotonic() < deadline, f"no sluice::call line for {request_id}"
        time.sleep(0.05)


def test_sdk_calls_are_metered(client, sluice):
    """What the SDK reports as usage is what the gateway records for the tenant."""
    _, messages = _prompt("meter")
    msg = client.messages.create(
        model=MODEL, max_tokens=64, messages=messages, extra_headers={"x-mock-output-tokens": "7"}
    )
    rec = _call_log_line(sluice, msg._request_id)
    assert rec["tenant"] == "web"
    assert rec["streamed"] is False
    assert rec["input_tokens"] == msg.usage.input_tokens
    assert rec["output_tokens"] == msg.usage.output_tokens == 7

    _, messages = _prompt("meterstream")
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=messages, extra_headers={"x-mock-output-tokens": "9"}
    ) as stream:
        final = stream.get_final_message()
        request_id = stream.response.headers.get("request-id")
    rec = _call_log_line(sluice, request_id)
    assert rec["tenant"] == "web"
    assert rec["streamed"] is True
    assert rec["input_tokens"] == final.usage.input_tokens
    assert rec["output_tokens"] == final.usage.output_tokens == 9
