#!/usr/bin/env python3
"""Turn a bench/run results directory into the markdown summary (printed on stdout).

    python3 bench/report.py bench/results/latest
"""

import json
import sys
from pathlib import Path

TARGETS = ["direct", "nginx", "sluice", "sluice_warn", "sluice_limits", "sluice_redis",
           "sluice_rcache", "sluice_rmiss", "sluice_pcache"]
LIMIT_TARGETS = ["sluice_limits", "sluice_redis"]
NAMES = {
    "direct": "direct (mock)",
    "nginx": "nginx → mock",
    "sluice": "Sluice → mock",
    "sluice_warn": "Sluice, RUST_LOG=warn",
    "sluice_limits": "Sluice + limits, in-process",
    "sluice_redis": "Sluice + limits, Redis",
    "sluice_rcache": "Sluice, response-cache hits",
    "sluice_rmiss": "Sluice, response-cache misses (refresh)",
    "sluice_pcache": "Sluice + automatic prompt caching",
}
PROMPT_CACHE_TARGET = 0.98  # prompt-cache injection costs < 2% of throughput
THROUGHPUT_TARGET = 0.8  # Sluice req/s >= 0.8 x nginx
LOCAL_LIMITS_TARGET = 0.95  # in-process limits cost < 5% of the no-limits throughput
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


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def load_paired(out, target):
    """The paired runs (bench/run's measure_pair) of `sluice` against `target`, by (mode, conns)."""
    paired = {}
    pf = out / "paired.jsonl"
    if pf.exists():
        for l in pf.read_text().splitlines():
            if l.strip():
                d = json.loads(l)
                if d.get("ratio") is not None and d["b"]["target"] == target:
                    paired.setdefault((d["mode"], d["conns"]), []).append(d)
    return paired


def redis_rtt(path):
    """(p50 ms, mean ms) of PING_MBULK from a redis-benchmark --csv file, or None."""
    try:
        for line in Path(path).read_text().splitlines():
            f = [x.strip('"') for x in line.split('","')]
            if f[0].strip('"') == "PING_MBULK":
                return float(f[4]), float(f[2])
    except (OSError, ValueError, IndexError):
        pass
    return None


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest")
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines() if l.strip()]
    # Where a target ran several rounds (bench/run's BENCH_LIMIT_ROUNDS), the tables below
    # use the round with the median req/s; "Cost of limits" uses every round.
    runs = {}
    for r in rows:
        runs.setdefault((r["mode"], r["conns"], r["target"]), []).append(r)
    rep_row = {}
    for k, rs in runs.items():
        rs.sort(key=lambda r: r.get("round", 1))
        by_rps = sorted(rs, key=lambda r: r["wrk"]["rps"])
        rep_row[k] = by_rps[(len(by_rps) - 1) // 2]
    by = {k: r["wrk"] for k, r in rep_row.items()}
    cpu = {k: r.get("cpu_s") for k, r in rep_row.items()}
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
    if any(len(rs) > 1 for rs in runs.values()):
        p("Where a target ran several interleaved rounds, this table shows the round with the "
          "median req/s (every round is in \"Cost of limits\" below).\n")
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
    others = [max(0.0, (r.get("cpu_s") or {}).get("other") or 0) / r["wrk"]["duration_s"]
              for r in rows]
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
            d, n, s, sw = (by.get((m, c, t)) for t in ["direct", "nginx", "sluice", "sluice_warn"])
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

    limits_verdict = cost_of_limits(out, modes, conns, runs)
    cache_verdict = cost_of_caching(out, modes, conns, runs, by, cpu)

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
    total = sum(r["wrk"]["requests"] for r in rows if r["target"] == "sluice")
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
    for line in limits_verdict + cache_verdict:
        p(line)


def cost_of_caching(out, modes, conns, runs, by, cpu):
    """The "Caching levers" section: response-cache hits against nginx going through to the
    mock, misses against the gateway without a response cache, and the prompt-cache injection
    paired with the gateway that forwards the same long body untouched. Returns verdict lines."""
    p = print
    lines = []

    def cpu_us(m, c, t):
        w, cs = by.get((m, c, t)), (cpu.get((m, c, t)) or {}).get("proxy")
        return 1e6 * cs / w["requests"] if w and cs is not None and w["requests"] else None

    cells = [(m, c) for m in modes for c in conns
             if (m, c, "sluice_rcache") in by or (m, c, "sluice_rmiss") in by]
    if cells:
        p("### Caching levers\n")
        p("*Hits*: `sluice_rcache` sends the same body every time, so after the first call every "
          "reply comes from the gateway's response cache (`x-sluice-cache: hit`); it is compared "
          "with nginx, which goes through to the mock. *Misses*: `sluice_rmiss` is the same "
          "gateway with `x-sluice-cache: refresh` on every call (no lookup; the reply goes "
          "upstream, is copied and stored), compared with `sluice` (no response cache).\n")
        p("| reply | conns | nginx req/s | hits req/s | hits ÷ nginx | nginx p50 ms | hits p50 ms "
          "| Sluice req/s | misses req/s | misses ÷ Sluice | Sluice CPU µs/req | misses CPU µs/req "
          "| added µs/req |")
        p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        hit_ok, miss_add = [], []
        for m, c in cells:
            n, h, s, mi = (by.get((m, c, t)) for t in ["nginx", "sluice_rcache", "sluice", "sluice_rmiss"])
            f = lambda w, k="rps": f"{w[k]:,.0f}" if w else "–"
            hn = f"**{h['rps'] / n['rps']:.2f}×**" if h and n else "–"
            if h and n:
                ok = h["rps"] > n["rps"] and h["p50_us"] < n["p50_us"]
                hit_ok.append((m, c, h["rps"] / n["rps"], ok))
                hn += " ✅" if ok else " ❌"
            ms_ = s and mi and f"{mi['rps'] / s['rps']:.3f}×" or "–"
            cs, cm = cpu_us(m, c, "sluice"), cpu_us(m, c, "sluice_rmiss")
            add = f"{cm - cs:+.1f}" if cs is not None and cm is not None else "–"
            if cs is not None and cm is not None:
                miss_add.append((m, c, cm - cs))
            p(f"| {m} | {c} | {f(n)} | {f(h)} | {hn} | {n and fmt_ms(n['p50_us']) or '–'} | "
              f"{h and fmt_ms(h['p50_us']) or '–'} | {f(s)} | {f(mi)} | {ms_} | "
              f"{'–' if cs is None else f'{cs:.1f}'} | {'–' if cm is None else f'{cm:.1f}'} | {add} |")
        p("")
        if hit_ok:
            bad = [f"{m} c={c}" for m, c, _, ok in hit_ok if not ok]
            lines.append("- Response-cache hits faster than nginx going through to the upstream: "
                         + ("met at " if not bad else "missed at ")
                         + ", ".join(bad or [f"{m} c={c} ({r:.2f}×)" for m, c, r, _ in hit_ok]) + ".")
        if miss_add:
            lines.append("- Response-cache miss over the plain path (CPU per call, back-to-back runs): "
                         + ", ".join(f"{m} c={c} {d:+.1f} µs" for m, c, d in miss_add) + ".")

    paired = load_paired(out, "sluice_pcache")
    long_cells = [c for c in conns if ("long", c, "sluice_pcache") in by]
    if long_cells or paired:
        p("**Automatic prompt caching** (reply kind `long`: a JSON call with a ~3,000-token system "
          "prompt; `sluice_pcache`'s tenant has `prompt_cache = \"auto\"`, so every call is "
          "scanned and gets breakpoints; `sluice` forwards the same body untouched). Paired = both "
          "driven at the same moment, calls per second of each one's own CPU.\n")
        p("| conns | Sluice req/s | prompt cache req/s | Sluice CPU µs/req | prompt cache CPU µs/req "
          "| paired rounds | paired ratio (median [range]) |")
        p("|---:|---:|---:|---:|---:|---:|---:|")
        for c in sorted(set(long_cells) | {c for _, c in paired}):
            s, pc = by.get(("long", c, "sluice")), by.get(("long", c, "sluice_pcache"))
            ds = paired.get(("long", c), [])
            rs = [d["ratio"] for d in ds]
            if rs:
                rng = f" [{min(rs):.3f}, {max(rs):.3f}]" if len(rs) > 1 else ""
                ok = median(rs) >= PROMPT_CACHE_TARGET
                pr = f"**{median(rs):.3f}×**{rng} {'✅' if ok else '❌'}"
                lines.append(f"- Prompt-cache injection costs < {100 * (1 - PROMPT_CACHE_TARGET):.0f}% "
                             f"of throughput (paired, long c={c}): {'met' if ok else 'missed'} "
                             f"({median(rs):.3f}×).")
            else:
                pr = "–"
            cs, cp = cpu_us("long", c, "sluice"), cpu_us("long", c, "sluice_pcache")
            srps = f"{s['rps']:,.0f}" if s else "–"
            prps = f"{pc['rps']:,.0f}" if pc else "–"
            p(f"| {c} | {srps} | {prps} | "
              f"{'–' if cs is None else f'{cs:.1f}'} | {'–' if cp is None else f'{cp:.1f}'} | "
              f"{len(ds)} | {pr} |")
        p("")
    return lines


def cost_of_limits(out, modes, conns, runs):
    """The "Cost of limits" section: every limits target against the no-limits gateway of the
    same round (adjacent in time). Returns the verdict lines for the end of the summary."""
    p = print
    cells = [(m, c) for m in modes for c in conns
             if any((m, c, t) in runs for t in LIMIT_TARGETS) and (m, c, "sluice") in runs]
    if not cells:
        return []
    rtt_before = redis_rtt(out / "redis-rtt-before.csv")
    rtt_after = redis_rtt(out / "redis-rtt-after.csv")

    def per_round(m, c, t):
        return {r.get("round", 1): r for r in runs.get((m, c, t), [])}

    def cpu_per_req(r, with_redis=False):
        cs = r.get("cpu_s") or {}
        n = r["wrk"]["requests"]
        if cs.get("proxy") is None or not n:
            return None
        v = cs["proxy"] + ((cs.get("redis") or 0) if with_redis else 0)
        return 1e6 * v / n

    p("### Cost of limits\n")
    p("The same gateway, log level info, with its tenant limited in all three dimensions, a daily "
      "budget and the org pool of the request's model class configured, all sized never to "
      "refuse (every reply 200; bench/run stops otherwise). *In-process*: `[limits] backend = "
      "\"local\"`; *Redis*: `backend = \"redis\"` (`fail_mode = \"closed\"`, so a Redis failure "
      "would show as non-2xx, never as a silent fallback). Each limits run is compared with the "
      "no-limits run of the same round (the three run back to back, order rotating per round); "
      "ratios and differences are the median over rounds, with the range in brackets.\n")
    p("| reply | conns | target | rounds | req/s | ÷ no limits req/s | p50 ms | added p50 µs | "
      "p99 ms | added p99 µs | added mean µs | proxy CPU µs/req | added CPU µs/req |")
    p("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    added = {}
    verdict = []
    for m, c in cells:
        base = per_round(m, c, "sluice")
        for t in ["sluice"] + LIMIT_TARGETS:
            cur = per_round(m, c, t)
            if not cur:
                continue
            rounds = sorted(cur)
            rps = median([cur[k]["wrk"]["rps"] for k in rounds])
            p50 = median([cur[k]["wrk"]["p50_us"] for k in rounds])
            p99 = median([cur[k]["wrk"]["p99_us"] for k in rounds])
            cpus = [x for x in (cpu_per_req(cur[k]) for k in rounds) if x is not None]
            cpu_s = f"{median(cpus):.0f}" if cpus else "–"
            if t == "sluice":
                p(f"| {m} | {c} | {NAMES[t]} (no limits) | {len(rounds)} | {rps:,.0f} | 1 | "
                  f"{p50 / 1000:.2f} | – | {p99 / 1000:.2f} | – | – | {cpu_s} | – |")
                continue
            pairs = [(cur[k], base[k]) for k in rounds if k in base]
            if not pairs:
                continue

            def med_rng(f, fmt):
                xs = [f(a, b) for a, b in pairs]
                rng = f" [{fmt(min(xs))}, {fmt(max(xs))}]" if len(xs) > 1 else ""
                return median(xs), f"{fmt(median(xs))}{rng}"

            ratio, ratio_s = med_rng(lambda a, b: a["wrk"]["rps"] / b["wrk"]["rps"],
                                     lambda x: f"{x:.3f}×")
            d50, d50_s = med_rng(lambda a, b: a["wrk"]["p50_us"] - b["wrk"]["p50_us"],
                                 lambda x: f"{x:+.0f}")
            _, d99_s = med_rng(lambda a, b: a["wrk"]["p99_us"] - b["wrk"]["p99_us"],
                               lambda x: f"{x:+.0f}")
            dmean, dmean_s = med_rng(lambda a, b: a["wrk"]["mean_us"] - b["wrk"]["mean_us"],
                                     lambda x: f"{x:+.0f}")
            dcpu = [cpu_per_req(a) - cpu_per_req(b) for a, b in pairs
                    if cpu_per_req(a) is not None and cpu_per_req(b) is not None]
            dcpu_s = f"{median(dcpu):+.0f}" if dcpu else "–"
            mark = ""
            if t == "sluice_limits":
                ok = ratio >= LOCAL_LIMITS_TARGET
                mark = " ✅" if ok else " ❌"
                verdict.append((m, c, ratio, ok))
            added[(m, c, t)] = (d50, dmean, pairs)
            p(f"| {m} | {c} | {NAMES[t]} | {len(pairs)} | {rps:,.0f} | **{ratio_s}**{mark} | "
              f"{p50 / 1000:.2f} | {d50_s} | {p99 / 1000:.2f} | {d99_s} | {dmean_s} | {cpu_s} | "
              f"{dcpu_s} |")
    p("")
    p("Added = the limits run minus the no-limits run of the same round (wrk's percentiles are "
      "whole µs). At c > 1 the closed loop makes latency ≈ concurrency ÷ throughput, so the "
      "added latency there restates the throughput cost; c=1 is the clean per-call cost.\n")

    # ---- Redis: round trips and work per call
    red = [(m, c) for m, c in cells if (m, c, "sluice_redis") in runs]
    if red:
        p("**Redis per call** (Redis's own INFO counters, read before and after each run, divided "
          "by the run's calls; Redis is shared, so the last column shows its background traffic "
          "during the other targets' runs of the same cell):\n")
        p("| reply | conns | req/s | EVALSHA/call | commands/call (incl. inside scripts) | "
          "socket reads/call (≈ round trips) | script time µs/call | Redis CPU µs/call | "
          "gateway + Redis CPU µs/call | background socket reads/s |")
        p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m, c in red:
            rs = [r for r in runs[(m, c, "sluice_redis")] if r.get("redis")]
            if not rs:
                continue
            n = sum(r["wrk"]["requests"] for r in rs)
            tot = {k: sum(r["redis"][k] for r in rs) for k in ("reads", "commands", "evalsha", "evalsha_usec")}
            rcpu = [r["cpu_s"].get("redis") for r in rs if (r.get("cpu_s") or {}).get("redis") is not None]
            rcpu_s = f"{1e6 * sum(rcpu) / n:.0f}" if rcpu and len(rcpu) == len(rs) else "–"
            both = [cpu_per_req(r, with_redis=True) for r in rs]
            both_s = f"{median(both):.0f}" if all(x is not None for x in both) and rcpu else "–"
            bg = [r for t in TARGETS if t != "sluice_redis" for r in runs.get((m, c, t), [])
                  if r.get("redis")]
            bg_s = (f"{sum(r['redis']['reads'] for r in bg) / sum(r['wrk']['duration_s'] for r in bg):,.0f}"
                    if bg else "–")
            p(f"| {m} | {c} | {median([r['wrk']['rps'] for r in rs]):,.0f} | "
              f"{tot['evalsha'] / n:.2f} | {tot['commands'] / n:.1f} | {tot['reads'] / n:.2f} | "
              f"{tot['evalsha_usec'] / n:.0f} | {rcpu_s} | {both_s} | {bg_s} |")
        p("")
        if rtt_before:
            p(f"Bare Redis round trip (`redis-benchmark -t ping -c 1 -n 20000`, from wrk's core): "
              f"p50 {rtt_before[0] * 1000:.0f} µs, mean {rtt_before[1] * 1000:.0f} µs before the "
              f"load" + (f"; p50 {rtt_after[0] * 1000:.0f} µs, mean {rtt_after[1] * 1000:.0f} µs "
                         f"after it" if rtt_after else "") + ".\n")
        for m, c in red:
            a_red = added.get((m, c, "sluice_redis"))
            a_loc = added.get((m, c, "sluice_limits"))
            if c != 1 or not a_red:
                continue
            if a_loc:
                d50 = a_red[0] - a_loc[0]
                dmean = a_red[1] - a_loc[1]
                what = "Redis limits over in-process limits"
            else:
                d50, dmean, what = a_red[0], a_red[1], "Redis limits over no limits"
            line = f"At c=1 ({m}), {what} add {d50:.0f} µs at the median ({dmean:.0f} µs mean) per call"
            if rtt_before:
                line += (f": {d50 / (rtt_before[0] * 1000):.1f}× a bare Redis round trip "
                         f"({rtt_before[0] * 1000:.0f} µs p50), "
                         f"{dmean / (rtt_before[1] * 1000):.1f}× by the means")
            p(line + ".\n")

    # ---- paired: both gateways under load at the same moment
    paired = load_paired(out, "sluice_limits")
    if paired:
        p("**Paired, at the same moment** (`BENCH_PAIR_ROUNDS`): the no-limits gateway and the "
          "in-process-limits gateway driven together, each by its own wrk with half the "
          "connections, sharing the server core. Each one's calls per second of its own CPU time "
          "is what it would serve on a saturated core; both see the same machine at the same "
          "time, so their ratio is free of the speed drift between back-to-back runs (on a "
          "shared VM, tens of percent within seconds) that widens the ranges above.\n")
        p("| reply | conns (each) | rounds | no limits calls/CPU-s | in-process limits calls/CPU-s "
          "| ÷ no limits (median [range]) | CPU µs/call (no limits / limits) |")
        p("|---|---:|---:|---:|---:|---:|---:|")
        for (m, c), ds in sorted(paired.items()):
            rs = [d["ratio"] for d in ds]
            a = median([d["a"]["calls_per_cpu_s"] for d in ds])
            b = median([d["b"]["calls_per_cpu_s"] for d in ds])
            rng = f" [{min(rs):.3f}, {max(rs):.3f}]" if len(rs) > 1 else ""
            ok = median(rs) >= LOCAL_LIMITS_TARGET
            p(f"| {m} | {c} ({max(1, c // 2)}) | {len(ds)} | {a:,.0f} | {b:,.0f} | "
              f"**{median(rs):.3f}×**{rng} {'✅' if ok else '❌'} | {1e6 / a:.1f} / {1e6 / b:.1f} |")
        p("")

    lines = []
    if verdict:
        bad = [f"{m} c={c} ({r:.3f}×)" for m, c, r, ok in verdict if not ok]
        lines.append(f"- In-process limits cost < {100 * (1 - LOCAL_LIMITS_TARGET):.0f}% throughput, "
                     "back-to-back runs: "
                     + ("met at " + ", ".join(f"{m} c={c} ({r:.3f}×)" for m, c, r, _ in verdict) + "."
                        if not bad else "missed at " + ", ".join(bad) + "."))
    if paired:
        res = [(m, c, median([d["ratio"] for d in ds])) for (m, c), ds in sorted(paired.items())]
        bad = [(m, c, r) for m, c, r in res if r < LOCAL_LIMITS_TARGET]
        lines.append(f"- In-process limits cost < {100 * (1 - LOCAL_LIMITS_TARGET):.0f}% throughput, "
                     "paired at the same moment: "
                     + ("met" if not bad else "missed") + " at "
                     + ", ".join(f"{m} c={c} ({r:.3f}×)" for m, c, r in (bad or res)) + ".")
    return lines


if __name__ == "__main__":
    main()
