// Starts a real `sluice mock` (fake upstream, recording, requiring the upstream key) and a real
// `sluice serve` (the gateway) on free loopback ports, with keys for two tenants. The binary is
// $SLUICE_BIN, else target/debug/sluice at the repo root (scripts/sdk-test builds it).

import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const UPSTREAM_KEY = 'sk-ant-upstream-sdk-tests-ts-0123456789';
export const MODEL = 'claude-haiku-4-5-20251001';

// The clients get baseURL and credentials explicitly; keep a developer's own Anthropic settings
// out of the way all the same (nothing here may reach the real API).
for (const name of Object.keys(process.env)) {
  if (name.startsWith('ANTHROPIC_')) delete process.env[name];
}

function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitHttp(url, child, log, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) {
      throw new Error(`${url}: process exited with ${child.exitCode}:\n${readFileSync(log, 'utf8')}`);
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status < 500) return;
    } catch {
      // not up yet
    }
    await sleep(50);
  }
  throw new Error(`${url} not up after ${timeoutMs} ms:\n${readFileSync(log, 'utf8')}`);
}

function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((ok) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(timer);
      ok();
    });
    child.kill('SIGTERM');
  });
}

export async function startSluice() {
  const bin = process.env.SLUICE_BIN || join(REPO, 'target', 'debug', 'sluice');
  if (!existsSync(bin)) {
    throw new Error(`sluice binary not found at ${bin}: run \`cargo build -p sluice\` or set SLUICE_BIN`);
  }
  const workdir = mkdtempSync(join(tmpdir(), 'sluice-sdk-ts-'));
  const gwPort = await freePort();
  let mockPort = await freePort();
  while (mockPort === gwPort) mockPort = await freePort();
  const config = join(workdir, 'sluice.toml');
  writeFileSync(
    config,
    `[server]
listen = "127.0.0.1:${gwPort}"

[upstream]
base_url = "http://127.0.0.1:${mockPort}"
# These suites inject upstream errors per request; the breaker (tested in Rust) stays out of it.
breaker_failures = 1000
retry_base_ms = 10

[store]
path = "${join(workdir, 'sluice.db')}"

[auth]
key_refresh_ms = 50

[[tenants]]
name = "web"

[[tenants]]
name = "email"

# Two requests per minute: Sluice's own 429.
[[tenants]]
name = "capped"
limits = { requests_per_minute = 2 }
`,
  );
  const env = { ...process.env, ANTHROPIC_API_KEY: UPSTREAM_KEY };
  delete env.SLUICE_CONFIG;
  delete env.SLUICE_DB;

  const keys = {};
  for (const tenant of ['web', 'email', 'capped']) {
    const out = execFileSync(bin, ['keys', 'create', '--tenant', tenant, '--config', config], {
      env,
      encoding: 'utf8',
      timeout: 30_000,
    });
    const key = out.trim().split('\n').at(-1).trim();
    if (!key.startsWith('sk-sluice-')) throw new Error(`unexpected keys create output: ${out}`);
    keys[tenant] = key;
  }

  const children = [];
  const cleanup = async () => {
    for (const c of children.reverse()) await stop(c);
    if (process.env.SLUICE_SDK_KEEP) console.log(`kept ${workdir}`);
    else rmSync(workdir, { recursive: true, force: true });
  };
  try {
    const mockLog = join(workdir, 'mock.log');
    const mockFd = openSync(mockLog, 'w');
    const mock = spawn(
      bin,
      ['mock', '--listen', `127.0.0.1:${mockPort}`, '--api-key', UPSTREAM_KEY, '--record'],
      { env, stdio: ['ignore', mockFd, mockFd] },
    );
    children.push(mock);
    await waitHttp(`http://127.0.0.1:${mockPort}/_mock/stats`, mock, mockLog);

    const serveLog = join(workdir, 'serve.log');
    const serveFd = openSync(serveLog, 'w');
    const serve = spawn(bin, ['serve', '--config', config], { env, stdio: ['ignore', serveFd, serveFd] });
    children.push(serve);
    await waitHttp(`http://127.0.0.1:${gwPort}/healthz`, serve, serveLog);
  } catch (e) {
    await cleanup();
    throw e;
  }

  const mockUrl = `http://127.0.0.1:${mockPort}`;
  return {
    gatewayUrl: `http://127.0.0.1:${gwPort}`,
    mockUrl,
    upstreamKey: UPSTREAM_KEY,
    keys,
    key: keys.web,
    workdir,
    /** What the fake upstream received, most recent last. */
    async mockRequests() {
      const res = await fetch(`${mockUrl}/_mock/requests`);
      return res.json();
    },
    /** The one recorded upstream request whose body contains `marker`. */
    async upstreamRequestContaining(marker) {
      const hits = (await this.mockRequests()).filter((r) => (r.body ?? '').includes(marker));
      if (hits.length !== 1) {
        throw new Error(`expected one upstream request containing ${marker}, got ${JSON.stringify(hits)}`);
      }
      return hits[0];
    },
    stop: cleanup,
  };
}
