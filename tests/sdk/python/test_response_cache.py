"""The response cache through the official Python SDK: a repeated call is answered by the
gateway (`x-sluice-cache: hit`) with the same message, and a streamed hit is a stream the SDK
parses into the same events and final message as the live one."""

from __future__ import annotations

import uuid

import anthropic
import pytest

from conftest import MODEL


@pytest.fixture()
def cached(sluice):
    with anthropic.Anthropic(
        base_url=sluice.gateway_url, api_key=sluice.keys["cached"], max_retries=0
    ) as c:
        yield c


def _messages(tag: str) -> list[dict]:
    return [{"role": "user", "content": f"Say hello ({tag}-{uuid.uuid4().hex})"}]


def test_a_repeated_call_is_a_hit(cached):
    messages = _messages("rc-json")
    first = cached.messages.with_raw_response.create(model=MODEL, max_tokens=32, messages=messages)
    assert first.headers["x-sluice-cache"] == "miss"
    again = cached.messages.with_raw_response.create(model=MODEL, max_tokens=32, messages=messages)
    assert again.headers["x-sluice-cache"] == "hit"
    assert int(again.headers["age"]) >= 0
    a, b = first.parse(), again.parse()
    assert b.id == a.id and b.content[0].text == a.content[0].text
    assert b.usage.output_tokens == a.usage.output_tokens


def test_a_streamed_hit_parses_like_the_live_stream(cached):
    messages = _messages("rc-stream")

    def run():
        with cached.messages.stream(model=MODEL, max_tokens=48, messages=messages) as s:
            kinds = [e.type for e in s]
            final = s.get_final_message()
            return s.response.headers.get("x-sluice-cache"), kinds, final

    h1, kinds1, final1 = run()
    h2, kinds2, final2 = run()
    assert (h1, h2) == ("miss", "hit")
    assert kinds2 == kinds1
    assert "message_stop" in kinds2
    assert final2.id == final1.id
    assert final2.content[0].text == final1.content[0].text
    assert final2.stop_reason == final1.stop_reason
    assert final2.usage.output_tokens == final1.usage.output_tokens > 0


def test_off_bypasses(cached):
    messages = _messages("rc-off")
    cached.messages.create(model=MODEL, max_tokens=16, messages=messages)
    raw = cached.messages.with_raw_response.create(
        model=MODEL, max_tokens=16, messages=messages, extra_headers={"x-sluice-cache": "off"}
    )
    assert raw.headers["x-sluice-cache"] == "bypass"
