"""Reading what ``evalscope perf`` writes, tolerant of half-written files and of evalscope's units.

Layout under ``--outputs-dir D --name N --no-timestamp`` (evalscope 1.x)::

    D/N/progress.json                     {status, total_count, processed_count, percent, updated_at}
    D/N/benchmark.log
    D/N/parallel_<P>_number_<R>/          one per level, created when the level starts
        benchmark_data.db                 SQLite, table ``result``: one row per request (commit interval 1)
        benchmark_summary.json            written when the level ends
        benchmark_percentile.json         list of {"Percentiles": "50%", "TTFT (ms)": ...}; NaN when all failed
        client_cpu.json                   ours: the load generator's CPU and wall time over the level

A sharded job has this layout once per shard, under ``D/shard_<i>/`` (``JobPaths.shard``).

Summary keys carry their unit (``Avg TTFT (ms)``, ``Avg Latency (s)``); older releases wrote seconds
(``Average time to first token (s)``), so units are read from the key, never assumed. Averages are
``-1`` (or ``-1000`` ms) when no request succeeded: those become ``None``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLIENT_CPU_FILE = "client_cpu.json"  # per level: the load generator's {"cpu_s", "wall_s"} (evalscope_entry)
_UNIT = re.compile(r"^(?P<name>.*?)\s*\((?P<unit>[^()]*)\)\s*$")


def clean(value: Any) -> Any:
    """NaN and infinities (which Python's json reads from evalscope's files) become None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: clean(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clean(item) for item in value]
    return value


def read_json(path: Path) -> Any | None:
    """A JSON file, or None while it is missing or half-written."""
    try:
        return clean(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Progress:
    status: str | None
    processed: int
    total: int
    percent: float


def read_progress(path: Path) -> Progress | None:
    data = read_json(path)
    if not isinstance(data, dict):
        return None
    try:
        total = int(data.get("total_count") or 0)
        processed = int(data.get("processed_count") or 0)
        percent = float(data.get("percent") or 0.0)
    except (TypeError, ValueError):
        return None
    return Progress(status=data.get("status"), processed=processed, total=total, percent=percent)


def _find(mapping: dict[str, Any], *names: str) -> tuple[float | None, str | None]:
    """The value of the first key whose name (without unit) matches, and its unit ("s", "ms" or None)."""
    wanted = {name.lower() for name in names}
    for key, value in mapping.items():
        match = _UNIT.match(key)
        base, unit = (match["name"], match["unit"]) if match else (key, None)
        if base.strip().lower() in wanted:
            return (float(value) if isinstance(value, int | float) else None), unit
    return None, None


def _in(value: float | None, unit: str | None, want: str) -> float | None:
    if value is None or value < 0:
        return None
    if unit == want or unit is None:
        return value
    return value * 1000.0 if (unit, want) == ("s", "ms") else value / 1000.0


_METRICS = {  # our name: (names in the summary, names in the percentile file, unit we report)
    "latency_s": (("Avg Latency", "Average latency"), ("Latency",), "s"),
    "ttft_ms": (("Avg TTFT", "Average time to first token"), ("TTFT",), "ms"),
    "tpot_ms": (("Avg TPOT", "Average time per output token"), ("TPOT",), "ms"),
    "itl_ms": (("Avg ITL", "Average inter-token latency"), ("ITL",), "ms"),
}


def level_result(summary: dict[str, Any], percentiles: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Our level shape from evalscope's summary and percentile files (either may be partial)."""
    def count(*names: str) -> int:
        value, _ = _find(summary, *names)
        return int(value) if value is not None and value >= 0 else 0

    succeeded = count("Success Requests", "Succeed requests")
    by_label = {str(row.get("Percentiles")): row for row in (percentiles or []) if isinstance(row, dict)}
    metrics: dict[str, dict[str, float | None]] = {}
    for ours, (summary_names, percentile_names, unit) in _METRICS.items():
        avg = _in(*_find(summary, *summary_names), unit) if succeeded else None
        entry: dict[str, float | None] = {"avg": avg}
        for label, key in (("50%", "p50"), ("90%", "p90"), ("95%", "p95"), ("99%", "p99")):
            row = by_label.get(label)
            entry[key] = _in(*_find(row, *percentile_names), unit) if row and succeeded else None
        metrics[ours] = entry

    def rate(*names: str) -> float | None:
        value, _ = _find(summary, *names)
        return value if value is not None and value >= 0 else None

    duration, _ = _find(summary, "Test Duration", "Time taken for tests")
    avg_in, _ = _find(summary, "Avg Input Tokens", "Average input tokens per request")
    avg_out, _ = _find(summary, "Avg Output Tokens", "Average output tokens per request")
    return {
        "requests": count("Total Requests", "Total requests"),
        "succeeded": succeeded,
        "failed": count("Failed Requests", "Failed requests"),
        "duration_s": duration,
        "req_per_s": rate("Req Throughput", "Request throughput"),
        "output_tokens_per_s": rate("Output Throughput", "Output token throughput"),
        "total_tokens_per_s": rate("Total Throughput", "Total token throughput"),
        "avg_input_tokens": avg_in if avg_in is not None and avg_in >= 0 else None,
        "avg_output_tokens": avg_out if avg_out is not None and avg_out >= 0 else None,
        "metrics": metrics,
    }


@dataclass(frozen=True)
class RequestStats:
    """What the per-request database says so far, and the mean of the rows after ``since_rowid``."""

    done: int
    ok: int
    errors: int
    last_rowid: int
    window_ttft_ms: float | None
    window_latency_s: float | None
    window_output_tokens: int
    window_ttft_n: int = 0  # how many rows the window means are over (to combine shards' windows)
    window_latency_n: int = 0


def read_requests(db_path: Path, since_rowid: int = 0) -> RequestStats | None:
    """Read evalscope's per-request SQLite file read-only; None while it is missing or locked."""
    if not db_path.exists():
        return None
    try:
        connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=0.2)
    except sqlite3.Error:
        return None
    try:
        done, ok = connection.execute("SELECT count(*), coalesce(sum(success), 0) FROM result").fetchone()
        rows = connection.execute(
            "SELECT rowid, first_chunk_latency, latency, completion_tokens FROM result "
            "WHERE rowid > ? AND success = 1", (since_rowid,)).fetchall()
        (last,) = connection.execute("SELECT coalesce(max(rowid), 0) FROM result").fetchone()
    except sqlite3.Error:  # not created yet, or locked by the writer
        return None
    finally:
        connection.close()
    ttfts = [r[1] * 1000.0 for r in rows if r[1] is not None and r[1] >= 0]
    latencies = [r[2] for r in rows if r[2] is not None and r[2] >= 0]
    tokens = sum(int(r[3] or 0) for r in rows)
    return RequestStats(done=int(done), ok=int(ok), errors=int(done) - int(ok), last_rowid=int(last),
                        window_ttft_ms=sum(ttfts) / len(ttfts) if ttfts else None,
                        window_latency_s=sum(latencies) / len(latencies) if latencies else None,
                        window_output_tokens=tokens, window_ttft_n=len(ttfts), window_latency_n=len(latencies))


def combined_requests(parts: list[RequestStats]) -> RequestStats | None:
    """Several shards' ``RequestStats`` of one level as one: counts and tokens summed, the window means
    over the union of the shards' new rows (``last_rowid`` is meaningless here: 0)."""
    if not parts:
        return None

    def union_mean(values: list[tuple[float | None, int]]) -> float | None:
        weight = sum(n for mean, n in values if mean is not None)
        return sum(mean * n for mean, n in values if mean is not None) / weight if weight else None

    ttft_n = sum(part.window_ttft_n for part in parts)
    latency_n = sum(part.window_latency_n for part in parts)
    return RequestStats(done=sum(part.done for part in parts), ok=sum(part.ok for part in parts),
                        errors=sum(part.errors for part in parts), last_rowid=0,
                        window_ttft_ms=union_mean([(part.window_ttft_ms, part.window_ttft_n) for part in parts]),
                        window_latency_s=union_mean([(part.window_latency_s, part.window_latency_n)
                                                     for part in parts]),
                        window_output_tokens=sum(part.window_output_tokens for part in parts),
                        window_ttft_n=ttft_n, window_latency_n=latency_n)


def log_errors(path: Path, limit: int = 3) -> list[str]:
    """The first error messages evalscope logged (the last line of each traceback, or the ERROR line)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 2_000_000))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    found: list[str] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if " - ERROR:" in line or ("ERROR" in line[:60] and "evalscope" in line[:60]):
            message = line.split("ERROR", 1)[1].lstrip(":\x1b[0m ").strip()
            if message.startswith("Traceback") or not message:
                message = _raised(lines, index + 1) or message
            if message and message not in found:
                found.append(message[:500])
            if len(found) >= limit:
                break
        elif line.startswith(("Traceback", "ValueError", "RuntimeError", "FileNotFoundError")) and not found:
            continue
    return found


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\w*(:|$)")  # "TimeoutError" too
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _raised(lines: list[str], start: int) -> str | None:
    """The exception a traceback starting at ``lines[start]`` ends with: its last exception line (after
    chained ones), a message continued on indented lines included; a bare name (``TimeoutError``) counts."""
    raised = None
    index = start
    while index < min(len(lines), start + 400):
        line = _ANSI.sub("", lines[index])
        if not line.strip() or line.startswith((" ", "\t", "Traceback", "The above exception", "During handling")):
            index += 1
        elif _EXCEPTION_LINE.match(line):
            continued = _continuation(lines, index + 1)
            raised = " ".join([line.strip(), *continued])
            index += 1 + len(continued)
        else:  # the traceback is over
            break
    return raised


def _continuation(lines: list[str], start: int) -> list[str]:
    """The indented lines that continue an exception's message, e.g. aiohttp's
    ``TransferEncodingError: 400, message:`` followed by ``  Not enough data to satisfy transfer length header.``"""
    found = []
    for line in lines[start:start + 10]:
        if not line.startswith((" ", "\t")) or not line.strip():
            break
        found.append(line.strip())
    return found


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log, reading at most a few MB from its end; a log that is a symlink
    is not followed (O_NOFOLLOW), so a link planted in its place cannot serve a file from elsewhere."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 4_000_000))
            data = handle.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    return [line for line in text.split("\n") if line.strip()][-lines:]
