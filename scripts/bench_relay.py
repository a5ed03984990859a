"""What the /multi-inference relay adds to streaming, measured against talking to the model directly.

``.venv/bin/python scripts/bench_relay.py [--quick] [--repeats N] [--levels 1,10,...] [--workers N]``

Starts the simulator and gunicorn the way scripts/start.sh does (own free loopback ports, a temporary
database and log directory, the catalogue in scripts/bench_models.yaml: three keys per simulator
profile), then for each level of concurrent clients runs two phases against the same simulator:

* direct: each client opens the three chat-completions streams to sim-steady that the relay would open;
* relay:  each client streams one ``POST /api/v1/multi-inference`` naming three sim-steady aliases.

Clients start spread over ``RAMP_S`` (steady concurrency, not a thundering herd), each runs a fixed
number of requests one after another, ~100 tokens per model at 20 ms. The load generator is a separate
process (asyncio + aiohttp, uvloop when present) that splits SSE incrementally and stamps each token
with the time its bytes arrived. Phases alternate direct/relay and repeat; the figures are medians
over repeats of in-run differences (relay minus direct), because the 2-core machine is shared and noisy.
A last phase holds 1,000 slow clients (sim-slow, 1 token/s, 5 tokens per model).

``--database postgresql`` runs the same on a throwaway PostgreSQL server (scripts/benchkit.py's
``ThrowawayPostgres``) that gunicorn reaches through ``DATABASE_URL`` (psycopg 3): every relayed request
writes its run and results rows there. It first checks that psycopg waits cooperatively under gevent
(``GEVENT_CHECK``: many greenlets of one patched process each run ``SELECT pg_sleep(0.5)``; cooperative,
they take ~0.5 s together, not N x 0.5 s, and the event loop never stalls), then runs the phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchkit import (
    PYTHON,
    ROOT,
    Platform,
    ThrowawayPostgres,
    cpu_seconds_total,
    machine_busy_s,
    median,
    pct,
    rss_mb,
)

MODELS_FILE = ROOT / "scripts" / "bench_models.yaml"

STEADY_KEYS = ["steady-a", "steady-b", "steady-c"]
SLOW_KEYS = ["slow-a", "slow-b", "slow-c"]
STEADY_TOKENS = 100
SLOW_TOKENS = 5
RAMP_S = 1.0
SLOW_CLIENTS = 1000
SLOW_RAMP_S = 2.0
PROMPT = "Benchmark the relay: say something steady."
TARGETS = {  # clients: (added TTFT p99 ms, added inter-token gap p99 ms)
    100: (25.0, 10.0),
    200: (50.0, 20.0),
}


# --- does psycopg wait cooperatively under gevent? (runs in its own, patched, process) -------------

# argv: the database URL, greenlets, seconds each sleeps in PostgreSQL. Prints one JSON line. Three runs,
# each beside a ticker greenlet that records the event loop's longest stall (a 5 ms sleep that woke late):
# raw: psycopg connections of its own, one per greenlet; app: the platform's engine (its pool) through
# db.session in an app context per greenlet, as a request does; control: gevent's unpatched time.sleep, a
# call that blocks the loop (it shows what blocking looks like: N x the sleep, and a stall as long).
GEVENT_CHECK = r"""
from gevent import monkey
monkey.patch_all()
import json, sys, time
import gevent, psycopg
from sqlalchemy import text
url, count, sleep_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

def schedstat():
    # this thread's (every greenlet's) time on a CPU and waiting for one, in seconds
    with open("/proc/thread-self/schedstat") as f:
        on_cpu, waiting = f.read().split()[:2]
    return int(on_cpu) / 1e9, int(waiting) / 1e9

def timed(work, n):
    stall = [0.0, 0.0, 0.0]  # the longest stall; what the process did meanwhile: on a CPU, waiting for one
    done = [False]
    def ticker():
        while not done[0]:
            before, (cpu, waiting) = time.perf_counter(), schedstat()
            gevent.sleep(0.005)
            late = time.perf_counter() - before - 0.005
            if late > stall[0]:
                after = schedstat()
                stall[:] = [late, after[0] - cpu, after[1] - waiting]
    probe = gevent.spawn(ticker)
    gevent.sleep(0.02)
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(work, i) for i in range(n)], raise_error=True)
    wall = time.perf_counter() - started
    done[0] = True
    probe.join()
    return {"greenlets": n, "wall_s": wall, "max_stall_ms": stall[0] * 1000, "stall_cpu_ms": stall[1] * 1000,
            "stall_runqueue_ms": stall[2] * 1000}

dsn = url.replace("postgresql+psycopg://", "postgresql://")
connections = [None] * count
def connect(i):
    connections[i] = psycopg.connect(dsn, autocommit=True)
connecting = timed(connect, count)
raw = timed(lambda i: connections[i].execute("SELECT pg_sleep(%s)", (sleep_s,)), count)
for connection in connections:
    connection.close()

from backend.app import create_app
from backend.db import db
app = create_app()
options = app.config["SQLALCHEMY_ENGINE_OPTIONS"]
size = options["pool_size"] + options["max_overflow"]  # connections the pool may open at once
def through_app(i):
    with app.app_context():
        db.session.execute(text("SELECT pg_sleep(:s)"), {"s": sleep_s})
        db.session.commit()
colds = []
for _ in range(3):  # the pool opens its connections meanwhile; the worst of three fresh pools
    with app.app_context():
        db.engine.dispose()
    colds.append(timed(through_app, min(count, size)))
app_cold = max(colds, key=lambda r: r["max_stall_ms"])
app_cold["rounds_stall_ms"] = [r["max_stall_ms"] for r in colds]
app_run = timed(through_app, min(count, size))  # the pool has its connections

blocking_sleep = monkey.get_original("time", "sleep")
control = timed(lambda i: blocking_sleep(0.1), 5)
control["sleep_s"] = 0.1
print(json.dumps({"psycopg": psycopg.__version__, "gevent": gevent.__version__, "sleep_s": sleep_s,
                  "connect": connecting, "raw": raw, "app_cold": app_cold, "app": app_run, "control": control}))
"""


def gevent_check(servers: Platform, url: str, greenlets: int = 50, sleep_s: float = 0.5) -> dict[str, Any]:
    """Run GEVENT_CHECK in a fresh process with the platform's environment (its database) and print it."""
    done = subprocess.run([str(PYTHON), "-c", GEVENT_CHECK, url, str(greenlets), str(sleep_s)], cwd=ROOT,
                          env=servers.env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"the gevent check failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    s = result["sleep_s"]
    print(f"gevent check (psycopg {result['psycopg']}, gevent {result['gevent']}), each greenlet SELECT "
          f"pg_sleep({s:g}) in one gevent-patched process:")
    r = result["connect"]
    print(f"        {r['greenlets']:>3} greenlets each open a psycopg connection: wall {r['wall_s']:.3f} s, "
          f"event loop's longest stall {r['max_stall_ms']:.1f} ms")
    # Cooperative: the queries overlap (wall well under twice one sleep) and the loop is never blocked (off the
    # CPU, not waiting for one) for as long as half a query: a driver that blocked would hold it for a whole
    # query, as the control does. A stall spent on the CPU (the app's Python work, a garbage collection) or in
    # the run queue (the shared machine) is printed but is not the driver waiting.
    for name, label in (("raw", "own psycopg connections"),
                        ("app_cold", "the app's engine, db.session, a fresh pool opening its connections"),
                        ("app", "the app's engine, db.session, pool warm")):
        r = result[name]
        # off the CPU by choice (in a system call), not waiting for a core: what a blocking driver does
        r["stall_blocked_ms"] = max(0.0, r["max_stall_ms"] - r["stall_cpu_ms"] - r["stall_runqueue_ms"])
        ok = r["wall_s"] < 2 * s and r["stall_blocked_ms"] < s * 1000 / 2
        print(f"  {'PASS' if ok else 'FAIL'}  {r['greenlets']:>3} greenlets, {label}: wall {r['wall_s']:.3f} s "
              f"(serial: {r['greenlets'] * s:.1f} s), event loop's longest stall {r['max_stall_ms']:.1f} ms "
              f"(meanwhile on a CPU {r['stall_cpu_ms']:.1f} ms, waiting for one {r['stall_runqueue_ms']:.1f} ms, "
              f"blocked {r['stall_blocked_ms']:.1f} ms)"
              + (f"; stalls of the 3 fresh pools {', '.join(f'{x:.0f}' for x in r['rounds_stall_ms'])} ms"
                 if "rounds_stall_ms" in r else ""))
        result[f"{name}_ok"] = ok
    c = result["control"]
    c["stall_blocked_ms"] = max(0.0, c["max_stall_ms"] - c["stall_cpu_ms"] - c["stall_runqueue_ms"])
    print(f"  control: {c['greenlets']} greenlets of a blocking time.sleep({c['sleep_s']:g}): "
          f"wall {c['wall_s']:.3f} s, longest stall {c['max_stall_ms']:.1f} ms (on a CPU {c['stall_cpu_ms']:.1f} ms, "
          f"blocked {c['stall_blocked_ms']:.1f} ms: what a blocking driver would look like)", flush=True)
    return result


# --- load generator (runs in its own process) ----------------------------------------------------


class StreamLog:
    """One upstream model stream as a client saw it: when it was asked for, when each token arrived."""

    __slots__ = ("done", "error", "start", "times")

    def __init__(self, start: float) -> None:
        self.start = start
        self.times: list[float] = []
        self.error: str | None = None
        self.done = False


def _direct_body(model: str, max_tokens: int) -> bytes:
    # What backend/providers/openai_compat.build_body sends upstream for the same request.
    return json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}],
                       "max_tokens": max_tokens, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()


async def _direct_stream(session: Any, url: str, model: str, max_tokens: int, log: StreamLog) -> None:
    """One chat-completions stream; a token is a chunk whose delta has non-empty content."""
    async with session.post(url, data=_direct_body(model, max_tokens),
                            headers={"Content-Type": "application/json"}) as response:
        if response.status != 200:
            log.error = f"HTTP {response.status}"
            return
        pending = b""
        times = log.times
        async for data in response.content.iter_any():
            now = time.perf_counter()
            pending += data
            *events, pending = pending.split(b"\n\n")
            for event in events:
                at = event.find(b'"content":"')
                if at >= 0 and event[at + 11:at + 12] != b'"':
                    times.append(now)
                elif event == b"data: [DONE]":
                    log.done = True
                elif b'"error"' in event:
                    log.error = event[:200].decode("utf-8", "replace")


_DELTA_HEAD = b'event: delta\ndata: {"model":"'
TOKEN_VARIABLE = "PEP_BENCH_TOKEN"  # the platform's token for the load generator (benchkit.Platform.token)


async def _relay_stream(session: Any, url: str, keys: list[str], max_tokens: int,
                        logs: dict[bytes, StreamLog]) -> None:
    """One /multi-inference stream; tokens are ``delta`` events, attributed by their model key."""
    body = json.dumps({"models": keys, "text": PROMPT, "max_tokens": max_tokens}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {os.environ[TOKEN_VARIABLE]}"}
    async with session.post(url, data=body, headers=headers) as response:
        if response.status != 200:
            for log in logs.values():
                log.error = f"HTTP {response.status}"
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
                    logs[payload["model"].encode()].error = json.dumps(payload["error"])
                elif event.startswith(b"event: delta\n"):
                    payload = json.loads(event[19:])  # a layout this parser does not expect: slow path
                    logs[payload["model"].encode()].times.append(now)


async def _client(spec: dict[str, Any], session: Any, delay: float, logs: list[StreamLog]) -> None:
    await asyncio.sleep(delay)
    for _ in range(spec["requests_per_client"]):
        start = time.perf_counter()
        if spec["mode"] == "direct":
            streams = [StreamLog(start) for _ in spec["keys"]]
            logs.extend(streams)
            results = await asyncio.gather(
                *(_direct_stream(session, spec["url"], spec["upstream_model"], spec["max_tokens"], log)
                  for log in streams), return_exceptions=True)
            for log, result in zip(streams, results, strict=True):
                if isinstance(result, BaseException):
                    log.error = f"{result.__class__.__name__}: {result}"
        else:
            by_key = {key.encode(): StreamLog(start) for key in spec["keys"]}
            logs.extend(by_key.values())
            try:
                await _relay_stream(session, spec["url"], spec["keys"], spec["max_tokens"], by_key)
            except Exception as exc:  # every failure is counted, not raised
                for log in by_key.values():
                    log.error = log.error or f"{exc.__class__.__name__}: {exc}"


def _summarise(spec: dict[str, Any], logs: list[StreamLog], wall_s: float) -> dict[str, Any]:
    expected = spec["max_tokens"]
    errors: list[str] = []
    complete: list[StreamLog] = []
    for log in logs:
        if log.error is None and not log.done:
            log.error = "stream ended without its end event"
        if log.error is None and len(log.times) != expected:
            log.error = f"{len(log.times)} tokens, expected {expected}"
        if log.error is None:
            complete.append(log)
        else:
            errors.append(log.error)
    gaps = [b - a for log in complete for a, b in zip(log.times, log.times[1:], strict=False)]
    offsets = [[(log.times[i] - log.start) * 1000 for log in complete] for i in range(expected)]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "streams": len(logs),
        "tokens": sum(len(log.times) for log in logs),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "ttft_ms": [(log.times[0] - log.start) * 1000 for log in complete],
        "gap_p50_ms": pct(gaps, 50) * 1000,
        "gap_p99_ms": pct(gaps, 99) * 1000,
        "offset_p50_ms": [pct(column, 50) for column in offsets],
        "offset_p99_ms": [pct(column, 99) for column in offsets],
        "wall_s": wall_s,
        "loadgen_cpu_s": usage.ru_utime + usage.ru_stime,
    }


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    clients = spec["clients"]
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # a fresh connection per stream, as the relay
    timeout = aiohttp.ClientTimeout(total=spec["request_timeout_s"], sock_connect=10)
    logs: list[StreamLog] = []
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.ensure_future(_client(spec, session, spec["ramp_s"] * k / clients, logs))
                 for k in range(clients)]
        _, late = await asyncio.wait(tasks, timeout=spec["deadline_s"])
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    for log in logs:
        if late and log.error is None and not log.done:
            log.error = "phase deadline passed"
    return _summarise(spec, logs, time.perf_counter() - started)


def loadgen_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(_load(spec))))
    return 0


# --- one phase (the platform itself: scripts/benchkit.py) ----------------------------------------


def run_phase(servers: Platform, mode: str, clients: int, requests_per_client: int, slow: bool = False,
              ramp_s: float = RAMP_S, postgres: ThrowawayPostgres | None = None) -> dict[str, Any]:
    tokens = SLOW_TOKENS if slow else STEADY_TOKENS
    per_request_s = tokens * (1.0 if slow else 0.02) + 5
    spec = {
        "mode": mode,
        "clients": clients,
        "requests_per_client": requests_per_client,
        "keys": SLOW_KEYS if slow else STEADY_KEYS,
        "upstream_model": "sim-slow" if slow else "sim-steady",
        "max_tokens": tokens,
        "ramp_s": ramp_s,
        "request_timeout_s": per_request_s * 3,
        "deadline_s": ramp_s + per_request_s * requests_per_client * 2,
        "url": (f"http://127.0.0.1:{servers.sim_port}/v1/chat/completions" if mode == "direct"
                else f"http://127.0.0.1:{servers.web_port}/api/v1/multi-inference"),
    }
    workers = servers.web_workers()
    cpu_before = cpu_seconds_total(workers)
    sim_before = cpu_seconds_total([servers.sim.pid])
    db_pids = postgres.pids() if postgres else []  # a backend per pooled connection: they stay
    db_before = cpu_seconds_total(db_pids)
    box_before = machine_busy_s()
    started = time.monotonic()
    proc = subprocess.Popen([str(PYTHON), __file__, "--loadgen", json.dumps(spec)], cwd=ROOT,
                            env={**os.environ, TOKEN_VARIABLE: servers.token},  # never on the command line
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    peak_rss = 0.0
    hard_end = started + spec["deadline_s"] + 30
    while proc.poll() is None and time.monotonic() < hard_end:
        peak_rss = max(peak_rss, rss_mb(workers))
        time.sleep(0.25)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=10)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.decode()[-2000:]}")
    result = json.loads(out)
    relay_cpu = cpu_seconds_total(workers) - cpu_before
    result.update(mode=mode, clients=clients, relay_cpu_s=relay_cpu, relay_cores=relay_cpu / wall,
                  sim_cores=(cpu_seconds_total([servers.sim.pid]) - sim_before) / wall, rss_mb=peak_rss,
                  db_cores=(cpu_seconds_total(db_pids) - db_before) / wall if postgres else float("nan"),
                  box_cores=(machine_busy_s() - box_before) / wall,
                  relay_us_per_token=relay_cpu / result["tokens"] * 1e6 if result["tokens"] else float("nan"))
    return result


# --- comparison ----------------------------------------------------------------------------------


def compare(direct: dict[str, Any], relay: dict[str, Any]) -> dict[str, float]:
    """In-run differences of one direct/relay pair (ms)."""
    added_tok_50 = [r - d for r, d in zip(relay["offset_p50_ms"], direct["offset_p50_ms"], strict=True)]
    added_tok_99 = [r - d for r, d in zip(relay["offset_p99_ms"], direct["offset_p99_ms"], strict=True)]
    return {
        "ttft_d50": pct(direct["ttft_ms"], 50), "ttft_d99": pct(direct["ttft_ms"], 99),
        "ttft_r50": pct(relay["ttft_ms"], 50), "ttft_r99": pct(relay["ttft_ms"], 99),
        "ttft_add50": pct(relay["ttft_ms"], 50) - pct(direct["ttft_ms"], 50),
        "ttft_add99": pct(relay["ttft_ms"], 99) - pct(direct["ttft_ms"], 99),
        "tok_add50": median(added_tok_50), "tok_add99": median(added_tok_99),
        "gap_d50": direct["gap_p50_ms"], "gap_d99": direct["gap_p99_ms"],
        "gap_r50": relay["gap_p50_ms"], "gap_r99": relay["gap_p99_ms"],
        "gap_add99": relay["gap_p99_ms"] - direct["gap_p99_ms"],
        "err_d": direct["errors"], "err_r": relay["errors"],
        "relay_cores": relay["relay_cores"], "us_tok": relay["relay_us_per_token"],
        "rss": relay["rss_mb"], "sim_d": direct["sim_cores"], "sim_r": relay["sim_cores"], "db_r": relay["db_cores"],
        "box_d": direct["box_cores"], "box_r": relay["box_cores"],
        "lg_d": direct["loadgen_cpu_s"] / direct["wall_s"], "lg_r": relay["loadgen_cpu_s"] / relay["wall_s"],
    }


def combine(pairs: list[dict[str, float]]) -> dict[str, float]:
    """Medians over repeats; errors are summed."""
    combined = {key: median([p[key] for p in pairs]) for key in pairs[0]}
    combined["err_d"] = sum(p["err_d"] for p in pairs)
    combined["err_r"] = sum(p["err_r"] for p in pairs)
    combined["repeats"] = len(pairs)
    return combined


def fmt(value: float, digits: int = 1) -> str:
    return "  n/a" if value != value else f"{value:.{digits}f}"


def print_table(rows: dict[str, dict[str, float]]) -> None:
    header = (f"{'clients':>9} {'rep':>3} | {'TTFT d p50/p99':>15} {'TTFT r p50/p99':>15} {'+TTFT p50/p99':>14} | "
              f"{'+tok p50/p99':>12} | {'gap d p50/p99':>13} {'gap r p50/p99':>13} {'+gap p99':>8} | "
              f"{'err d/r':>7} | {'relay cpu':>9} {'us/tok':>6} {'RSS MB':>6} | {'sim cpu d/r':>11} {'lg cpu d/r':>10} "
              f"{'pg r':>4} {'box d/r':>9}")
    print(header)
    print("-" * len(header))
    for label, r in rows.items():
        print(f"{label:>9} {int(r['repeats']):>3} | "
              f"{fmt(r['ttft_d50']):>7}/{fmt(r['ttft_d99']):<7} {fmt(r['ttft_r50']):>7}/{fmt(r['ttft_r99']):<7} "
              f"{fmt(r['ttft_add50']):>6}/{fmt(r['ttft_add99']):<7} | "
              f"{fmt(r['tok_add50']):>5}/{fmt(r['tok_add99']):<6} | "
              f"{fmt(r['gap_d50']):>6}/{fmt(r['gap_d99']):<6} {fmt(r['gap_r50']):>6}/{fmt(r['gap_r99']):<6} "
              f"{fmt(r['gap_add99']):>8} | {int(r['err_d']):>3}/{int(r['err_r']):<3} | "
              f"{fmt(r['relay_cores'], 2):>9} {fmt(r['us_tok']):>6} {fmt(r['rss'], 0):>6} | "
              f"{fmt(r['sim_d'], 2):>5}/{fmt(r['sim_r'], 2):<5} {fmt(r['lg_d'], 2):>4}/{fmt(r['lg_r'], 2):<5} "
              f"{fmt(r['db_r'], 2):>4} {fmt(r['box_d'], 2):>4}/{fmt(r['box_r'], 2):<4}")


EXPLANATION = """\
All times in ms; d = direct to the simulator, r = through /api/v1/multi-inference, + = relay minus direct.
TTFT: first token's arrival at the client minus the moment the client sent its request, per request x model.
+tok: for each token index i, the p50 (p99) over requests x models of token i's arrival time relative to its
  request's start, relay minus direct; the figure is the median of that difference over the indexes i
  (how much later a token reaches the user through the relay, the TTFT offset included).
gap: time between consecutive tokens of one model stream at the client (tokens merged into one write count as 0).
relay cpu: gunicorn workers' CPU seconds / wall seconds in the relay phase (cores); us/tok: those CPU seconds
  per relayed token; RSS: peak sum over workers. sim/lg cpu: simulator and load generator cores per phase;
  box: busy cores of the whole machine in the phase (of 2), other people's work included. pg r: the
  PostgreSQL server's cores in the relay phase (--database postgresql; the rows of every relayed request).
Each row is the median over repeats of in-run pairs; errors are summed over repeats."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="levels 1, 10 and 50 only, no slow clients")
    parser.add_argument("--levels", default=None, help="comma-separated client counts (default 1,10,50,100,200)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="WEB_WORKERS (default: gunicorn.conf, one per core)")
    parser.add_argument("--no-pin", action="store_true", help="PIN_WORKERS=0")
    parser.add_argument("--no-slow", action="store_true", help="skip the 1,000 slow clients")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the platform's database: a SQLite file (default) or a throwaway PostgreSQL server")
    parser.add_argument("--metrics", choices=("on", "off"), default="on",
                        help="on (the default, as deployed): Prometheus counters in multiprocess mode; off: "
                             "metrics.enabled false, to measure what counting costs the relay")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        return loadgen_main(args.loadgen)

    levels = [int(x) for x in args.levels.split(",")] if args.levels else (
        [1, 10, 50] if args.quick else [1, 10, 50, 100, 200])
    slow = not (args.quick or args.no_slow)
    with open("/proc/cpuinfo") as f:
        cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    postgres = ThrowawayPostgres("bench_relay_pg_") if args.database == "postgresql" else None
    servers: Platform | None = None
    env: dict[str, str] = {}
    t0 = time.monotonic()
    try:
        if args.metrics == "on":  # as scripts/start.sh runs it: every worker's counters in files of one folder
            metrics_dir = tempfile.mkdtemp(prefix="bench_relay_metrics_")
            env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        else:
            env["PEP_METRICS__ENABLED"] = "false"
        if postgres:
            postgres.start()
            env["DATABASE_URL"] = postgres.database()
        servers = Platform("bench_relay_", web_workers=args.workers, pin=not args.no_pin, models_file=MODELS_FILE,
                           env=env)
        servers.start()
        print(f"machine: {os.cpu_count()} cores ({cpu_model}); gunicorn workers: {len(servers.web_workers())} "
              f"(pinned: {not args.no_pin}, pids {servers.web_workers()}); "
              f"simulator :{servers.sim_port}, relay :{servers.web_port}; "
              f"database: {env['DATABASE_URL'] if postgres else servers.db_path}; metrics {args.metrics}; "
              f"tmp {servers.tmp}", flush=True)
        gevent_ok = True
        if postgres:
            checked = gevent_check(servers, env["DATABASE_URL"])
            gevent_ok = checked["raw_ok"] and checked["app_cold_ok"] and checked["app_ok"]
        run_phase(servers, "relay", 2, 1, postgres=postgres)  # warm-up: imports, connections, the database
        run_phase(servers, "direct", 2, 1, postgres=postgres)
        rows: dict[str, dict[str, float]] = {}
        for clients in levels:
            per_client = 3 if clients == 1 else 2
            pairs = []
            for repeat in range(args.repeats):
                order = ["direct", "relay"] if repeat % 2 == 0 else ["relay", "direct"]
                results = {mode: run_phase(servers, mode, clients, per_client, postgres=postgres)
                           for mode in order}
                pairs.append(compare(results["direct"], results["relay"]))
                for mode in order:
                    if results[mode]["errors"]:
                        print(f"  {clients} clients {mode}: {results[mode]['errors']} errors, e.g. "
                              f"{results[mode]['error_samples']}", flush=True)
            rows[str(clients)] = combine(pairs)
            print(f"  {clients:>4} clients done ({time.monotonic() - t0:.0f} s)", flush=True)
        if slow:
            results = {mode: run_phase(servers, mode, SLOW_CLIENTS, 1, slow=True, ramp_s=SLOW_RAMP_S,
                                          postgres=postgres)
                       for mode in ("direct", "relay")}
            for mode, result in results.items():
                if result["errors"]:
                    print(f"  slow {mode}: {result['errors']} errors, e.g. {result['error_samples']}")
            rows[f"{SLOW_CLIENTS} slow"] = combine([compare(results["direct"], results["relay"])])
    finally:
        if servers is not None:
            servers.stop()
        if postgres:
            postgres.stop()
        if "PROMETHEUS_MULTIPROC_DIR" in env:
            shutil.rmtree(env["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)

    print()
    print_table(rows)
    print()
    print(EXPLANATION)
    print()
    failed = 0
    for clients, (ttft_limit, gap_limit) in TARGETS.items():
        row = rows.get(str(clients))
        if row is None:
            continue
        for name, value, limit in (("added TTFT p99", row["ttft_add99"], ttft_limit),
                                   ("added inter-token gap p99", row["gap_add99"], gap_limit)):
            ok = value <= limit
            failed += not ok
            print(f"{'PASS' if ok else 'FAIL'}  {clients} clients x 3 models: {name} {fmt(value)} ms <= {limit:g} ms")
    errors = sum(int(r["err_d"] + r["err_r"]) for r in rows.values())
    failed += errors > 0
    print(f"{'PASS' if errors == 0 else 'FAIL'}  zero errors on every level (both paths): {errors} errors")
    if postgres:
        failed += not gevent_ok
        print(f"{'PASS' if gevent_ok else 'FAIL'}  psycopg waits cooperatively under gevent (check above)")
    print(f"total {time.monotonic() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
