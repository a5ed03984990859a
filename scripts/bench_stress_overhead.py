"""What following a stress job costs the worker, and how late its progress reaches a browser.

``.venv/bin/python scripts/bench_stress_overhead.py [--quick] [--requests 50,120] [--no-browser]
[--worker-poll S] [--sse-poll S]``

Starts the simulator, gunicorn (``config/gunicorn.conf.py``) and the stress worker
(``python -m backend.jobs.worker``) the way ``scripts/start.sh`` does, on free loopback ports with a
temporary database, log and outputs directory and the default catalogue (``config/models.yaml``: the
sim-* keys reach the simulator through ``SIMULATOR_PORT``). Then, in one run:

1. **Job phase.** ``POST /api/v1/stress-tests``: sim-steady (20 ms a token), 25 output tokens (about
   0.5 s a request), concurrency 2 then 4; about 40 s in all. While it runs the benchmark
   * reads the worker's own CPU (``/proc/<pid>/stat`` utime + stime of the worker process; evalscope is
     a child with its own pid and is *not* counted) at the start and the end of the job;
   * polls ``progress.json`` every 10 ms and stamps each change of ``processed_count`` (with the time it
     saw the change and the file's mtime, which is when evalscope wrote it);
   * polls the app database read-only every 20 ms and stamps each change of the job's progress row;
   * follows ``GET /api/v1/stress-tests/<id>/events`` with a Python SSE client, stamping each event as its
     bytes arrive;
   * and, unless ``--no-browser``, has headless Chromium (Playwright) open an ``EventSource`` on the same
     URL from an app page, stamping each ``progress`` event with ``performance.timeOrigin + now()``.
2. **Idle phase.** The worker with no job, for as long as the job phase lasted: its baseline CPU.

Every progress event whose ``processed`` rises is matched to the first moment the file held that count
(or a larger one); delays are reported per stage: request completed -> file (evalscope's throttled
write), file -> database row (the worker's poll), database -> SSE client (the events endpoint's poll),
and file -> SSE client / browser end to end. All clocks are CLOCK_MONOTONIC (``time.perf_counter``;
evalscope stamps requests with it too); the file mtime and the browser's clock are wall clocks,
aligned once at the start.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import Platform, cpu_seconds, cpu_seconds_total, machine_busy_s, pct

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]

MODEL = "sim-steady"
OUTPUT_TOKENS = 25  # sim-steady: 20 ms a token, so ~0.5 s a request
CONCURRENCY = [2, 4]
FILE_POLL_S = 0.010
DB_POLL_S = 0.020
JOB_DEADLINE_S = 120.0
IDLE_CAP_S = 60.0
CPU_TARGET = 0.05  # of one core, added by following a job
DELAY_TARGET_S = 1.5


# --- small helpers -------------------------------------------------------------------------------


def now() -> float:
    return time.perf_counter()


def ms(value: float) -> str:
    return "   n/a" if value != value else f"{value * 1000:6.0f}"


# --- watchers (threads; each loop bounded in iterations and time) --------------------------------


@dataclass
class Change:
    t: float  # when the benchmark saw it (monotonic s)
    processed: int
    written: float | None = None  # the file's mtime on the monotonic clock


@dataclass
class Watcher:
    stop: threading.Event
    deadline: float
    changes: list[Change] = field(default_factory=list)
    polls: int = 0
    errors: list[str] = field(default_factory=list)


def watch_file(path: Path, w: Watcher, wall_minus_mono: float) -> None:
    """progress.json every FILE_POLL_S: a change is a new processed_count (evalscope replaces the file)."""
    last_key: tuple[int, int] | None = None
    last_processed = -1
    for _ in range(int((w.deadline - now()) / FILE_POLL_S) + 1):
        if w.stop.is_set() or now() > w.deadline:
            return
        w.polls += 1
        try:
            st = os.stat(path)
            key = (st.st_ino, st.st_mtime_ns)
            if key != last_key:
                seen = now()
                processed = int(json.loads(path.read_bytes())["processed_count"])
                last_key = key
                if processed != last_processed:
                    w.changes.append(Change(seen, processed, st.st_mtime_ns / 1e9 - wall_minus_mono))
                    last_processed = processed
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not there yet, or caught between evalscope's write and rename
        time.sleep(FILE_POLL_S)


def watch_db(db_path: Path, job_id: str, w: Watcher, status: dict[str, Any]) -> None:
    """The job's row every DB_POLL_S, read-only: changes of progress.processed, and the job's status."""
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=0.5, check_same_thread=False)
    last_processed = -1
    try:
        for _ in range(int((w.deadline - now()) / DB_POLL_S) + 1):
            if w.stop.is_set() or now() > w.deadline:
                return
            w.polls += 1
            try:
                row = connection.execute("SELECT progress, status, pid FROM stress_jobs WHERE id = ?",
                                         (job_id,)).fetchone()
            except sqlite3.Error as exc:
                w.errors.append(str(exc))
                row = None
            if row is not None:
                seen = now()
                processed = int((json.loads(row[0] or "{}") or {}).get("processed") or 0)
                if processed != last_processed:
                    w.changes.append(Change(seen, processed))
                    last_processed = processed
                if row[1] != status.get("status"):
                    status["status"] = row[1]
                    status.setdefault("times", []).append((seen, row[1]))
                if row[2]:
                    status["pid"] = row[2]
            time.sleep(DB_POLL_S)
    finally:
        connection.close()


def follow_sse(host: str, port: int, path: str, w: Watcher, holder: dict[str, Any],
               auth: dict[str, str]) -> None:
    """A plain SSE client: each event stamped with the arrival of the bytes that completed it."""
    connection = http.client.HTTPConnection(host, port, timeout=20)
    holder["connection"] = connection
    try:
        connection.request("GET", path, headers={"Accept": "text/event-stream", **auth})
        response = connection.getresponse()
        if response.status != 200:
            w.errors.append(f"HTTP {response.status}")
            return
        pending = b""
        for _ in range(100_000):
            if w.stop.is_set() or now() > w.deadline:
                return
            data = response.read1(65536)
            arrived = now()
            if not data:
                return
            pending += data
            *blocks, pending = pending.split(b"\n\n")
            for block in blocks:
                name, payload = "message", []
                for line in block.decode().split("\n"):
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        payload.append(line[6:])
                if name == "progress":
                    w.changes.append(Change(arrived, int(json.loads("\n".join(payload)).get("processed") or 0)))
                elif name == "end":
                    holder["end"] = arrived
                    return
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if not w.stop.is_set():
            w.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()


# --- the browser ---------------------------------------------------------------------------------

OPEN_EVENTSOURCE = """(url) => {
  window.__progress = []; window.__end = null; window.__errors = 0;
  const es = new EventSource(url);
  window.__es = es;
  es.addEventListener('progress', (e) => {
    const t = performance.timeOrigin + performance.now();
    window.__progress.push([t, JSON.parse(e.data).processed || 0]);
  });
  es.addEventListener('end', () => { window.__end = performance.timeOrigin + performance.now(); es.close(); });
  es.onerror = () => { window.__errors += 1; };
  return true;
}"""


class Browser:
    """Headless Chromium with an EventSource opened from an app page; its clock aligned to ours."""

    def __init__(self, auth: dict[str, str]) -> None:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        self.page = self.browser.new_page(extra_http_headers=auth)  # every request carries the run's token
        self.offset_s = 0.0  # browser seconds minus monotonic seconds
        self.offset_err_s = float("nan")
        self.wall_skew_ms = float("nan")

    def open(self, base: str, events_path: str) -> None:
        self.page.goto(f"{base}/health", timeout=15_000)
        best: tuple[float, float, float] | None = None
        for _ in range(7):
            before, wall_before = now(), time.time()
            js_perf, js_date = self.page.evaluate("() => [performance.timeOrigin + performance.now(), Date.now()]")
            after, wall_after = now(), time.time()
            rtt = after - before
            if best is None or rtt < best[0]:
                best = (rtt, js_perf / 1000 - (before + after) / 2, js_date - (wall_before + wall_after) / 2 * 1000)
        assert best is not None
        self.offset_err_s, self.offset_s, self.wall_skew_ms = best[0] / 2, best[1], best[2]
        self.page.evaluate(OPEN_EVENTSOURCE, events_path)

    def harvest(self) -> tuple[list[Change], int, float | None]:
        data = self.page.evaluate("() => [window.__progress, window.__errors, window.__end]")
        changes = [Change(t / 1000 - self.offset_s, int(p)) for t, p in data[0]]
        end = data[2] / 1000 - self.offset_s if data[2] is not None else None
        return changes, int(data[1]), end

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.close()
        with contextlib.suppress(Exception):
            self._pw.stop()


# --- analysis ------------------------------------------------------------------------------------


def rising(changes: list[Change]) -> list[Change]:
    """Only changes that raise processed above everything before (drops repeats, level and status events)."""
    out, top = [], 0
    for change in changes:
        if change.processed > top:
            out.append(change)
            top = change.processed
    return out


def first_at_least(changes: list[Change], processed: int, written: bool = False) -> float | None:
    for change in changes:
        if change.processed >= processed:
            return change.written if written and change.written is not None else change.t
    return None


def delays(later: list[Change], earlier: list[Change], written: bool = False) -> list[float]:
    out = []
    for change in rising(later):
        reference = first_at_least(earlier, change.processed, written)
        if reference is not None:
            out.append(change.t - reference)
    return out


def completion_delays(run_dir: Path, levels: list[int], counts: list[int], file_changes: list[Change],
                      window: tuple[float, float]) -> list[float] | None:
    """Each request's completion (evalscope's perf_counter, CLOCK_MONOTONIC) -> the file showing it."""
    out: list[float] = []
    offset = 0
    for level, count in zip(levels, counts, strict=True):
        path = run_dir / f"parallel_{level}_number_{count}" / "benchmark_data.db"
        try:
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
            try:
                times = [r[0] for r in connection.execute(
                    "SELECT completed_time FROM result WHERE completed_time > 0 ORDER BY completed_time")]
            finally:
                connection.close()
        except sqlite3.Error:
            return None
        if times and not (window[0] - 5 < times[0] and times[-1] < window[1] + 5):
            return None  # not the same clock after all: do not report nonsense
        for ordinal, completed in enumerate(times, start=offset + 1):
            shown = first_at_least(file_changes, ordinal, written=True)
            if shown is not None:
                out.append(shown - completed)
        offset += count
    return out


def cpu_between(timeline: list[tuple[float, float]], start: float, end: float) -> float:
    """Worker CPU seconds between two moments, from the nearest samples (0.1 s apart) inside them."""
    inside = [cpu for t, cpu in timeline if start <= t <= end]
    return inside[-1] - inside[0] if len(inside) >= 2 else float("nan")


def phases(timeline: list[tuple[float, float]], t0: float, t1: float, file_changes: list[Change],
           status_times: list[tuple[float, str]]) -> list[tuple[str, float, float]]:
    """Where in the job the worker's CPU went: launch, steady following, the end of the job."""
    if len(file_changes) < 2:
        return []
    first, last = file_changes[0].t, file_changes[-1].t
    done = next((t for t, s in status_times if s in ("completed", "failed", "cancelled", "interrupted")), t1)
    return [("create + claim + launch + evalscope start", t0, first),
            ("following (first to last progress write)", first, last),
            ("evalscope end -> job row finished", last, done)]


def row(name: str, values: list[float]) -> str:
    return (f"  {name:<44} {len(values):>4} {ms(pct(values, 50))} {ms(pct(values, 95))} "
            f"{ms(max(values) if values else float('nan'))}")


# --- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, str] = {}
    if args.worker_poll is not None:
        overrides["PEP_STRESS__POLL_INTERVAL_S"] = str(args.worker_poll)
    if args.sse_poll is not None:
        overrides["PEP_STRESS__SSE_POLL_S"] = str(args.sse_poll)
    counts = [int(x) for x in args.requests.split(",")] if args.requests else ([20, 40] if args.quick else [50, 120])
    if len(counts) != len(CONCURRENCY):
        raise SystemExit(f"--requests: give {len(CONCURRENCY)} numbers")
    t_start = now()
    stack = Platform("bench_stress_", worker=True, env=overrides)
    browser: Browser | None = None
    stop = threading.Event()
    threads: list[threading.Thread] = []
    sse_holder: dict[str, Any] = {}
    try:
        stack.start()
        settings = {"poll_interval_s": overrides.get("PEP_STRESS__POLL_INTERVAL_S", "config"),
                    "sse_poll_s": overrides.get("PEP_STRESS__SSE_POLL_S", "config")}
        print(f"machine: {os.cpu_count()} cores; worker pid {stack.worker.pid}; gunicorn :{stack.web_port} "
              f"(workers {stack.web_workers()}); simulator :{stack.sim_port}; overrides {settings}; "
              f"tmp {stack.tmp}", flush=True)
        if not args.no_browser:
            try:
                browser = Browser(stack.auth)
            except Exception as exc:  # no Playwright or no Chromium: the SSE client still measures
                print(f"browser: not available ({type(exc).__name__}: {exc}); SSE client only", flush=True)
                browser = None
        time.sleep(1.0)  # let start-up work (imports, first heartbeats) settle

        # -- job phase --
        wall_minus_mono = time.time() - now()
        busy0, cpu0, t0 = machine_busy_s(), cpu_seconds(stack.worker.pid), now()
        web_pids = stack.web_workers()
        web0 = cpu_seconds_total(web_pids)
        body = {"model": MODEL, "concurrency": CONCURRENCY, "requests": counts, "dataset": "prompt",
                "prompt": "Benchmark the stress worker: say something steady.", "output_tokens": OUTPUT_TOKENS}
        job = stack.api("POST", "/api/v1/stress-tests", body)
        job_id = job["id"]
        events_path = f"/api/v1/stress-tests/{job_id}/events"
        deadline = now() + JOB_DEADLINE_S
        run_dir = stack.outputs / job_id / job_id
        file_w, db_w, sse_w = (Watcher(stop, deadline) for _ in range(3))
        status: dict[str, Any] = {}
        threads = [
            threading.Thread(target=watch_file, args=(run_dir / "progress.json", file_w, wall_minus_mono), daemon=True),
            threading.Thread(target=watch_db, args=(stack.db_path, job_id, db_w, status), daemon=True),
            threading.Thread(target=follow_sse, daemon=True,
                             args=("127.0.0.1", stack.web_port, events_path, sse_w, sse_holder, stack.auth)),
        ]
        for thread in threads:
            thread.start()
        if browser is not None:
            browser.open(stack.base, events_path)
        evalscope_cpu = 0.0
        timeline: list[tuple[float, float]] = [(t0, cpu0 or 0.0)]  # (monotonic s, worker CPU s)
        for _ in range(int(JOB_DEADLINE_S / 0.1) + 1):
            if status.get("status") in ("completed", "failed", "cancelled", "interrupted") or now() > deadline:
                break
            pid = status.get("pid")
            if pid:
                stack.job_pgids.add(pid)  # killed by stop() if the worker could not end it
                evalscope_cpu = max(evalscope_cpu, cpu_seconds(pid) or 0.0)
            timeline.append((now(), cpu_seconds(stack.worker.pid) or timeline[-1][1]))
            time.sleep(0.1)
        t1, cpu1, busy1 = now(), cpu_seconds(stack.worker.pid), machine_busy_s()
        timeline.append((t1, cpu1 or timeline[-1][1]))
        web1 = cpu_seconds_total(web_pids)
        job_s = t1 - t0
        final_status = status.get("status")
        if final_status != "completed":
            with contextlib.suppress(OSError):
                stack.api("POST", f"/api/v1/stress-tests/{job_id}/cancel")
            print(f"the job did not complete in time: {final_status}", flush=True)
        # Let the SSE client receive `end` (it follows the row), then stop the watchers.
        for _ in range(40):
            if "end" in sse_holder or not threads[2].is_alive():
                break
            time.sleep(0.05)
        browser_changes: list[Change] = []
        browser_errors, browser_end = 0, None
        browser_clock = (float("nan"), float("nan"))
        if browser is not None:
            browser_clock = (browser.offset_err_s, browser.wall_skew_ms)
            for _ in range(40):
                browser_changes, browser_errors, browser_end = browser.harvest()
                if browser_end is not None:
                    break
                time.sleep(0.05)
            browser.close()
            browser = None
        stop.set()
        with contextlib.suppress(Exception):
            sse_holder["connection"].sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)

        # -- idle phase: the same worker, no job, as long as the job phase lasted --
        idle_s = min(job_s, IDLE_CAP_S)
        print(f"job {job_id} {final_status} in {job_s:.1f} s; idle baseline {idle_s:.1f} s ...", flush=True)
        busy2, cpu2, t2 = machine_busy_s(), cpu_seconds(stack.worker.pid), now()
        time.sleep(idle_s)
        t3, cpu3, busy3 = now(), cpu_seconds(stack.worker.pid), machine_busy_s()
    except KeyboardInterrupt:
        print("interrupted; stopping", flush=True)
        return 130
    finally:
        stop.set()
        if browser is not None:
            browser.close()
        stack.stop()

    # -- report --
    if None in (cpu0, cpu1, cpu2, cpu3):
        print("FAIL  the worker process vanished during the run")
        return 1
    job_cores = (cpu1 - cpu0) / job_s  # type: ignore[operator]
    idle_cores = (cpu3 - cpu2) / (t3 - t2)  # type: ignore[operator]
    added = job_cores - idle_cores
    box_job, box_idle = (busy1 - busy0) / job_s, (busy3 - busy2) / (t3 - t2)

    file_changes = file_w.changes
    writes = [b.written - a.written for a, b in itertools.pairwise(file_changes)
              if a.written is not None and b.written is not None]
    seen_lag = [c.t - c.written for c in file_changes if c.written is not None]
    completion = completion_delays(run_dir, CONCURRENCY, counts, file_changes, (t0, t1))
    file_db = delays(db_w.changes, file_changes, written=True)
    db_sse = delays(sse_w.changes, db_w.changes)
    file_sse = delays(sse_w.changes, file_changes, written=True)
    file_browser = delays(browser_changes, file_changes, written=True)
    db_browser = delays(browser_changes, db_w.changes)

    print()
    print(f"Worker CPU (pid {stack.worker.pid}, /proc/<pid>/stat utime+stime; evalscope not included)")
    print(f"  following the job  {job_s:6.1f} s  {job_cores:.4f} cores  ({job_cores * 100:5.2f} % of one core)")
    print(f"  idle, no job       {t3 - t2:6.1f} s  {idle_cores:.4f} cores  ({idle_cores * 100:5.2f} % of one core)")
    print(f"  added by following {'':9} {added:+.4f} cores  ({added * 100:+5.2f} % of one core)")
    for name, start, end in phases(timeline, t0, t1, file_changes, status.get("times", [])):
        cpu = cpu_between(timeline, start, end)
        print(f"    {name:<40} {end - start:6.1f} s  {cpu:6.2f} CPU s  ({cpu / max(end - start, 1e-9) * 100:5.2f} % "
              f"of one core)")
    print(f"  context: evalscope {evalscope_cpu / job_s:.3f} cores, gunicorn workers {(web1 - web0) / job_s:.3f} cores "
          f"(SSE streams + API), whole machine busy {box_job:.2f} / {box_idle:.2f} cores (job / idle phase)")
    print()
    print(f"progress.json: {len(file_changes)} changes of processed_count, written every "
          f"{ms(pct(writes, 50)).strip()} ms (p50; evalscope throttles to 1 s), seen by the 10 ms poll "
          f"{ms(pct(seen_lag, 50)).strip()} ms (p50) / {ms(max(seen_lag) if seen_lag else float('nan')).strip()} ms "
          f"(max) after its mtime")
    if not args.no_browser:
        print(f"browser: {len(browser_changes)} progress events, {browser_errors} EventSource errors; its clock "
              f"aligned to ours within +-{browser_clock[0] * 1000:.1f} ms (Date.now() - time.time() = "
              f"{browser_clock[1]:.1f} ms)")
    print()
    print(f"  {'delay (ms)':<44} {'n':>4} {'p50':>6} {'p95':>6} {'max':>6}")
    if completion is not None:
        print(row("request completed -> in progress.json", completion))
    print(row("progress.json written -> job row (worker)", file_db))
    print(row("job row -> SSE client (events endpoint)", db_sse))
    print(row("progress.json written -> SSE client", file_sse))
    if browser_changes:
        print(row("job row -> browser (its own stream)", db_browser))
        print(row("progress.json written -> browser", file_browser))
    for name, w in (("file", file_w), ("db", db_w), ("sse", sse_w)):
        if w.errors:
            print(f"  {name} watcher errors: {w.errors[:3]}")
    print()

    failed = 0
    ok = added < CPU_TARGET
    failed += not ok
    steady = [(start, end) for name, start, end in phases(timeline, t0, t1, file_changes, status.get("times", []))
              if name.startswith("following")]
    steady_added = (cpu_between(timeline, *steady[0]) / (steady[0][1] - steady[0][0]) - idle_cores
                    if steady else float("nan"))
    print(f"{'PASS' if ok else 'FAIL'}  worker CPU added while following a job: {added * 100:.2f} % of one core "
          f"< {CPU_TARGET * 100:g} % (whole job, a {job_s:.0f} s job on a freshly started worker; "
          f"steady following alone: {steady_added * 100:+.2f} %)")
    end_to_end, who = (file_browser, "browser") if browser_changes else (file_sse, "SSE client")
    worst = max(end_to_end) if end_to_end else float("inf")
    ok = bool(end_to_end) and worst <= DELAY_TARGET_S and final_status == "completed"
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'}  progress.json -> {who}: max {ms(worst).strip()} ms "
          f"(p95 {ms(pct(end_to_end, 95)).strip()} ms, {len(end_to_end)} events) <= {DELAY_TARGET_S * 1000:g} ms")
    print(f"total {now() - t_start:.0f} s")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a shorter job (20 + 40 requests)")
    parser.add_argument("--requests", help="requests per level, e.g. 50,120 (levels: concurrency 2 and 4)")
    parser.add_argument("--no-browser", action="store_true", help="SSE client only, no Chromium")
    parser.add_argument("--worker-poll", type=float, help="stress.poll_interval_s for this run")
    parser.add_argument("--sse-poll", type=float, help="stress.sse_poll_s for this run")
    args = parser.parse_args()

    def _terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # also when started in the background, where SIGINT is ignored
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
