"""Comparing 2 to 10 finished jobs: a side-by-side table against a baseline, what differs in their
workloads (said out loud, never compared silently), and repeats of one workload summarised as a mean
with a t-based 95 % confidence interval.

Two jobs are *repeats* when they have the same target and the same workload (``WORKLOAD_KEYS``, the same
prompt or dataset file, the same concurrency levels); each group of repeats gets, per concurrency level,
the mean of each headline figure over its jobs and its 95 % interval ``mean ± t(0.975, n-1) · s / √n``.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from scipy import stats

from backend.errors import ApiError
from backend.results.metrics import Slo
from backend.results.service import job_results, load_requests, stress_job

MIN_JOBS, MAX_JOBS = 2, 10
WORKLOAD_KEYS = ("dataset", "input_tokens", "output_tokens", "exact_output_tokens", "stream", "temperature",
                 "tokenizer", "dataset_file", "system", "warmup")
# Figures compared per level: (key in the table, label, how to read it from a level, higher is better)
FIGURES: list[tuple[str, str, Any, bool]] = [
    ("req_per_s", "requests/s", lambda lv: lv["req_per_s"], True),
    ("output_tokens_per_s", "output tokens/s", lambda lv: lv["output_tokens_per_s"], True),
    ("goodput_per_s", "goodput requests/s", lambda lv: lv["goodput"]["per_s"], True),
    ("ttft_ms_p95", "p95 TTFT (ms)", lambda lv: lv["metrics"]["ttft_ms"]["p95"], False),
    ("tpot_ms_p95", "p95 TPOT (ms)", lambda lv: lv["metrics"]["tpot_ms"]["p95"], False),
    ("latency_s_p95", "p95 latency (s)", lambda lv: lv["metrics"]["latency_s"]["p95"], False),
    ("error_rate", "error rate", lambda lv: lv["error_rate"], False),
]
TOKEN_TOLERANCE = 0.10  # measured average input/output tokens further apart than this are a different workload


def parse_ids(raw: str | None) -> list[str]:
    ids = [part.strip() for part in (raw or "").split(",") if part.strip()]
    if len(set(ids)) != len(ids):
        raise ApiError("ids: a job is named twice", field="ids")
    if not MIN_JOBS <= len(ids) <= MAX_JOBS:
        raise ApiError(f"ids: name {MIN_JOBS} to {MAX_JOBS} finished jobs, separated by commas", field="ids")
    return ids


def _prompt_fingerprint(params: dict[str, Any]) -> str | None:
    prompt = params.get("prompt")
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:12] if isinstance(prompt, str) else None


def workload(job: Any) -> dict[str, Any]:
    params = dict(job.params or {})
    found = {key: params.get(key) for key in WORKLOAD_KEYS}
    found["prompt"] = _prompt_fingerprint(params)
    found["token_source"] = job.token_source
    found["evalscope"] = (job.progress or {}).get("evalscope_version")
    return found


def _measured_tokens(results: dict[str, Any], key: str) -> float | None:
    values = [lv[key] for lv in results["levels"] if lv.get(key) is not None]
    return sum(values) / len(values) if values else None


def differences(jobs: list[Any], results: list[dict[str, Any]]) -> list[str]:
    """Plain sentences naming each way the workloads differ (empty when they are the same)."""
    found = []
    loads = [workload(job) for job in jobs]
    names = {"dataset": "dataset", "input_tokens": "input tokens asked for", "output_tokens": "output tokens asked for",
             "exact_output_tokens": "exact output length", "stream": "streaming", "temperature": "temperature",
             "tokenizer": "tokenizer", "dataset_file": "dataset file", "system": "system prompt",
             "warmup": "warm-up", "prompt": "prompt", "token_source": "token counts' source",
             "evalscope": "evalscope version"}
    for key, label in names.items():
        values = [load.get(key) for load in loads]
        if key == "input_tokens" and all(load.get("dataset") == "prompt" for load in loads):
            continue  # a fixed prompt has no input length setting
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            shown = ", ".join(f"{job.id}: {'—' if v is None else v}" for job, v in zip(jobs, values, strict=True))
            found.append(f"{label} differs ({shown})")
    for key, label in (("avg_input_tokens", "measured input tokens"), ("avg_output_tokens", "measured output tokens")):
        measured = [_measured_tokens(r, key) for r in results]
        known = [m for m in measured if m is not None]
        if len(known) >= 2 and max(known) > 0 and (max(known) - min(known)) / max(known) > TOKEN_TOLERANCE:
            shown = ", ".join(f"{job.id}: {'—' if m is None else f'{m:.0f}'}"
                              for job, m in zip(jobs, measured, strict=True))
            found.append(f"{label} differ by more than {TOKEN_TOLERANCE:.0%} ({shown})")
    return found


def _delta(value: float | None, base: float | None) -> dict[str, float | None]:
    if value is None or base is None:
        return {"abs": None, "pct": None}
    return {"abs": value - base, "pct": (value - base) / base * 100 if base else None}


def interval(values: list[float]) -> dict[str, Any]:
    """Mean and t-based 95 % interval of a small sample (no interval from one value)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "low": None, "high": None}
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "low": None, "high": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half}


def _repeat_key(job: Any) -> str:
    params = dict(job.params or {})
    return json.dumps([job.model_key, (job.target or {}).get("chat_url"), workload(job),
                       params.get("concurrency"), params.get("requests")], sort_keys=True, default=str)


def compare(ids: list[str], slo: Slo, baseline: str | None = None) -> dict[str, Any]:
    jobs = [stress_job(job_id) for job_id in ids]
    baseline = baseline or ids[0]
    if baseline not in ids:
        raise ApiError("baseline: must be one of the compared jobs", field="baseline")
    results = [job_results(job, slo, load_requests(job.id)) for job in jobs]
    by_id = dict(zip(ids, results, strict=True))
    base_levels = {lv["concurrency"]: lv for lv in by_id[baseline]["levels"]}
    concurrencies = sorted({lv["concurrency"] for r in results for lv in r["levels"]})
    table = []
    for concurrency in concurrencies:
        for key, label, read, higher in FIGURES:
            base = base_levels.get(concurrency)
            base_value = read(base) if base else None
            cells = {}
            for job_id, result in by_id.items():
                level = next((lv for lv in result["levels"] if lv["concurrency"] == concurrency), None)
                value = read(level) if level else None
                cells[job_id] = {"value": value, "partial": bool(level and not level["complete"]),
                                 "delta": _delta(value, base_value) if job_id != baseline else None}
            table.append({"concurrency": concurrency, "figure": key, "label": label, "higher_is_better": higher,
                          "cells": cells})
    groups: dict[str, list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault(_repeat_key(job), []).append(index)
    repeats = []
    for members in groups.values():
        if len(members) < 2:
            continue
        member_ids = [ids[i] for i in members]
        per_level = []
        for concurrency in concurrencies:
            levels = [next((lv for lv in results[i]["levels"] if lv["concurrency"] == concurrency and lv["complete"]),
                           None) for i in members]
            if any(level is None for level in levels):
                continue
            per_level.append({"concurrency": concurrency,
                              **{key: interval([v for lv in levels if (v := read(lv)) is not None])
                                 for key, _label, read, _higher in FIGURES}})
        repeats.append({"jobs": member_ids, "levels": per_level})
    return {"ids": ids, "baseline": baseline, "slo": {**slo.as_dict(), "description": slo.describe()},
            "jobs": [r["job"] | {"summary": r["summary"], "partial": r["partial"]} for r in results],
            "results": results, "differences": differences(jobs, results), "table": table, "repeats": repeats}
