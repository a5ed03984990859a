"""How far evalscope's reported figures are from what the server really did, plain and with our fixes.

``.venv/bin/python scripts/bench_measurement.py [--quick] [--levels 1,10,50,100,200] [--tokens 50] [--repeats 1]``

Starts the simulator (``python -m backend.simulator``) with one model, ``bench-steady``: no prefill
cost, a flat 20 ms decode step for any batch size, an unbounded batch and exactly ``--tokens`` tokens
per answer. Its engine is continuous batching with one step clock, so a request's first token comes
at the second step boundary after it arrives (20-40 ms) and every later token 20 ms after the one
before. The simulator records per request when it arrived and when it wrote its first and last token
(``GET /sim/requests``): that is the truth.

For each concurrency level it runs, one after the other and alternating which goes first,

* plain: ``python -m evalscope.cli.cli perf ...`` (what the ``evalscope`` command runs), and
* ours:  ``python -m backend.stress.evalscope_entry perf ...`` (gc frozen, no per-request env lookups),

each with a prompt unique to that run, so the simulator's records of a run are those with its prompt
(the connection test's "hello" is left out). It then prints, per level and variant, evalscope's
reported TTFT (avg, p99), TPOT, ITL p99 and output throughput next to the same figures computed from
the simulator's records, and PASS/FAIL against the targets: TTFT error <= 5 ms (avg and p99), TPOT
within 0.1 ms, output throughput within 1 %. The simulator records only the first and last token of a
request, so "true ITL p99" is the p99 of each request's mean gap; the step clock makes every gap 20 ms
by construction. ``--repeats`` runs each level's pair that many times; figures are medians over repeats.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.simulator import SimulatorProcess  # noqa: E402

MODEL = "bench-steady"
STEP_MS = 20.0
LEVELS = (1, 10, 50, 100, 200)
QUICK_LEVELS = (1, 10, 50)
PLAIN = [sys.executable, "-m", "evalscope.cli.cli", "perf"]
OURS = [sys.executable, "-m", "backend.stress.evalscope_entry", "perf"]
TTFT_TARGET_MS = 5.0
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


def run_evalscope(command: list[str], sim: SimulatorProcess, level: int, tokens: int, workdir: Path) -> dict:
    run_id = uuid.uuid4().hex[:12]
    prompt = f"measurement run {run_id}: tell me something"
    outputs = workdir / run_id
    number = requests_for(level)
    args = [
        "--url", f"{sim.base_url}/chat/completions", "--api", "openai", "--model", MODEL,
        "--prompt", prompt, "--parallel", str(level), "--number", str(number),
        "--max-tokens", str(tokens), "--min-tokens", str(tokens), "--temperature", "0", "--stream",
        "--outputs-dir", str(outputs), "--no-timestamp",
    ]  # fmt: skip
    since = time.time()
    with open(workdir / f"{run_id}.log", "wb") as log:
        completed = subprocess.run(
            [*command, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S, check=False
        )
    if completed.returncode != 0:
        raise RuntimeError(f"{command[2]} exited {completed.returncode}; see {workdir / f'{run_id}.log'}")
    level_dir = outputs / MODEL / f"parallel_{level}_number_{number}"
    summary = json.loads((level_dir / "benchmark_summary.json").read_text())
    rows = json.loads((level_dir / "benchmark_percentile.json").read_text())
    p99 = next(row for row in rows if row["Percentiles"] == "99%")
    with urllib.request.urlopen(f"{sim.url}/sim/requests?since={since!r}", timeout=10) as response:
        records = [r for r in json.load(response) if r["prompt"] == prompt and r["status"] == "completed"]
    if len(records) != number or summary["Success Requests"] != number:
        raise RuntimeError(f"expected {number} completed requests, simulator has {len(records)}: {summary}")
    true_ttft = [(r["first_token_at"] - r["arrival"]) * 1000 for r in records]
    true_gap = [(r["last_token_at"] - r["first_token_at"]) * 1000 / (r["tokens_emitted"] - 1) for r in records]
    window = max(r["last_token_at"] for r in records) - min(r["arrival"] for r in records)
    return {
        "reported": {
            "ttft_avg": summary["Avg TTFT (ms)"],
            "ttft_p99": p99["TTFT (ms)"],
            "tpot": summary["Avg TPOT (ms)"],
            "itl_p99": p99["ITL (ms)"],
            "throughput": summary["Output Throughput (tok/s)"],
        },
        "true": {
            "ttft_avg": statistics.fmean(true_ttft),
            "ttft_p99": percentile(true_ttft, 99),
            "tpot": statistics.fmean(true_gap),
            "itl_p99": percentile(true_gap, 99),
            "throughput": sum(r["tokens_emitted"] for r in records) / window,
        },
        "requests": number,
    }


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


def print_table(results: dict[tuple[int, str], list[dict]], levels: list[int]) -> None:
    header = (
        "| conc | variant | TTFT avg rep/true (err) | TTFT p99 rep/true (err) | TPOT rep/true (err) "
        "| ITL p99 rep/true* | out tok/s rep/true (err) | TTFT | TPOT | thr |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for level in levels:
        for variant in ("plain", "ours"):
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"levels {QUICK_LEVELS} only")
    parser.add_argument("--levels", help="comma-separated concurrency levels")
    parser.add_argument("--tokens", type=int, default=50, help="output tokens per request (default 50)")
    parser.add_argument("--repeats", type=int, default=1)
    options = parser.parse_args()
    levels = (
        [int(x) for x in options.levels.split(",")]
        if options.levels
        else list(QUICK_LEVELS if options.quick else LEVELS)
    )
    for name in [n for n in os.environ if n.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")]:
        print(f"note: {name} is set; ours keeps aiohttp's environment lookups then", file=sys.stderr)

    results: dict[tuple[int, str], list[dict]] = {}
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-measurement-") as tmp,
        SimulatorProcess(extra_args=["--profile", profile_spec(options.tokens)]) as sim,
    ):
        workdir = Path(tmp)
        for index, level in enumerate(levels):
            for repeat in range(options.repeats):
                order = [("plain", PLAIN), ("ours", OURS)]
                if (index + repeat) % 2:
                    order.reverse()
                for variant, command in order:
                    run = run_evalscope(command, sim, level, options.tokens, workdir)
                    results.setdefault((level, variant), []).append(run)
                    r, t = run["reported"], run["true"]
                    print(
                        f"  level {level:>3} {variant:<5} n={run['requests']:<4} "
                        f"TTFT avg {r['ttft_avg']:.1f}/{t['ttft_avg']:.1f}  "
                        f"p99 {r['ttft_p99']:.1f}/{t['ttft_p99']:.1f}  "
                        f"TPOT {r['tpot']:.2f}/{t['tpot']:.2f}  thr {r['throughput']:.0f}/{t['throughput']:.0f}  "
                        f"[{time.monotonic() - started:.0f} s]",
                        flush=True,
                    )
    print()
    print(
        f"simulator {MODEL}: {STEP_MS:.0f} ms flat decode step, {options.tokens} tokens per answer; "
        f"reported / true, error = reported - true; medians over {options.repeats} repeat(s)"
    )
    print_table(results, levels)
    failed = [
        (level, variant)
        for (level, variant), runs in results.items()
        if variant == "ours" and not all(ok for _, ok in verdicts(runs).values())
    ]
    print(f"ours: {'PASS' if not failed else 'FAIL at ' + ', '.join(str(lv) for lv, _ in failed)}")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
