#!/usr/bin/env python3
"""Hold N concurrent streaming Messages calls open against a gateway and measure its memory.

Used by bench/run (the "1,000 open streams" check); runnable alone:

    python3 bench/streams.py --port 18090 --key sk-sluice-... --pid PID_OF_SLUICE [--pid …] \
        [--streams 1000] [--hold 5] [--mock-stats http://127.0.0.1:18089/_mock/stats]

Each connection sends one `"stream": true` request, reads the response head and waits for
the first SSE event (`message_start`) so the stream is known to be flowing end to end, then
keeps reading (draining) events. Once every stream has started, it samples the gateway's
VmRSS/VmHWM from /proc/PID/status, counts established sockets on the gateway port with `ss`,
and reads the mock's /_mock/stats, several times over `--hold` seconds; it then closes every
connection and prints one JSON object (prefixed "STREAMSJSON ") with the findings.

Standard library only; loopback only.
"""

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request


def proc_status(pids):
    """VmRSS/VmHWM (kB) and threads, summed over `pids` (e.g. nginx's master and workers)."""
    out = {"VmRSS": 0, "VmHWM": 0, "Threads": 0}
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in out:
                    out[k] += int(v.split()[0])
    return out


def established(port, side="sport"):
    """Established TCP sockets whose local (`sport`) or remote (`dport`) port is `port`."""
    r = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( {side} = :{port} )"],
        capture_output=True, text=True, check=False,
    )
    return sum(1 for line in r.stdout.splitlines() if line.strip())


def mock_stats(url):
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return {"error": str(e)}


class Stream:
    def __init__(self):
        self.status = None
        self.started = asyncio.Event()
        self.events = 0
        self.bytes = 0
        self.error = None
        self.done = False


async def one(host, port, key, body, st, writers):
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writers.append(writer)
        head = (
            f"POST /v1/messages HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"content-type: application/json\r\nanthropic-version: 2023-06-01\r\n"
            f"x-api-key: {key}\r\naccept: text/event-stream\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        writer.write(head + body)
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.split()
        st.status = int(parts[1]) if len(parts) > 1 else -1
        while True:  # headers
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                st.done = True
                break
            st.bytes += len(chunk)
            st.events += chunk.count(b"event:")
            if st.events and not st.started.is_set():
                st.started.set()
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        st.error = repr(e)
    finally:
        st.started.set()  # never leave the waiter hanging; status/error tell what happened


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--pid", type=int, action="append", required=True,
                    help="process to measure (repeat to sum several, e.g. nginx workers)")
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to sample while all are open")
    ap.add_argument("--start-timeout", type=float, default=30.0)
    ap.add_argument("--mock-stats", default="")
    ap.add_argument("--upstream-port", type=int, default=0,
                    help="also count established sockets to this port (gateway -> mock)")
    ap.add_argument("--model", default="claude-sonnet-4-5")
    a = ap.parse_args()

    body = json.dumps({
        "model": a.model, "max_tokens": 1024, "stream": True,
        "messages": [{"role": "user", "content": "Hello"}],
    }).encode()

    before = proc_status(a.pid)
    streams = [Stream() for _ in range(a.streams)]
    writers = []
    t0 = time.monotonic()
    tasks = []
    # Open in waves of 100 so the accept backlog never overflows.
    for i in range(0, a.streams, 100):
        for st in streams[i:i + 100]:
            tasks.append(asyncio.create_task(one(a.host, a.port, a.key, body, st, writers)))
        await asyncio.sleep(0.02)
    try:
        await asyncio.wait_for(
            asyncio.gather(*(s.started.wait() for s in streams)), a.start_timeout)
    except asyncio.TimeoutError:
        pass
    t_open = time.monotonic() - t0

    samples = []
    end = time.monotonic() + a.hold
    while True:
        live = sum(1 for s in streams if s.events and not s.done and not s.error)
        samples.append({
            "t": round(time.monotonic() - t0, 2),
            "live_streams_client": live,
            "gateway_established": established(a.port),
            "upstream_established": established(a.upstream_port, "dport") if a.upstream_port else None,
            **proc_status(a.pid),
            "mock": mock_stats(a.mock_stats),
        })
        if time.monotonic() >= end:
            break
        await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))

    res = {
        "streams": a.streams,
        "seconds_to_open_all": round(t_open, 2),
        "status_200": sum(1 for s in streams if s.status == 200),
        "started": sum(1 for s in streams if s.events),
        "finished_early": sum(1 for s in streams if s.done),
        "errors": sum(1 for s in streams if s.error),
        "first_error": next((s.error for s in streams if s.error), None),
        "events_per_stream_min": min((s.events for s in streams), default=0),
        "before": before,
        "samples": samples,
        "rss_kb_max_sampled": max(s["VmRSS"] for s in samples),
        "min_live_streams_sampled": min(s["live_streams_client"] for s in samples),
        "min_gateway_established": min(s["gateway_established"] for s in samples),
        "min_upstream_established": min((s["upstream_established"] or 0) for s in samples),
    }
    for w in writers:
        w.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1.0)
    res["after_close"] = proc_status(a.pid)
    print("STREAMSJSON " + json.dumps(res))
    return 0 if res["min_live_streams_sampled"] == a.streams else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
