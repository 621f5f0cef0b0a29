"""Errors as the official Python SDK sees them through the gateway."""

from __future__ import annotations

import uuid

import anthropic
import pytest

from conftest import MODEL

MESSAGES = [{"role": "user", "content": "hello"}]


def test_wrong_key_is_authentication_error(sluice):
    with anthropic.Anthropic(
        base_url=sluice.gateway_url, api_key="sk-sluice-not-a-real-key", max_retries=0
    ) as c:
        with pytest.raises(anthropic.AuthenticationError) as e:
            c.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES)
    assert e.value.status_code == 401
    assert e.value.type == "authentication_error"


def test_upstream_key_is_not_a_gateway_key(sluice):
    with anthropic.Anthropic(
        base_url=sluice.gateway_url, api_key=sluice.upstream_key, max_retries=0
    ) as c:
        with pytest.raises(anthropic.AuthenticationError):
            c.models.list()


def test_wrong_bearer_token_is_authentication_error(sluice):
    with anthropic.Anthropic(
        base_url=sluice.gateway_url, auth_token="sk-sluice-nope", max_retries=0
    ) as c:
        with pytest.raises(anthropic.AuthenticationError):
            c.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES)


def test_overloaded_529(client):
    with pytest.raises(anthropic.APIStatusError) as e:
        client.messages.create(
            model=MODEL, max_tokens=16, messages=MESSAGES, extra_headers={"x-mock-status": "529"}
        )
    assert e.value.status_code == 529
    assert e.value.type == "overloaded_error"
    if hasattr(anthropic, "OverloadedError"):
        assert isinstance(e.value, anthropic.OverloadedError)


def test_rate_limited_429(client):
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(
            model=MODEL, max_tokens=16, messages=MESSAGES, extra_headers={"x-mock-status": "429"}
        )
    assert e.value.status_code == 429
    assert e.value.response.headers.get("retry-after") is not None


def test_internal_server_error_500(client):
    with pytest.raises(anthropic.InternalServerError) as e:
        client.messages.create(
            model=MODEL, max_tokens=16, messages=MESSAGES, extra_headers={"x-mock-status": "500"}
        )
    assert e.value.status_code == 500


def test_gateway_retries_once_for_everyone_and_tells_the_sdk_not_to_retry(sluice):
    """The gateway retries a 529 itself (3 attempts by default) and, once it gives up, says
    `x-should-retry: false`, so the SDK (max_retries=2 here) does not multiply the attempts."""
    marker = f"retry-{uuid.uuid4().hex}"
    with anthropic.Anthropic(base_url=sluice.gateway_url, api_key=sluice.key, max_retries=2) as c:
        with pytest.raises(anthropic.APIStatusError) as e:
            c.with_options(timeout=20).messages.create(
                model=MODEL, max_tokens=16,
                messages=[{"role": "user", "content": marker}],
                extra_headers={"x-mock-status": "529"},
            )
    assert e.value.status_code == 529
    assert e.value.response.headers["x-should-retry"] == "false"
    tries = [r for r in sluice.mock_requests() if marker in (r["body"] or "")]
    assert len(tries) == 3, len(tries)
    # All three come from the SDK's first attempt; the gateway passes its header on untouched.
    assert {r["headers"].get("x-stainless-retry-count") for r in tries} == {"0"}


def test_a_transient_529_is_absorbed_by_the_gateway(client):
    marker = f"transient-{uuid.uuid4().hex}"
    msg = client.messages.create(
        model=MODEL, max_tokens=16,
        messages=[{"role": "user", "content": marker}],
        extra_headers={"x-mock-fail-first": "2"},
    )
    assert msg.type == "message"


def test_missing_model_is_bad_request(client):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=anthropic.omit, max_tokens=16, messages=MESSAGES)
    assert e.value.status_code == 400
    assert e.value.type == "invalid_request_error"


def test_unknown_model_is_not_found_or_bad_request(client):
    with pytest.raises((anthropic.NotFoundError, anthropic.BadRequestError)):
        client.models.retrieve("claude-no-such-model")


def test_stream_error_mid_stream(client):
    received = []
    with pytest.raises(anthropic.APIError) as e:
        with client.messages.stream(
            model=MODEL, max_tokens=64, messages=MESSAGES,
            extra_headers={"x-mock-stream-error-after": "3"},
        ) as stream:
            for text in stream.text_stream:
                received.append(text)
    # The error arrives inside a 200 stream, after some events: the SDK surfaces it as an
    # APIError carrying the upstream error body.
    assert "overloaded_error" in str(e.value)


def test_raw_stream_error_mid_stream(client):
    events = []
    with pytest.raises(anthropic.APIError):
        stream = client.messages.create(
            model=MODEL, max_tokens=64, messages=MESSAGES, stream=True,
            extra_headers={"x-mock-stream-error-after": "4"},
        )
        for event in stream:
            events.append(event.type)
    assert events and events[0] == "message_start"
    assert "message_stop" not in events


def test_upstream_drop_mid_stream_is_an_error_not_a_short_reply(client):
    """The upstream cuts the connection mid-stream: the SDK must raise, never return a truncated
    message as if it were complete."""
    with pytest.raises(anthropic.APIError) as e:
        with client.messages.stream(
            model=MODEL, max_tokens=64, messages=MESSAGES,
            extra_headers={"x-mock-drop-after": "3"},
        ) as stream:
            for _ in stream.text_stream:
                pass
            stream.get_final_message()
    assert not isinstance(e.value, anthropic.APITimeoutError)


def test_upstream_drop_non_stream_is_server_error(client):
    with pytest.raises(anthropic.InternalServerError) as e:
        client.messages.create(
            model=MODEL, max_tokens=16, messages=MESSAGES, extra_headers={"x-mock-drop-after": "1"}
        )
    assert 500 <= e.value.status_code < 600
    assert e.value.type == "api_error"


def test_delete_batch_in_progress_is_bad_request(client):
    created = client.messages.batches.create(
        requests=[{"custom_id": "a", "params": {"model": MODEL, "max_tokens": 8, "messages": MESSAGES}}]
    )
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(created.id)
    client.messages.batches.retrieve(created.id)  # the mock ends a batch on the first fetch
    client.messages.batches.delete(created.id)


def test_sluice_rate_limit_is_a_rate_limit_error_naming_the_tenant(sluice):
    with anthropic.Anthropic(
        base_url=sluice.gateway_url, api_key=sluice.keys["capped"], max_retries=0
    ) as c:
        first = c.messages.with_raw_response.create(model=MODEL, max_tokens=16, messages=MESSAGES)
        assert first.headers["anthropic-ratelimit-requests-limit"] == "1"
        assert first.headers["anthropic-ratelimit-requests-remaining"] == "0"
        with pytest.raises(anthropic.RateLimitError) as e:
            c.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES)
    assert e.value.status_code == 429
    assert e.value.type == "rate_limit_error"
    assert "tenant 'capped' exhausted its requests per minute (1/min)" in e.value.message
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert e.value.response.headers["x-should-retry"] == "true"


def test_spent_budget_is_not_retried_by_the_sdk(sluice):
    before = sluice.gateway_log().count('"tenant":"broke"')
    # The SDK would retry a 429 twice; x-should-retry: false stops it.
    with anthropic.Anthropic(
        base_url=sluice.gateway_url, api_key=sluice.keys["broke"], max_retries=2
    ) as c:
        with pytest.raises(anthropic.RateLimitError) as e:
            c.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES)
    assert "daily spend budget" in e.value.message
    assert e.value.response.headers["x-should-retry"] == "false"
    import time

    time.sleep(0.3)  # the call's log line is written by a background thread
    assert sluice.gateway_log().count('"tenant":"broke"') - before == 1
