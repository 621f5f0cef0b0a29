#!/usr/bin/env python3
"""Turn a bench/run results directory into the markdown summary (printed on stdout).

    python3 bench/report.py bench/results/latest
"""

import json
import sys
from pathlib import Path

TARGETS = ["direct", "nginx", "sluice", "sluice_warn"]
NAMES = {
    "direct": "direct (mock)",
    "nginx": "nginx → mock",
    "sluice": "Sluice → mock",
    "sluice_warn": "Sluice, RUST_LOG=warn",
}
THROUGHPUT_TARGET = 0.8  # Sluice req/s >= 0.8 x nginx
LATENCY_TARGET = 1.2  # Sluice added p50 <= 1.2 x nginx added p50
RSS_TARGET_MB = 50  # with 1,000 open streams


def load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def ms(us):
    return us / 1000.0


def fmt_ms(us):
    return f"{ms(us):.2f}"


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest")
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines() if l.strip()]
    by = {(r["mode"], r["conns"], r["target"]): r["wrk"] for r in rows}
    cpu = {(r["mode"], r["conns"], r["target"]): r.get("cpu_s") for r in rows}
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    conns = sorted({r["conns"] for r in rows})  # per mode, missing cells are skipped
    targets = [t for t in TARGETS if any(r["target"] == t for r in rows)]

    p = print
    p("## Sluice benchmark summary\n")
    machine = (out / "machine.txt").read_text() if (out / "machine.txt").exists() else ""
    p("```")
    p(machine.rstrip())
    p("```\n")

    # ---- raw table
    p("### Results (wrk, closed loop; latency = full reply, streams included)\n")
    p("Proxy CPU = user+system CPU time of the proxy process (nginx: master and workers) "
      "during the run, as a share of one core and per request.\n")
    p("| reply | conns | target | req/s | p50 ms | p99 ms | non-2xx | socket errors | "
      "proxy CPU | proxy CPU µs/req |")
    p("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in modes:
        for c in conns:
            for t in targets:
                w = by.get((m, c, t))
                if not w:
                    continue
                sock = w["err_connect"] + w["err_read"] + w["err_write"] + w["err_timeout"]
                cs = (cpu.get((m, c, t)) or {}).get("proxy")
                if t == "direct" or cs is None:
                    pc, pr = "–", "–"
                else:
                    pc = f"{100 * cs / w['duration_s']:.0f}%"
                    pr = f"{1e6 * cs / w['requests']:.0f}" if w["requests"] else "–"
                p(f"| {m} | {c} | {NAMES[t]} | {w['rps']:,.0f} | {fmt_ms(w['p50_us'])} | "
                  f"{fmt_ms(w['p99_us'])} | {w['non2xx']} | {sock} | {pc} | {pr} |")
    p("")

    # Small negative values are accounting noise (interrupt time is charged differently).
    others = [max(0.0, (cpu.get(k) or {}).get("other") or 0) / by[k]["duration_s"] for k in by]
    if others:
        worst = max(others)
        p(f"Other load on the machine during the timed runs (CPU not used by the proxy, the mock "
          f"or wrk): mean {sum(others) / len(others):.2f} cores, worst run {worst:.2f} cores"
          + (" — **the machine was shared; treat these numbers with care**." if worst > 0.15 else ".")
          + "\n")

    # ---- comparison
    p("### Against the targets\n")
    p("Added p50 = the target's median minus the direct median at the same concurrency. "
      f"Targets: Sluice req/s ≥ {THROUGHPUT_TARGET}× nginx; Sluice added p50 ≤ "
      f"{LATENCY_TARGET}× nginx's added p50.\n")
    p("CPU/req = the proxy's CPU time per request, Sluice's over nginx's. In the paced mode the "
      "latency is set by the mock's event timer (the direct median can exceed a proxy's), so "
      "its added-latency ratio is not meaningful and is not judged.\n")
    p("| reply | conns | nginx/direct req/s | Sluice/nginx req/s | nginx added p50 ms | "
      "Sluice added p50 ms | Sluice÷nginx added | Sluice÷nginx CPU/req | "
      "Sluice(warn)/nginx req/s | Sluice(warn) added p50 ms |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    verdicts = []
    for m in modes:
        for c in conns:
            d, n, s, sw = (by.get((m, c, t)) for t in TARGETS)
            if not (d and n and s):
                continue
            nd = n["rps"] / d["rps"]
            sn = s["rps"] / n["rps"]
            n_add = ms(n["p50_us"] - d["p50_us"])
            s_add = ms(s["p50_us"] - d["p50_us"])
            sw_rps = f"{sw['rps'] / n['rps']:.2f}×" if sw else "–"
            sw_add = f"{ms(sw['p50_us'] - d['p50_us']):.2f}" if sw else "–"
            ok_t = sn >= THROUGHPUT_TARGET
            judged = m != "paced" and n_add > 0
            ok_l = (s_add <= LATENCY_TARGET * n_add) if judged else None
            if judged:
                lat = f"**{s_add / n_add:.2f}** {'✅' if ok_l else '❌'}"
            else:
                lat = "n/a"
            cn, cs_ = (cpu.get((m, c, "nginx")) or {}).get("proxy"), (cpu.get((m, c, "sluice")) or {}).get("proxy")
            if cn and cs_ and n["requests"] and s["requests"]:
                cpu_ratio = f"{(cs_ / s['requests']) / (cn / n['requests']):.1f}×"
            else:
                cpu_ratio = "–"
            verdicts.append((m, c, ok_t, ok_l))
            p(f"| {m} | {c} | {nd:.2f}× | **{sn:.2f}×** {'✅' if ok_t else '❌'} | {n_add:.2f} | "
              f"{s_add:.2f} | {lat} | {cpu_ratio} | {sw_rps} | {sw_add} |")
    p("")

    # ---- syscalls (BENCH_SYSCALLS=1)
    sc_rows = []
    for (m, c, t), w in by.items():
        f = out / f"syscalls-{m}-c{c}-{t}.csv"
        if not f.exists() or not w["requests"]:
            continue
        vals = {}
        for line in f.read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[0].replace(".", "", 1).isdigit():
                vals[parts[2].replace("syscalls:sys_enter_", "")] = float(parts[0])
        n = w["requests"]
        sc_rows.append((m, c, t, {k: v / n for k, v in vals.items()}))
    if sc_rows:
        p("### Syscalls and context switches per request (perf stat on the proxy)\n")
        cols = ["writev", "write", "sendmsg", "recvfrom", "read", "readv", "futex", "epoll_wait",
                "context-switches"]
        p("| reply | conns | target | " + " | ".join(cols) + " |")
        p("|---|---:|---|" + "---:|" * len(cols))
        order = {t: i for i, t in enumerate(TARGETS)}
        for m, c, t, v in sorted(sc_rows, key=lambda r: (modes.index(r[0]), r[1], order[r[2]])):
            p(f"| {m} | {c} | {NAMES[t]} | " + " | ".join(f"{v.get(k, 0):.2f}" for k in cols) + " |")
        p("")

    # ---- memory
    mem = load(out / "memory.json") or {}
    p("### Memory\n")
    if mem:
        s = mem.get("sluice", {})
        sw = mem.get("sluice_warn", {})
        ng = mem.get("nginx_all_processes", {})
        p(f"- Sluice peak RSS (VmHWM) over all load runs: **{s.get('VmHWM_kb', 0) / 1024:.1f} MB** "
          f"(RSS at the end {s.get('VmRSS_kb', 0) / 1024:.1f} MB); with RUST_LOG=warn "
          f"{sw.get('VmHWM_kb', 0) / 1024:.1f} MB.")
        p(f"- nginx, master + {ng.get('workers', '?')} workers: peak {ng.get('VmHWM_kb', 0) / 1024:.1f} MB "
          f"(sum of per-process VmHWM); mock: {mem.get('mock', {}).get('VmHWM_kb', 0) / 1024:.1f} MB.")
    st = load(out / "streams.json")
    idle = load(out / "streams-idle.json") or {}
    if st:
        rss = st["rss_kb_max_sampled"] / 1024
        base = idle.get("VmRSS_kb", 0) / 1024
        n = st["streams"]
        per = (rss - base) * 1024 / n if n else 0
        mock_seen = [s.get("mock") for s in st["samples"] if s.get("mock")]
        p(f"- **{n} concurrent open streams**: Sluice VmRSS **{rss:.1f} MB** (max of "
          f"{len(st['samples'])} samples while all were open; idle before: {base:.1f} MB, so "
          f"≈{per:.1f} KB per open stream); VmHWM {max(s['VmHWM'] for s in st['samples']) / 1024:.1f} MB; "
          f"{'✅' if rss < RSS_TARGET_MB else '❌'} target < {RSS_TARGET_MB} MB.")
        p(f"  - verified open: {st['status_200']} replies 200, {st['started']} streams received "
          f"events, at least {st['min_live_streams_sampled']} live in every sample, "
          f"≥{st['min_gateway_established']} established client sockets on the gateway port and "
          f"≥{st.get('min_upstream_established', 0)} from the gateway to the mock (`ss`), "
          f"{st['errors']} errors, {st['finished_early']} finished before the end of sampling; "
          f"all opened in {st['seconds_to_open_all']} s.")
        if mock_seen:
            p(f"  - mock's /_mock/stats during the hold: `{json.dumps(mock_seen[-1])}`")
        p(f"  - after closing them all: VmRSS {st['after_close']['VmRSS'] / 1024:.1f} MB.")
    sn = load(out / "streams-nginx.json")
    if sn:
        nb = sn["before"]["VmRSS"] / 1024
        nr = sn["rss_kb_max_sampled"] / 1024
        p(f"- For scale, a fresh nginx (master + workers, summed) holding the same {sn['streams']} "
          f"streams: VmRSS {nr:.1f} MB (idle {nb:.1f} MB, ≈{(nr - nb) * 1024 / sn['streams']:.1f} KB "
          f"per stream; {sn['min_live_streams_sampled']} live in every sample).")
    p("")

    # ---- ledger and log
    vol = load(out / "sluice-log-volume.json")
    total = sum(by[k]["requests"] for k in by if k[2] == "sluice")
    led = load(out / "ledger-sluice.json")
    if led or vol:
        p("### Bookkeeping\n")
    if vol:
        per_line = vol["bytes"] / vol["lines"] if vol["lines"] else 0
        p(f"- The info-level gateway wrote {vol['lines']:,} log lines ({vol['bytes'] / 1e6:.1f} MB, "
          f"{per_line:.0f} B/line) for {total:,} timed calls (plus warm-up and sanity calls).")
    if led and isinstance(led, dict):
        reqs = sum(r.get("requests", 0) for r in led.get("rows", []))
        p(f"- Its ledger holds {reqs:,} calls after a graceful stop (timed calls: {total:,}; the "
          "rest are warm-up and sanity calls).")
    p("")

    # ---- verdict
    if verdicts:
        bad_t = [f"{m} c={c}" for m, c, ok, _ in verdicts if not ok]
        bad_l = [f"{m} c={c}" for m, c, _, ok in verdicts if ok is False]
        p("### Verdict\n")
        p(f"- Throughput ≥ {THROUGHPUT_TARGET}× nginx: "
          + ("met everywhere." if not bad_t else "missed at " + ", ".join(bad_t) + "."))
        p(f"- Added median latency ≤ {LATENCY_TARGET}× nginx's: "
          + ("met everywhere." if not bad_l else "missed at " + ", ".join(bad_l) + "."))
        if st:
            p(f"- < {RSS_TARGET_MB} MB with {st['streams']} open streams: "
              + ("met." if st["rss_kb_max_sampled"] / 1024 < RSS_TARGET_MB else "missed."))


if __name__ == "__main__":
    main()
