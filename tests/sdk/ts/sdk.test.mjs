// The official TypeScript SDK (@anthropic-ai/sdk) against Sluice and its fake upstream, with only
// baseURL and the key changed. Run with `node --test` in this directory (scripts/sdk-test).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import Anthropic, {
  APIError,
  AuthenticationError,
  BadRequestError,
  InternalServerError,
  NotFoundError,
  RateLimitError,
} from '@anthropic-ai/sdk';

import { MODEL, REPO, startSluice } from './harness.mjs';

function batchRequests() {
  return JSON.parse(readFileSync(join(REPO, 'tests', 'fixtures', 'batch_create_request.json'), 'utf8')).requests;
}

function prompt(tag) {
  const marker = `${tag}-${randomUUID()}`;
  return { marker, messages: [{ role: 'user', content: `Say hello (${marker})` }] };
}

function checkUsage(usage) {
  assert.ok(usage.input_tokens > 0);
  assert.ok(usage.output_tokens > 0);
  assert.notEqual(usage.cache_creation_input_tokens, undefined);
  assert.notEqual(usage.cache_read_input_tokens, undefined);
}

describe('@anthropic-ai/sdk through sluice', () => {
  let sl;
  let client;

  const clientFor = (opts) => new Anthropic({ baseURL: sl.gatewayUrl, maxRetries: 0, ...opts });

  async function waitEnded(c, id) {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const b = await c.messages.batches.retrieve(id);
      if (b.processing_status === 'ended') return b;
      assert.ok(Date.now() < deadline, `batch ${id} still ${b.processing_status}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  before(async () => {
    sl = await startSluice();
    client = clientFor({ apiKey: sl.key });
  });

  after(async () => {
    if (sl) await sl.stop();
  });

  test('messages.create', async () => {
    const { marker, messages } = prompt('create');
    const msg = await client.messages.create({ model: MODEL, max_tokens: 64, messages });
    assert.equal(msg.type, 'message');
    assert.equal(msg.role, 'assistant');
    assert.equal(msg.model, MODEL);
    assert.equal(msg.content[0].type, 'text');
    assert.ok(msg.content[0].text.trim());
    checkUsage(msg.usage);
    assert.match(msg._request_id, /^req_/);

    const seen = await sl.upstreamRequestContaining(marker);
    assert.equal(seen.path, '/v1/messages');
    assert.equal(seen.headers['x-api-key'], sl.upstreamKey);
    assert.equal(seen.headers.authorization, undefined);
    assert.ok(!JSON.stringify(seen.headers).includes(sl.key));
  });

  test('messages.create withResponse: request-id, no org rate-limit headers', async () => {
    const { messages } = prompt('raw');
    const { data, response, request_id } = await client.messages
      .create({ model: MODEL, max_tokens: 16, messages })
      .withResponse();
    assert.equal(response.status, 200);
    assert.match(request_id, /^req_/);
    assert.deepEqual([...response.headers.keys()].filter((h) => h.startsWith('anthropic-ratelimit-')), []);
    assert.ok(data.content[0].text);
  });

  test('messages.stream: text events and finalMessage', async () => {
    const { messages } = prompt('stream');
    let text = '';
    const stream = client.messages.stream({ model: MODEL, max_tokens: 64, messages });
    stream.on('text', (delta) => {
      text += delta;
    });
    const final = await stream.finalMessage();
    assert.ok(text.trim());
    assert.equal(final.content[0].text, text);
    checkUsage(final.usage);
  });

  test('messages.create stream: true, raw events', async () => {
    const { messages } = prompt('rawstream');
    const stream = await client.messages.create({ model: MODEL, max_tokens: 32, messages, stream: true });
    const types = [];
    for await (const ev of stream) types.push(ev.type);
    assert.equal(types[0], 'message_start');
    assert.equal(types.at(-1), 'message_stop');
    assert.ok(types.includes('content_block_delta'));
    assert.ok(types.includes('message_delta'));
  });

  test('messages.countTokens', async () => {
    const { messages } = prompt('count');
    const res = await client.messages.countTokens({ model: MODEL, messages });
    assert.ok(res.input_tokens > 0);
  });

  test('models.list (auto-paginated) and retrieve', async () => {
    const page = await client.models.list({ limit: 2 });
    assert.equal(page.data.length, 2);
    assert.ok(page.hasNextPage());
    const ids = [];
    for await (const m of client.models.list({ limit: 2 })) ids.push(m.id);
    assert.ok(ids.length > 2);
    assert.equal(new Set(ids).size, ids.length);
    assert.ok(ids.includes(MODEL));
    const model = await client.models.retrieve(MODEL);
    assert.equal(model.id, MODEL);
  });

  test('authToken (Bearer) and the second tenant', async () => {
    const { messages } = prompt('bearer');
    const msg = await clientFor({ authToken: sl.keys.email }).messages.create({ model: MODEL, max_tokens: 16, messages });
    assert.ok(msg.content[0].text);
  });

  test('x-api-key header (as SDKs before 1.x send the key)', async () => {
    const { marker, messages } = prompt('xapikey');
    const c = new Anthropic({ baseURL: sl.gatewayUrl, maxRetries: 0, defaultHeaders: { 'x-api-key': sl.key } });
    const msg = await c.messages.create({ model: MODEL, max_tokens: 16, messages });
    assert.ok(msg.content[0].text);
    const seen = await sl.upstreamRequestContaining(marker);
    assert.equal(seen.headers['x-api-key'], sl.upstreamKey);
  });

  test('beta.messages.create with betas', async () => {
    const { marker, messages } = prompt('beta');
    const msg = await client.beta.messages.create({
      model: MODEL, max_tokens: 32, messages, betas: ['prompt-caching-2024-07-31'],
    });
    assert.ok(msg.content[0].text);
    const seen = await sl.upstreamRequestContaining(marker);
    assert.equal(seen.path, '/v1/messages');
    assert.match(seen.headers['anthropic-beta'] ?? '', /prompt-caching-2024-07-31/);
    assert.equal(seen.headers['x-api-key'], sl.upstreamKey);
    assert.ok(!JSON.stringify(seen.headers).includes(sl.key));
  });

  test('beta ?beta=true query passes through', async () => {
    const { marker, messages } = prompt('betaquery');
    await client.beta.messages.create(
      { model: MODEL, max_tokens: 16, messages, betas: ['prompt-caching-2024-07-31'] },
      { query: { beta: 'true' } },
    );
    const seen = await sl.upstreamRequestContaining(marker);
    assert.match(seen.query ?? '', /beta=true/);
  });

  test('batches: create, retrieve, results, list, cancel, delete', async () => {
    const requests = batchRequests();
    const created = await client.messages.batches.create({ requests });
    assert.match(created.id, /^msgbatch_/);
    const batch = await waitEnded(client, created.id);
    assert.equal(batch.request_counts.succeeded, requests.length);
    assert.ok(batch.results_url.startsWith(`${sl.gatewayUrl}/`), batch.results_url);

    const results = [];
    for await (const r of await client.messages.batches.results(created.id)) results.push(r);
    assert.deepEqual(results.map((r) => r.custom_id).sort(), requests.map((r) => r.custom_id).sort());
    for (const r of results) {
      assert.equal(r.result.type, 'succeeded');
      assert.ok(r.result.message.content[0].text);
    }

    const listed = [];
    for await (const b of client.messages.batches.list({ limit: 100 })) listed.push(b.id);
    assert.ok(listed.includes(created.id));

    const second = await client.messages.batches.create({ requests });
    const canceled = await client.messages.batches.cancel(second.id);
    assert.ok(['canceling', 'ended'].includes(canceled.processing_status));
    await waitEnded(client, second.id);

    for (const id of [created.id, second.id]) {
      const del = await client.messages.batches.delete(id);
      assert.equal(del.id, id);
      assert.equal(del.type, 'message_batch_deleted');
    }
    await assert.rejects(client.messages.batches.retrieve(created.id), NotFoundError);
  });

  test('errors: wrong key is AuthenticationError', async () => {
    const c = clientFor({ apiKey: 'sk-sluice-not-a-real-key' });
    await assert.rejects(c.messages.create({ model: MODEL, max_tokens: 16, messages: prompt('e').messages }), (e) => {
      assert.ok(e instanceof AuthenticationError, String(e));
      assert.equal(e.status, 401);
      assert.equal(e.type, 'authentication_error');
      return true;
    });
  });

  test('errors: 529 with maxRetries 0 is APIError status 529', async () => {
    await assert.rejects(
      client.messages.create(
        { model: MODEL, max_tokens: 16, messages: prompt('e').messages },
        { headers: { 'x-mock-status': '529' }, maxRetries: 0 },
      ),
      (e) => {
        assert.ok(e instanceof APIError, String(e));
        assert.ok(e instanceof InternalServerError);
        assert.equal(e.status, 529);
        assert.equal(e.type, 'overloaded_error');
        if (Anthropic.OverloadedError) assert.ok(e instanceof Anthropic.OverloadedError);
        return true;
      },
    );
  });

  test('errors: 429 is RateLimitError', async () => {
    await assert.rejects(
      client.messages.create(
        { model: MODEL, max_tokens: 16, messages: prompt('e').messages },
        { headers: { 'x-mock-status': '429' } },
      ),
      RateLimitError,
    );
  });

  test('errors: a Sluice rate limit is RateLimitError naming the tenant, with its headers', async () => {
    const c = clientFor({ apiKey: sl.keys.capped });
    const ok = await c.messages
      .create({ model: MODEL, max_tokens: 16, messages: prompt('cap').messages })
      .withResponse();
    assert.equal(ok.response.headers.get('anthropic-ratelimit-requests-limit'), '2');
    await c.messages.create({ model: MODEL, max_tokens: 16, messages: prompt('cap').messages });
    await assert.rejects(
      c.messages.create({ model: MODEL, max_tokens: 16, messages: prompt('cap').messages }),
      (e) => {
        assert.ok(e instanceof RateLimitError, String(e));
        assert.match(e.message, /tenant 'capped' exhausted its requests per minute \(2\/min\)/);
        assert.equal(e.headers.get('anthropic-ratelimit-requests-remaining'), '0');
        assert.ok(Number(e.headers.get('retry-after')) >= 1);
        return true;
      },
    );
  });

  test('errors: missing model is BadRequestError', async () => {
    await assert.rejects(
      client.messages.create({ max_tokens: 16, messages: prompt('e').messages }),
      (e) => {
        assert.ok(e instanceof BadRequestError, String(e));
        assert.equal(e.status, 400);
        return true;
      },
    );
  });

  test("errors: another tenant's batch is NotFoundError", async () => {
    const created = await client.messages.batches.create({ requests: batchRequests() });
    const other = clientFor({ apiKey: sl.keys.email });
    await assert.rejects(other.messages.batches.retrieve(created.id), (e) => {
      assert.ok(e instanceof NotFoundError, String(e));
      assert.equal(e.status, 404);
      assert.equal(e.type, 'not_found_error');
      return true;
    });
    await assert.rejects(other.messages.batches.delete(created.id), NotFoundError);
    await waitEnded(client, created.id);
    await client.messages.batches.delete(created.id);
  });

  test('errors: error event mid-stream rejects the stream', async () => {
    const stream = client.messages.stream(
      { model: MODEL, max_tokens: 64, messages: prompt('e').messages },
      { headers: { 'x-mock-stream-error-after': '3' } },
    );
    stream.on('error', () => {}); // handled through finalMessage below
    await assert.rejects(stream.finalMessage(), (e) => {
      assert.ok(e instanceof APIError, String(e));
      assert.match(String(e.message), /overloaded_error/);
      return true;
    });
  });

  test('errors: upstream drop mid-stream rejects, never a short final message', async () => {
    const stream = client.messages.stream(
      { model: MODEL, max_tokens: 64, messages: prompt('e').messages },
      { headers: { 'x-mock-drop-after': '3' } },
    );
    stream.on('error', () => {});
    await assert.rejects(stream.finalMessage(), APIError);
  });
});
