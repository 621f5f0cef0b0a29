"""Session fixture: a real `sluice mock` (fake upstream) and a real `sluice serve` (the gateway).

The official `anthropic` SDK is then pointed at the gateway with only `base_url` and `api_key`
changed, exactly as an application team would.

The binary is `$SLUICE_BIN`, else `target/debug/sluice` at the repo root (scripts/sdk-test builds
it). Everything runs on 127.0.0.1 with free ports picked at start-up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
UPSTREAM_KEY = "sk-ant-upstream-sdk-tests-0123456789"
MODEL = "claude-haiku-4-5-20251001"

# The SDK clients get base_url and credentials explicitly; keep a developer's own Anthropic
# settings out of the way all the same (they must never reach the real API from these tests).
for _var in [v for v in os.environ if v.startswith("ANTHROPIC_")]:
    del os.environ[_var]


def _binary() -> Path:
    env = os.environ.get("SLUICE_BIN")
    path = Path(env) if env else REPO / "target" / "debug" / "sluice"
    if not path.is_file():
        pytest.exit(f"sluice binary not found at {path}: run `cargo build -p sluice` "
                    "or set SLUICE_BIN", returncode=2)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:  # answering at all means up
            if e.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not up after {timeout}s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class Sluice:
    """What the tests need to know about the running pair."""

    gateway_url: str
    mock_url: str
    upstream_key: str
    keys: dict[str, str]  # tenant -> gateway key
    workdir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The key of the default tenant (`web`)."""
        return self.keys["web"]

    def mock_requests(self) -> list[dict]:
        """What the fake upstream received (recorded, most recent last)."""
        with urllib.request.urlopen(f"{self.mock_url}/_mock/requests", timeout=5) as r:
            return json.load(r)

    def upstream_request_containing(self, marker: str) -> dict:
        """The one recorded upstream request whose body contains `marker`."""
        hits = [r for r in self.mock_requests() if marker in (r.get("body") or "")]
        assert len(hits) == 1, f"expected one upstream request containing {marker!r}, got {hits}"
        return hits[0]

    def gateway_log(self) -> str:
        return (self.workdir / "serve.log").read_text()


@pytest.fixture(scope="session")
def sluice() -> Sluice:
    binary = _binary()
    workdir = Path(tempfile.mkdtemp(prefix="sluice-sdk-py-"))
    gw_port, mock_port = _free_port(), _free_port()
    while mock_port == gw_port:
        mock_port = _free_port()
    config = workdir / "sluice.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{gw_port}"

[upstream]
base_url = "http://127.0.0.1:{mock_port}"
# These suites inject upstream errors per request; the breaker (tested in Rust) stays out of it.
breaker_failures = 1000
retry_base_ms = 10

[store]
path = "{workdir / 'sluice.db'}"

[auth]
key_refresh_ms = 50

[[tenants]]
name = "web"

[[tenants]]
name = "email"

# A tenant with one request per minute, and one with no budget left.
[[tenants]]
name = "capped"
limits = {{ requests_per_minute = 1 }}

[[tenants]]
name = "broke"
budget_daily_usd = 0.0

# A tenant whose repeated calls are answered by the gateway's response cache.
[[tenants]]
name = "cached"
response_cache = {{ ttl_secs = 300, max_entry_bytes = 1048576 }}
"""
    )
    env = {**os.environ, "ANTHROPIC_API_KEY": UPSTREAM_KEY}
    env.pop("SLUICE_CONFIG", None)
    env.pop("SLUICE_DB", None)

    keys = {}
    for tenant in ("web", "email", "capped", "broke", "cached"):
        out = subprocess.run(
            [binary, "keys", "create", "--tenant", tenant, "--config", config],
            check=True, capture_output=True, text=True, env=env, timeout=30,
        ).stdout
        key = out.strip().splitlines()[-1].strip()
        assert key.startswith("sk-sluice-"), out
        keys[tenant] = key

    procs: list[subprocess.Popen] = []
    sl = None
    try:
        mock_log = workdir / "mock.log"
        mock = subprocess.Popen(
            [binary, "mock", "--listen", f"127.0.0.1:{mock_port}",
             "--api-key", UPSTREAM_KEY, "--record"],
            stdout=mock_log.open("wb"), stderr=subprocess.STDOUT, env=env,
        )
        procs.append(mock)
        _wait_http(f"http://127.0.0.1:{mock_port}/_mock/stats", mock, mock_log)

        serve_log = workdir / "serve.log"
        serve = subprocess.Popen(
            [binary, "serve", "--config", config],
            stdout=serve_log.open("wb"), stderr=subprocess.STDOUT, env=env,
        )
        procs.append(serve)
        _wait_http(f"http://127.0.0.1:{gw_port}/healthz", serve, serve_log)

        sl = Sluice(
            gateway_url=f"http://127.0.0.1:{gw_port}",
            mock_url=f"http://127.0.0.1:{mock_port}",
            upstream_key=UPSTREAM_KEY,
            keys=keys,
            workdir=workdir,
            procs=procs,
        )
        yield sl
    finally:
        for p in reversed(procs):
            _stop(p)
        if os.environ.get("SLUICE_SDK_KEEP"):
            print(f"\nkept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def client(sluice):
    import anthropic

    with anthropic.Anthropic(base_url=sluice.gateway_url, api_key=sluice.key, max_retries=0) as c:
        yield c
