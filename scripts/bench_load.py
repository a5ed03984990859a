"""The platform under mixed load with authentication on: streams, pages and a stress test at once.

``.venv/bin/python scripts/bench_load.py [--duration 60] [--sse-clients 200] [--page-clients 20] [--think 1]``

Starts the simulator, gunicorn and the job worker the way scripts/start.sh does (scripts/benchkit.py:
``ENVIRONMENT=production``, so authentication is on; one operator token in ``API_TOKENS``, sent as
``Authorization: Bearer`` by every client; the catalogue of scripts/bench_models.yaml), then:

1. baseline (``--baseline`` s, default 20): the SSE clients talk to the simulator directly (the three
   chat-completions streams the relay would open), nothing else runs: the reference for the overheads;
2. mixed (``--duration`` s, default 60), all at once:
   * one stress test (sim-steady through evalscope, 2 concurrent requests, far more than fit in the
     phase; cancelled at the end) started before the phase, so it runs throughout;
   * ``--sse-clients`` clients, each streaming ``POST /api/v1/multi-inference`` (three sim-steady aliases,
     100 tokens at 20 ms each) one request after another until the phase ends;
   * ``--page-clients`` clients, each GETting in turn the home page, /results, /evaluations, /leaderboard
     and the stress test's page, timing each answer in full, then waiting ``--think`` s (default 1: a
     person reading; 0 asks for the next page at once, which on 2 cores starves the streams).

The SSE and page clients run in two separate load-generator processes (asyncio + aiohttp), so that page
timings do not queue behind 30,000 token events a second in one event loop. It reports errors of each
kind (target: none), page latency p50/p99 (target reported, not set by the issue), the relay's TTFT and
inter-token gap against the baseline (as scripts/bench_relay.py reports them: relay minus direct), the
stress test's progress, the machine's load (busy cores of 2, other people's work included), and counts
``database is locked`` in every log of the run (target: none). Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchkit import PYTHON, ROOT, Platform, cpu_seconds_total, machine_busy_s, pct, rss_mb

MODELS_FILE = ROOT / "scripts" / "bench_models.yaml"
KEYS = ["steady-a", "steady-b", "steady-c"]
TOKENS = 100
PROMPT = "Benchmark the relay under load: say something steady."
PAGES = ["/", "/results", "/evaluations", "/leaderboard"]  # and the stress test's page
STRESS_BODY = {"model": "steady-a", "concurrency": [2], "requests": 2000, "output_tokens": 50,
               "prompt": "Say something steady for the load benchmark."}
LOCKED = "database is locked"
SPEC_VARIABLE = "BENCH_LOAD_SPEC"


# --- load generators (each runs in its own process) ---------------------------------------------


class StreamLog:
    __slots__ = ("done", "error", "start", "times")

    def __init__(self, start: float) -> None:
        self.start = start
        self.times: list[float] = []
        self.error: str | None = None
        self.done = False


_DELTA_HEAD = b'event: delta\ndata: {"model":"'


async def _relay(session: Any, spec: dict[str, Any], logs: dict[bytes, StreamLog]) -> None:
    body = json.dumps({"models": KEYS, "text": PROMPT, "max_tokens": TOKENS}).encode()
    async with session.post(spec["url"], data=body, headers=spec["headers"]) as response:
        if response.status != 200:
            text = (await response.read())[:200].decode("utf-8", "replace")
            for log in logs.values():
                log.error = f"HTTP {response.status}: {text}"
            return
        pending = b""
        head = len(_DELTA_HEAD)
        async for data in response.content.iter_any():
            now = time.perf_counter()
            pending += data
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if event.startswith(_DELTA_HEAD):
                    logs[event[head:event.index(b'"', head)]].times.append(now)
                elif event.startswith(b"event: model_done\n"):
                    logs[json.loads(event[24:])["model"].encode()].done = True
                elif event.startswith(b"event: model_error\n"):
                    payload = json.loads(event[25:])
                    logs[payload["model"].encode()].error = json.dumps(payload["error"])[:200]


async def _direct(session: Any, spec: dict[str, Any], log: StreamLog) -> None:
    body = json.dumps({"model": "sim-steady", "messages": [{"role": "user", "content": PROMPT}],
                       "max_tokens": TOKENS, "stream": True, "stream_options": {"include_usage": True}}).encode()
    async with session.post(spec["url"], data=body, headers={"Content-Type": "application/json"}) as response:
        if response.status != 200:
            log.error = f"HTTP {response.status}"
            return
        pending = b""
        async for data in response.content.iter_any():
            now = time.perf_counter()
            pending += data
            *events, pending = pending.split(b"\n\n")
            for event in events:
                at = event.find(b'"content":"')
                if at >= 0 and event[at + 11:at + 12] != b'"':
                    log.times.append(now)
                elif event == b"data: [DONE]":
                    log.done = True


async def _sse_client(spec: dict[str, Any], session: Any, delay: float, end: float, logs: list[StreamLog]) -> None:
    await asyncio.sleep(delay)
    while time.perf_counter() < end:
        start = time.perf_counter()
        if spec["mode"] == "direct":
            streams = [StreamLog(start) for _ in KEYS]
            logs.extend(streams)
            results = await asyncio.gather(*(_direct(session, spec, log) for log in streams), return_exceptions=True)
            for log, result in zip(streams, results, strict=True):
                if isinstance(result, BaseException):
                    log.error = f"{result.__class__.__name__}: {result}"
        else:
            by_key = {key.encode(): StreamLog(start) for key in KEYS}
            logs.extend(by_key.values())
            try:
                await _relay(session, spec, by_key)
            except Exception as exc:  # every failure is counted, not raised
                for log in by_key.values():
                    log.error = log.error or f"{exc.__class__.__name__}: {exc}"


async def _sse_load(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    clients = spec["clients"]
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=10)
    logs: list[StreamLog] = []
    started = time.perf_counter()
    end = started + spec["duration_s"]
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.ensure_future(_sse_client(spec, session, spec["ramp_s"] * k / clients, end, logs))
                 for k in range(clients)]
        await asyncio.wait(tasks, timeout=spec["duration_s"] + 40)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    errors, complete = [], []
    for log in logs:
        if log.error is None and not log.done:
            log.error = "stream ended without its end event"
        if log.error is None and len(log.times) != TOKENS:
            log.error = f"{len(log.times)} tokens, expected {TOKENS}"
        (complete if log.error is None else errors).append(log)
    gaps = [b - a for log in complete for a, b in zip(log.times, log.times[1:], strict=False)]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"streams": len(logs), "complete": len(complete), "tokens": sum(len(log.times) for log in logs),
            "errors": len(errors), "error_samples": sorted({log.error or "" for log in errors})[:5],
            "ttft_p50_ms": pct([(log.times[0] - log.start) * 1000 for log in complete], 50),
            "ttft_p99_ms": pct([(log.times[0] - log.start) * 1000 for log in complete], 99),
            "gap_p50_ms": pct(gaps, 50) * 1000, "gap_p99_ms": pct(gaps, 99) * 1000,
            "wall_s": time.perf_counter() - started, "loadgen_cpu_s": usage.ru_utime + usage.ru_stime}


async def _page_client(session: Any, spec: dict[str, Any], offset: int, end: float,
                       times: dict[str, list[float]], errors: list[str]) -> None:
    await asyncio.sleep(spec["ramp_s"] * offset / spec["clients"])
    paths = spec["paths"]
    turn = offset
    while time.perf_counter() < end:
        path = paths[turn % len(paths)]
        turn += 1
        start = time.perf_counter()
        try:
            async with session.get(spec["base"] + path, headers=spec["headers"], allow_redirects=False) as response:
                body = await response.read()
                if response.status != 200 or b"</html>" not in body:
                    errors.append(f"GET {path}: HTTP {response.status} {body[:120]!r}")
        except Exception as exc:  # counted, not raised
            errors.append(f"GET {path}: {exc.__class__.__name__}: {exc}")
        else:
            if response.status == 200 and b"</html>" in body:
                times.setdefault(path, []).append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(spec.get("think_s", 0.0))


async def _page_load(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    times: dict[str, list[float]] = {}
    errors: list[str] = []
    end = time.perf_counter() + spec["duration_s"]
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        await asyncio.gather(*(_page_client(session, spec, k, end, times, errors) for k in range(spec["clients"])))
    every = [t for values in times.values() for t in values]
    return {"requests": len(every) + len(errors), "errors": len(errors), "error_samples": sorted(set(errors))[:5],
            "p50_ms": pct(every, 50), "p99_ms": pct(every, 99), "max_ms": max(every, default=float("nan")),
            "by_page": {path: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for path, v in times.items()}}


def loadgen_main(kind: str, spec_json: str) -> int:
    spec = json.loads(spec_json)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(_sse_load(spec) if kind == "sse" else _page_load(spec))))
    return 0


def _spawn_loadgen(kind: str, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    # The spec holds the token: through the environment, never the command line (ps shows that to all).
    return subprocess.Popen([str(PYTHON), __file__, "--loadgen", kind], cwd=ROOT,
                            env={**os.environ, SPEC_VARIABLE: json.dumps(spec)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _collect(proc: subprocess.Popen[bytes], deadline_s: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.decode()[-2000:]}")
    return json.loads(out)


# --- the platform, with a token ------------------------------------------------------------------


def unauthenticated_refused(servers: Platform) -> bool:
    """Authentication is really on: the same API call without the token answers 401."""
    try:
        urllib.request.urlopen(servers.base + "/api/v1/stress-tests?limit=1", timeout=10)
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    return False


def locked_lines(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (".log" in path.suffixes or path.suffix == ".out"):
            with contextlib.suppress(OSError):
                for line in path.read_text(errors="replace").splitlines():
                    if LOCKED in line:
                        found.append(f"{path.relative_to(folder)}: {line[:200]}")
    return found


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of mixed load (default 60)")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of the direct baseline (default 20)")
    parser.add_argument("--sse-clients", type=int, default=200)
    parser.add_argument("--page-clients", type=int, default=20)
    parser.add_argument("--think", type=float, default=1.0, help="seconds a page client waits between pages")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        return loadgen_main(args.loadgen, os.environ.pop(SPEC_VARIABLE))

    with open("/proc/cpuinfo") as f:
        cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    servers = Platform("bench_load_", worker=True, models_file=MODELS_FILE)  # with its own operator token
    t0 = time.monotonic()
    failed = 0
    try:
        servers.start()
        print(f"machine: {os.cpu_count()} cores ({cpu_model}); load average {os.getloadavg()[0]:.2f} before; "
              f"gunicorn workers {servers.web_workers()}; tmp {servers.tmp}", flush=True)
        auth_on = unauthenticated_refused(servers)
        print(f"authentication on (a call without the token answers 401): {auth_on}", flush=True)
        headers = {**servers.auth, "Content-Type": "application/json"}
        sse = {"clients": args.sse_clients, "ramp_s": 2.0, "headers": headers}
        base = _collect(_spawn_loadgen("sse", {**sse, "mode": "direct", "duration_s": args.baseline,
                                               "url": f"http://127.0.0.1:{servers.sim_port}/v1/chat/completions"}),
                        args.baseline + 60)
        print(f"baseline done: {base['streams']} direct streams, {base['errors']} errors", flush=True)

        job = servers.api("POST", "/api/v1/stress-tests", STRESS_BODY)
        job_id = job["id"]
        end = time.monotonic() + 60
        while (servers.api("GET", f"/api/v1/stress-tests/{job_id}").get("progress") or {}).get("processed", 0) < 1 \
                and time.monotonic() < end:  # evalscope has started and sent its first requests
            time.sleep(0.5)
        pages = {"clients": args.page_clients, "ramp_s": 2.0, "duration_s": args.duration, "base": servers.base,
                 "think_s": args.think,
                 "headers": dict(servers.auth),
                 "paths": [*PAGES, f"/stress-tests/{job_id}"]}
        workers = servers.web_workers()
        cpu_before, box_before, load_started = cpu_seconds_total(workers), machine_busy_s(), time.monotonic()
        relay_proc = _spawn_loadgen("sse", {**sse, "mode": "relay", "duration_s": args.duration,
                                            "url": f"{servers.base}/api/v1/multi-inference"})
        page_proc = _spawn_loadgen("pages", pages)
        peak_rss, load_peak = 0.0, 0.0
        while relay_proc.poll() is None and time.monotonic() - load_started < args.duration + 60:
            peak_rss = max(peak_rss, rss_mb(workers))
            load_peak = max(load_peak, os.getloadavg()[0])
            time.sleep(0.5)
        relay, page = _collect(relay_proc, 60), _collect(page_proc, 60)
        wall = time.monotonic() - load_started
        web_cores = (cpu_seconds_total(workers) - cpu_before) / wall
        box_cores = (machine_busy_s() - box_before) / wall
        stress = servers.api("GET", f"/api/v1/stress-tests/{job_id}")
        stress_ok = stress["status"] == "running" and (stress.get("progress") or {}).get("processed", 0) > 0
        servers.api("POST", f"/api/v1/stress-tests/{job_id}/cancel")
        end = time.monotonic() + 30
        while servers.api("GET", f"/api/v1/stress-tests/{job_id}")["status"] not in (
                "cancelled", "completed", "failed", "interrupted") and time.monotonic() < end:
            time.sleep(0.5)
        final = servers.api("GET", f"/api/v1/stress-tests/{job_id}")["status"]
    finally:
        servers.stop()
    locked = locked_lines(servers.tmp)

    print()
    print(f"mixed phase {args.duration:g} s: {args.sse_clients} SSE clients x 3 models, {args.page_clients} page "
          f"clients ({args.think:g} s between pages), one stress test; wall {wall:.1f} s")
    print(f"machine: busy {box_cores:.2f} of {os.cpu_count()} cores over the phase (everyone's work), peak 1-min "
          f"load average {load_peak:.2f}; gunicorn workers {web_cores:.2f} cores, peak RSS {peak_rss:.0f} MB; "
          f"load generators {relay['loadgen_cpu_s'] / relay['wall_s']:.2f} (SSE) cores")
    print(f"SSE: {relay['streams']} model streams ({relay['complete']} complete, {relay['tokens']} tokens), "
          f"{relay['errors']} errors {relay['error_samples'] or ''}")
    print(f"  TTFT ms p50/p99: direct {fmt(base['ttft_p50_ms'])}/{fmt(base['ttft_p99_ms'])}, relay "
          f"{fmt(relay['ttft_p50_ms'])}/{fmt(relay['ttft_p99_ms'])}, added "
          f"{fmt(relay['ttft_p50_ms'] - base['ttft_p50_ms'])}/{fmt(relay['ttft_p99_ms'] - base['ttft_p99_ms'])} "
          f"(baseline: {base['streams']} direct streams, {base['errors']} errors)")
    print(f"  inter-token gap ms p50/p99: direct {fmt(base['gap_p50_ms'])}/{fmt(base['gap_p99_ms'])}, relay "
          f"{fmt(relay['gap_p50_ms'])}/{fmt(relay['gap_p99_ms'])}, added p99 "
          f"{fmt(relay['gap_p99_ms'] - base['gap_p99_ms'])}")
    print(f"pages: {page['requests']} requests, {page['errors']} errors {page['error_samples'] or ''}; "
          f"latency ms p50 {fmt(page['p50_ms'])}, p99 {fmt(page['p99_ms'])}, max {fmt(page['max_ms'])}")
    for path, row in page["by_page"].items():
        print(f"  {path:<32} n={row['n']:<5} p50 {fmt(row['p50_ms']):>7}  p99 {fmt(row['p99_ms']):>7}")
    print(f"stress test {job_id}: {stress['status']} at the end of the phase, progress "
          f"{json.dumps(stress.get('progress'))[:300]}; after the cancel: {final}")
    print(f"'{LOCKED}' in the logs: {len(locked)} lines {locked[:5] or ''}")
    print()
    checks = [("authentication on", auth_on), ("zero SSE errors", relay["errors"] == 0),
              ("zero page errors", page["errors"] == 0), ("the stress test ran throughout", stress_ok),
              (f"no '{LOCKED}' in any log", not locked)]
    for name, ok in checks:
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"total {time.monotonic() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
