"""How far evalscope's reported figures are from what the server really did, plain and with our fixes.

``.venv/bin/python scripts/bench_measurement.py [--quick] [--levels 1,10,50,100,200] [--tokens 50] [--repeats 1]
[--shards 2[,4]] [--no-shards]``

Starts the simulator (``python -m backend.simulator``) with one model, ``bench-steady``: no prefill
cost, a flat 20 ms decode step for any batch size, an unbounded batch and exactly ``--tokens`` tokens
per answer. Its engine is continuous batching with one step clock, so a request's first token comes
at the second step boundary after it arrives (20-40 ms) and every later token 20 ms after the one
before. The simulator records per request when it arrived and when it wrote its first and last token
(``GET /sim/requests``): that is the truth.

For each concurrency level it runs, one after the other and alternating which goes first,

* plain: ``python -m evalscope.cli.cli perf ...`` (what the ``evalscope`` command runs), and
* ours:  ``python -m backend.stress.evalscope_entry perf ...`` (gc frozen, no per-request env lookups),

* ours, N shards (``--shards``, default 2; several counts allowed): the level's parallel and number split
  over N ``backend.stress.evalscope_entry`` processes as a sharded job splits them
  (``backend.stress.command.share``, each shard's own ``--seed``, ``--no-test-connection``), run by the
  platform's runner (``python -m backend.stress.shards SPEC.json``) with its common start; the reported
  figures are those the platform stores for a sharded level: the shards' per-request rows merged
  (``backend.results.ingest.merge_shards``), TTFT/TPOT/ITL from the merged rows
  (``backend.results.metrics.level_from_requests``), throughput over the window every shard ran
  (``over_window``),

each with a prompt unique to that run, so the simulator's records of a run are those with its prompt
(the connection test's "hello" is left out). It then prints, per level and variant, evalscope's
reported TTFT (avg, p99), TPOT, ITL p99 and output throughput next to the same figures computed from
the simulator's records, and PASS/FAIL against the targets: TTFT error <= 5 ms (avg and p99), TPOT
within 0.1 ms, output throughput within 1 %. The simulator records only the first and last token of a
request, so "true ITL p99" is the p99 of each request's mean gap; the step clock makes every gap 20 ms
by construction. ``--repeats`` runs each level's variants that many times (rotating which goes first);
figures are medians over repeats. For ours and the shards it also prints each load generator's CPU over
the level (``client_cpu.json``, cpu_s / wall_s; evalscope is one event loop, so near 1.0 is a saturated
client) and the issue-14 verdict for sharding: TTFT error <= 5 ms average and <= 10 ms p99.

``--lag`` also starts the simulator with ``--lag-probe`` and prints its own loop lag over each run's
level (``GET /sim/lag``); and it runs ours and every shard through ``--lag-probe`` (this script): the
same ``evalscope_entry``, with a thread that, every ``LAG_PING_S``, schedules a callback on evalscope's event loop
(``call_soon_threadsafe``) and records how long it waited to run: how long a chunk that arrived then
would have waited for the loop. The probe costs a little CPU and takes the GIL 200 times a second, so
its runs are not the ones to quote for accuracy.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.results.ingest import merge_shards, read_level_file  # noqa: E402
from backend.results.metrics import client_load, level_from_requests, over_window  # noqa: E402
from backend.stress.command import SHARD_SEED_BASE, share  # noqa: E402
from backend.stress.outputs import CLIENT_CPU_FILE, read_json  # noqa: E402
from tests.support.simulator import SimulatorProcess  # noqa: E402

MODEL = "bench-steady"
STEP_MS = 20.0
LEVELS = (1, 10, 50, 100, 200)
QUICK_LEVELS = (1, 10, 50)
PLAIN = [sys.executable, "-m", "evalscope.cli.cli", "perf"]
OURS = [sys.executable, "-m", "backend.stress.evalscope_entry", "perf"]
LAG_PING_S = 0.005
SHARDS_RUNNER = [sys.executable, "-m", "backend.stress.shards"]
TTFT_TARGET_MS = 5.0
SHARDED_TTFT_P99_TARGET_MS = 10.0  # issue 14: with shards, TTFT within 5 ms on average and 10 ms at p99
TPOT_TARGET_MS = 0.1
THROUGHPUT_TARGET = 0.01
RUN_TIMEOUT_S = 240


def requests_for(level: int) -> int:
    """Enough requests for a stable p99 without a long run: at least 20, about 5 rounds at high levels."""
    if level == 1:
        return 20
    if level <= 10:
        return 10 * level
    return max(300, 5 * level)


def percentile(values: list[float], p: float) -> float:
    """evalscope's percentile: the value at rank ceil(n * p / 100) of the sorted values."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * p / 100) - 1)]


def profile_spec(tokens: int) -> str:
    return (
        f"{MODEL}:max_batch=100000,prefill_ms_per_token=0,decode_base_ms={STEP_MS},decode_ms_per_seq=0,"
        f"min_output_tokens={tokens},max_output_tokens={tokens}"
    )


def evalscope_args(
    sim: SimulatorProcess, prompt: str, parallel: int, number: int, tokens: int, outputs: Path
) -> list[str]:
    return [
        "--url", f"{sim.base_url}/chat/completions", "--api", "openai", "--model", MODEL,
        "--prompt", prompt, "--parallel", str(parallel), "--number", str(number),
        "--max-tokens", str(tokens), "--min-tokens", str(tokens), "--temperature", "0", "--stream",
        "--outputs-dir", str(outputs), "--no-timestamp",
    ]  # fmt: skip


def level_dir(outputs: Path, parallel: int, number: int) -> Path:
    return outputs / MODEL / f"parallel_{parallel}_number_{number}"


def run_logged(command: list[str], log_path: Path) -> None:
    with open(log_path, "wb") as log:
        completed = subprocess.run(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S, check=False
        )
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:4])} exited {completed.returncode}; see {log_path}")


def simulator_truth(sim: SimulatorProcess, since: float, prompt: str, number: int, succeeded: int) -> dict:
    """The simulator's own figures for the run's requests (those with its unique prompt)."""
    with urllib.request.urlopen(f"{sim.url}/sim/requests?since={since!r}", timeout=10) as response:
        records = [r for r in json.load(response) if r["prompt"] == prompt and r["status"] == "completed"]
    if len(records) != number or succeeded != number:
        raise RuntimeError(
            f"expected {number} completed requests: simulator has {len(records)}, "
            f"evalscope counted {succeeded} successes"
        )
    true_ttft = [(r["first_token_at"] - r["arrival"]) * 1000 for r in records]
    true_gap = [(r["last_token_at"] - r["first_token_at"]) * 1000 / (r["tokens_emitted"] - 1) for r in records]
    window = max(r["last_token_at"] for r in records) - min(r["arrival"] for r in records)
    return {
        "ttft_avg": statistics.fmean(true_ttft),
        "ttft_p99": percentile(true_ttft, 99),
        "tpot": statistics.fmean(true_gap),
        "itl_p99": percentile(true_gap, 99),
        "throughput": sum(r["tokens_emitted"] for r in records) / window,
    }


def probed(command: list[str], lag_path: Path | None) -> list[str]:
    """Ours' command, through the event-loop lag probe when ``lag_path`` is set (see ``--lag``)."""
    if lag_path is None or command != OURS:
        return command
    return [sys.executable, str(Path(__file__).resolve()), "--lag-probe", str(lag_path), "perf"]


def run_evalscope(
    command: list[str], sim: SimulatorProcess, level: int, tokens: int, workdir: Path, lag: bool = False
) -> dict:
    run_id = uuid.uuid4().hex[:12]
    prompt = f"measurement run {run_id}: tell me something"
    outputs = workdir / run_id
    number = requests_for(level)
    lag_path = workdir / f"{run_id}.lag.json" if lag and command == OURS else None
    since = time.time()
    run_logged(
        [*probed(command, lag_path), *evalscope_args(sim, prompt, level, number, tokens, outputs)],
        workdir / f"{run_id}.log",
    )
    directory = level_dir(outputs, level, number)
    summary = json.loads((directory / "benchmark_summary.json").read_text())
    rows = json.loads((directory / "benchmark_percentile.json").read_text())
    p99 = next(row for row in rows if row["Percentiles"] == "99%")
    return {
        "reported": {
            "ttft_avg": summary["Avg TTFT (ms)"],
            "ttft_p99": p99["TTFT (ms)"],
            "tpot": summary["Avg TPOT (ms)"],
            "itl_p99": p99["ITL (ms)"],
            "throughput": summary["Output Throughput (tok/s)"],
        },
        "true": simulator_truth(sim, since, prompt, number, summary["Success Requests"]),
        "requests": number,
        "client": client_load([read_json(directory / CLIENT_CPU_FILE)]),  # ours writes it; plain does not
        "lag": [read_json(lag_path)] if lag_path else [],
        "prompt": prompt,
        "since": since,
    }


def run_sharded(shards: int, sim: SimulatorProcess, level: int, tokens: int, workdir: Path, lag: bool = False) -> dict:
    """One level over ``shards`` load generators, as a sharded job runs it (see the module docstring)."""
    run_id = uuid.uuid4().hex[:12]
    prompt = f"measurement run {run_id}: tell me something"
    number = requests_for(level)
    job_dir = workdir / run_id
    job_dir.mkdir()
    commands, directories, lag_paths = [], [], []
    for index in range(shards):
        parallel, count = share(level, index, shards), share(number, index, shards)
        outputs = job_dir / f"shard_{index}"
        lag_path = job_dir / f"lag.{index}.json" if lag else None
        if lag_path:
            lag_paths.append(lag_path)
        commands.append(
            [
                *probed(OURS, lag_path),
                *evalscope_args(sim, prompt, parallel, count, tokens, outputs),
                "--no-test-connection",
                f"--seed={SHARD_SEED_BASE + index}",
            ]
        )
        directories.append(level_dir(outputs, parallel, count))
    spec_path = job_dir / "shards.json"
    spec_path.write_text(json.dumps({"commands": commands, "barrier": str(job_dir / "barrier"), "levels": 1}))
    since = time.time()
    run_logged([*SHARDS_RUNNER, str(spec_path), f"--outputs-dir={job_dir}"], workdir / f"{run_id}.log")
    parts = [read_level_file(directory / "benchmark_data.db") for directory in directories]
    if any(part is None for part in parts):
        raise RuntimeError(f"a shard's benchmark_data.db is missing or unreadable under {job_dir}")
    requests, window = merge_shards([part for part in parts if part is not None])
    result = level_from_requests(requests.rows, requests.gaps_ms)
    if window is not None:
        result = over_window(result, requests.rows, window)
    figures = result["metrics"]
    return {
        "reported": {
            "ttft_avg": figures["ttft_ms"]["avg"],
            "ttft_p99": figures["ttft_ms"]["p99"],
            "tpot": figures["tpot_ms"]["avg"],
            "itl_p99": figures["itl_ms"]["p99"],
            "throughput": result["output_tokens_per_s"],
        },
        "true": simulator_truth(sim, since, prompt, number, result["succeeded"]),
        "requests": number,
        "client": client_load([read_json(directory / CLIENT_CPU_FILE) for directory in directories]),
        "lag": [read_json(path) for path in lag_paths],
        "prompt": prompt,
        "since": since,
    }


def process_cpu_s(pid: int) -> float:
    """A process's CPU time so far (user + system, /proc/<pid>/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_text(run: dict) -> str:
    client = run["client"]
    shares = [s["utilisation"] for s in client["shards"]]
    text = f"  simulator CPU {run['sim_cpu']:.2f}" if "sim_cpu" in run else ""
    if not all(u is None for u in shares):
        text += "  client CPU " + "/".join("?" if u is None else f"{u:.2f}" for u in shares)
        text += " SATURATED" if client["saturated"] else ""
    if run.get("sim_lag"):
        lag = run["sim_lag"]
        text += (f"  simulator loop lag avg/p99/max ms {lag['avg_ms']:.1f}/{lag['p99_ms']:.1f}/{lag['max_ms']:.0f}"
                 if lag.get("samples") else "  simulator loop lag: no samples")
    if run["lag"]:
        text += "  loop lag avg/p99/max ms " + " ".join(
            "?" if not lag else f"{lag['avg_ms']:.1f}/{lag['p99_ms']:.1f}/{lag['max_ms']:.0f}" for lag in run["lag"]
        )
    return text


def simulator_lag(sim: SimulatorProcess, since: float, prompt: str) -> dict:
    """The simulator's own loop lag (``--lag-probe``) from the run's first request's arrival to its last
    token: how long a request's bytes and a due token step waited for its one event loop."""
    records = [r for r in sim.requests(since) if r["prompt"] == prompt]
    if not records:
        return {"samples": 0}
    start = min(r["arrival"] for r in records)
    end = max(r.get("last_token_at") or r["arrival"] for r in records)
    with urllib.request.urlopen(f"{sim.url}/sim/lag?since={start!r}", timeout=10) as response:
        figures = json.loads(response.read())  # samples after the level's end too (a moment: the run ends)
    figures["window_s"] = end - start
    return figures


def lag_probe(out: Path, argv: list[str]) -> int:
    """``--lag-probe OUT perf ...``: ours (``backend.stress.evalscope_entry``) with its event loop's lag sampled
    (see ``--lag``); the samples' figures go to OUT as JSON when it ends."""
    import asyncio
    import runpy
    import threading

    loops: list[asyncio.AbstractEventLoop] = []
    samples: list[float] = []
    original = asyncio.new_event_loop

    def new_event_loop() -> asyncio.AbstractEventLoop:  # evalscope's perf creates its loop by this name
        loop = original()
        loops.append(loop)
        return loop

    def ping() -> None:
        while True:
            time.sleep(LAG_PING_S)
            loop = loops[-1] if loops else None
            if loop is None or not loop.is_running():
                continue
            ran = threading.Event()
            sent = time.perf_counter()

            def arrived(sent: float = sent, ran: threading.Event = ran) -> None:
                samples.append((time.perf_counter() - sent) * 1000)
                ran.set()

            try:
                loop.call_soon_threadsafe(arrived)
            except RuntimeError:  # closed in between
                continue
            ran.wait(10)

    asyncio.new_event_loop = new_event_loop
    threading.Thread(target=ping, daemon=True).start()
    sys.argv = ["backend.stress.evalscope_entry", *argv]
    code = 0
    try:
        runpy.run_module("backend.stress.evalscope_entry", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        figures: dict[str, float] = {"samples": len(samples)}
        if samples:
            figures.update(
                avg_ms=statistics.fmean(samples), p50_ms=percentile(samples, 50),
                p99_ms=percentile(samples, 99), max_ms=max(samples),
            )  # fmt: skip
        out.write_text(json.dumps(figures))
    return code


def median_of(runs: list[dict], side: str, key: str) -> float:
    return statistics.median(run[side][key] for run in runs)


def verdicts(runs: list[dict]) -> dict[str, tuple[float, bool]]:
    def error(key: str) -> float:
        return statistics.median(run["reported"][key] - run["true"][key] for run in runs)

    throughput = statistics.median(run["reported"]["throughput"] / run["true"]["throughput"] - 1 for run in runs)
    return {
        "ttft_avg": (error("ttft_avg"), abs(error("ttft_avg")) <= TTFT_TARGET_MS),
        "ttft_p99": (error("ttft_p99"), abs(error("ttft_p99")) <= TTFT_TARGET_MS),
        "tpot": (error("tpot"), abs(error("tpot")) <= TPOT_TARGET_MS),
        "throughput": (throughput, abs(throughput) <= THROUGHPUT_TARGET),
    }


def print_table(results: dict[tuple[int, str], list[dict]], levels: list[int], variants: list[str]) -> None:
    header = (
        "| conc | variant | TTFT avg rep/true (err) | TTFT p99 rep/true (err) | TPOT rep/true (err) "
        "| ITL p99 rep/true* | out tok/s rep/true (err) | TTFT | TPOT | thr |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for level in levels:
        for variant in variants:
            runs = results[(level, variant)]
            v = verdicts(runs)

            def pair(key: str, fmt: str = ".1f", runs: list[dict] = runs) -> str:
                return f"{median_of(runs, 'reported', key):{fmt}} / {median_of(runs, 'true', key):{fmt}}"

            ttft_ok = v["ttft_avg"][1] and v["ttft_p99"][1]
            print(
                f"| {level} | {variant} "
                f"| {pair('ttft_avg')} ({v['ttft_avg'][0]:+.1f}) "
                f"| {pair('ttft_p99')} ({v['ttft_p99'][0]:+.1f}) "
                f"| {pair('tpot', '.2f')} ({v['tpot'][0]:+.2f}) "
                f"| {pair('itl_p99')} "
                f"| {pair('throughput', '.0f')} ({v['throughput'][0] * 100:+.2f} %) "
                f"| {'PASS' if ttft_ok else 'FAIL'} | {'PASS' if v['tpot'][1] else 'FAIL'} "
                f"| {'PASS' if v['throughput'][1] else 'FAIL'} |"
            )
    print("* true ITL p99: p99 of per-request mean gaps (the simulator records first and last token only)")


def print_cpu_and_issue14(results: dict[tuple[int, str], list[dict]], levels: list[int], variants: list[str]) -> None:
    """Client CPU per load generator (median over repeats) and the issue-14 verdict (5 ms avg, 10 ms p99)."""
    print()
    print(
        "| conc | variant | client CPU per shard (cpu/wall) | loop lag p99 per shard (ms) "
        "| simulator CPU* | TTFT err avg / p99 | issue 14 (5 / 10 ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for level in levels:
        for variant in variants:
            runs = results[(level, variant)]
            v = verdicts(runs)
            count = len(runs[0]["client"]["shards"])
            utilisation = [[run["client"]["shards"][i]["utilisation"] for run in runs] for i in range(count)]
            cpu = " / ".join(
                "n/a" if any(u is None for u in shard) else f"{statistics.median(shard):.2f}" for shard in utilisation
            )
            lags = [[(run["lag"][i] or {}).get("p99_ms") for run in runs] for i in range(len(runs[0]["lag"]))]
            lag = " / ".join(
                "n/a" if any(x is None for x in shard) else f"{statistics.median(shard):.1f}" for shard in lags
            )
            ok = abs(v["ttft_avg"][0]) <= TTFT_TARGET_MS and abs(v["ttft_p99"][0]) <= SHARDED_TTFT_P99_TARGET_MS
            print(
                f"| {level} | {variant} | {cpu} | {lag or '-'} | {statistics.median(r['sim_cpu'] for r in runs):.2f} "
                f"| {v['ttft_avg'][0]:+.1f} / {v['ttft_p99'][0]:+.1f} "
                f"| {'PASS' if ok else 'FAIL'} |"
            )
    print("* simulator CPU: its CPU time over the wall time of the whole run (evalscope's start-up included)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"levels {QUICK_LEVELS} only")
    parser.add_argument("--levels", help="comma-separated concurrency levels")
    parser.add_argument("--tokens", type=int, default=50, help="output tokens per request (default 50)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--shards", default="2", help="comma-separated shard counts of 'ours, N shards' (default 2)")
    parser.add_argument("--no-shards", action="store_true", help="plain and ours only")
    parser.add_argument("--lag", action="store_true", help="sample ours' and the shards' event-loop lag (probe)")
    options = parser.parse_args()
    levels = (
        [int(x) for x in options.levels.split(",")]
        if options.levels
        else list(QUICK_LEVELS if options.quick else LEVELS)
    )
    shard_counts = [] if options.no_shards else [int(x) for x in options.shards.split(",")]
    if any(count < 2 for count in shard_counts):
        parser.error("--shards: each count must be at least 2 (1 is 'ours')")
    too_small = [(level, count) for level in levels for count in shard_counts if level < count]
    if too_small:
        parser.error(f"a level below its shard count cannot be split: {too_small}")
    for name in [n for n in os.environ if n.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")]:
        print(f"note: {name} is set; ours keeps aiohttp's environment lookups then", file=sys.stderr)

    variants: list[tuple[str, Callable[[SimulatorProcess, int, int, Path], dict]]] = [
        ("plain", functools.partial(run_evalscope, PLAIN)),
        ("ours", functools.partial(run_evalscope, OURS, lag=options.lag)),
        *((f"ours, {count} shards", functools.partial(run_sharded, count, lag=options.lag)) for count in shard_counts),
    ]
    names = [name for name, _ in variants]
    results: dict[tuple[int, str], list[dict]] = {}
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-measurement-") as tmp,
        SimulatorProcess(extra_args=["--profile", profile_spec(options.tokens),
                                     *(["--lag-probe"] if options.lag else [])]) as sim,
    ):
        workdir = Path(tmp)
        for index, level in enumerate(levels):
            for repeat in range(options.repeats):
                turn = (index + repeat) % len(variants)  # which variant goes first rotates
                for variant, run_variant in variants[turn:] + variants[:turn]:
                    sim_pid = sim._process.pid  # the simulator process: its CPU over the run
                    cpu_before, wall_before = process_cpu_s(sim_pid), time.monotonic()
                    run = run_variant(sim, level, options.tokens, workdir)
                    # over the whole run, evalscope's start-up included: a lower bound of its load in the level
                    run["sim_cpu"] = (process_cpu_s(sim_pid) - cpu_before) / (time.monotonic() - wall_before)
                    if options.lag:
                        run["sim_lag"] = simulator_lag(sim, run["since"], run["prompt"])
                    results.setdefault((level, variant), []).append(run)
                    r, t = run["reported"], run["true"]
                    print(
                        f"  level {level:>4} {variant:<14} n={run['requests']:<5} "
                        f"TTFT avg {r['ttft_avg']:.1f}/{t['ttft_avg']:.1f}  "
                        f"p99 {r['ttft_p99']:.1f}/{t['ttft_p99']:.1f}  "
                        f"TPOT {r['tpot']:.2f}/{t['tpot']:.2f}  thr {r['throughput']:.0f}/{t['throughput']:.0f}"
                        f"{cpu_text(run)}  [{time.monotonic() - started:.0f} s]",
                        flush=True,
                    )
    print()
    print(
        f"simulator {MODEL}: {STEP_MS:.0f} ms flat decode step, {options.tokens} tokens per answer; "
        f"reported / true, error = reported - true; medians over {options.repeats} repeat(s)"
    )
    print_table(results, levels, names)
    print_cpu_and_issue14(results, levels, names)
    failed = [
        (level, variant)
        for (level, variant), runs in results.items()
        if variant != "plain" and not all(ok for _, ok in verdicts(runs).values())
    ]
    print(f"ours (all variants): {'PASS' if not failed else 'FAIL at ' + ', '.join(f'{lv} {v}' for lv, v in failed)}")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--lag-probe"]:
        sys.exit(lag_probe(Path(sys.argv[2]), sys.argv[3:]))
    sys.exit(main())
