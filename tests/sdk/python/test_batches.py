"""Message Batches through the gateway, with the official Python SDK."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anthropic
import pytest

REPO = Path(__file__).resolve().parents[3]
FIXTURE = REPO / "tests" / "fixtures" / "batch_create_request.json"


def _batch_requests() -> list[dict]:
    """The requests of tests/fixtures/batch_create_request.json."""
    return json.loads(FIXTURE.read_text())["requests"]


def _wait_ended(client, batch_id: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.processing_status}"
        time.sleep(0.1)


def test_batch_lifecycle(client, sluice):
    requests = _batch_requests()
    created = client.messages.batches.create(requests=requests)
    assert created.type == "message_batch"
    assert created.id.startswith("msgbatch_")
    assert created.processing_status in ("in_progress", "ended")
    assert created._request_id

    batch = _wait_ended(client, created.id)
    assert batch.id == created.id
    assert batch.request_counts.succeeded == len(requests)
    assert batch.request_counts.processing == 0
    assert batch.ended_at is not None
    # results_url points at the gateway, not the upstream (the SDK follows it verbatim with the
    # gateway key, which the upstream would refuse).
    assert batch.results_url.startswith(sluice.gateway_url + "/"), batch.results_url
    assert batch.results_url.endswith(f"/v1/messages/batches/{created.id}/results")

    results = list(client.messages.batches.results(created.id))
    assert sorted(r.custom_id for r in results) == sorted(r["custom_id"] for r in requests)
    for r in results:
        assert r.result.type == "succeeded"
        assert r.result.message.content[0].text
        assert r.result.message.usage.output_tokens > 0

    listed = [b.id for b in client.messages.batches.list(limit=100)]
    assert created.id in listed

    deleted = client.messages.batches.delete(created.id)
    assert deleted.id == created.id
    assert deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(created.id)


def test_batch_list_paginates(client):
    ids = [client.messages.batches.create(requests=_batch_requests()[:1]).id for _ in range(3)]
    page = client.messages.batches.list(limit=2)
    assert len(page.data) == 2
    seen = [b.id for b in client.messages.batches.list(limit=2)]
    for i in ids:
        assert i in seen
    assert len(seen) == len(set(seen))
    for i in ids:
        _wait_ended(client, i)
        client.messages.batches.delete(i)


def test_batch_cancel(client):
    created = client.messages.batches.create(requests=_batch_requests())
    canceled = client.messages.batches.cancel(created.id)
    assert canceled.id == created.id
    assert canceled.processing_status in ("canceling", "ended")
    assert canceled.cancel_initiated_at is not None
    batch = _wait_ended(client, created.id)
    assert batch.request_counts.canceled + batch.request_counts.succeeded == len(_batch_requests())
    client.messages.batches.delete(created.id)


def test_batch_of_another_tenant_is_not_found(client, sluice):
    created = client.messages.batches.create(requests=_batch_requests())
    with anthropic.Anthropic(
        base_url=sluice.gateway_url, api_key=sluice.keys["email"], max_retries=0
    ) as other:
        with pytest.raises(anthropic.NotFoundError) as e:
            other.messages.batches.retrieve(created.id)
        assert e.value.status_code == 404
        assert e.value.type == "not_found_error"
        with pytest.raises(anthropic.NotFoundError):
            other.messages.batches.cancel(created.id)
        with pytest.raises(anthropic.NotFoundError):
            other.messages.batches.delete(created.id)
        assert created.id not in [b.id for b in other.messages.batches.list(limit=100)]
    # Still there for its owner.
    _wait_ended(client, created.id)
    with anthropic.Anthropic(
        base_url=sluice.gateway_url, api_key=sluice.keys["email"], max_retries=0
    ) as other:
        with pytest.raises(anthropic.NotFoundError):
            list(other.messages.batches.results(created.id))
    client.messages.batches.delete(created.id)


def test_beta_batches(client):
    created = client.beta.messages.batches.create(
        requests=_batch_requests(), betas=["message-batches-2024-09-24"]
    )
    batch = client.beta.messages.batches.retrieve(created.id, betas=["message-batches-2024-09-24"])
    assert batch.id == created.id
    _wait_ended(client, created.id)
    results = list(client.beta.messages.batches.results(created.id))
    assert len(results) == len(_batch_requests())
    client.beta.messages.batches.delete(created.id)
