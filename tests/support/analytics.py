"""Scored evaluation rows for the analytics tests: a run with one cell per (model, dataset), each with its
samples' right/wrong pattern (or continuous scores) and the cell's metric computed here from that pattern
by the closed-form Wilson interval (tests/support/evaluations.py), never by the code under test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import insert

from backend.db import db
from backend.evaluations.models import EvaluationCell, EvaluationJob, EvaluationSample
from tests.support.evaluations import wilson

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def pattern(n: int, right: int, offset: int = 0) -> list[bool]:
    """``n`` samples of which exactly ``right`` are right, spread by a fixed stride (offset shifts them)."""
    return [((i + offset) * 7919) % n < right for i in range(n)]


def metric_of(scores: list[float], binary: bool = True) -> dict[str, Any]:
    n = len(scores)
    if binary:
        k = int(sum(scores))
        low, high = wilson(k, n)
        return {"score": k / n, "n": n, "ci_low": max(0.0, low), "ci_high": min(1.0, high), "method": "wilson"}
    mean = sum(scores) / n
    sd = (sum((s - mean) ** 2 for s in scores) / max(1, n - 1)) ** 0.5
    half = 1.96 * sd / n ** 0.5
    return {"score": mean, "n": n, "ci_low": mean - half, "ci_high": mean + half, "method": "bootstrap"}


def add_run(app: Flask, job_id: str, cells: list[dict[str, Any]], *, finished: datetime | None = None,
            status: str = "completed") -> list[int]:
    """A finished evaluation run. Each cell: ``model``, ``dataset`` (id), ``right`` (list of bools) or
    ``scores`` (continuous), optional ``hash``, ``name``, ``provider``, ``kind``, ``sample_ids``, ``metric``
    (a dict to store instead of the computed one), ``finished`` (datetime), ``status``."""
    finished = finished or T0
    ids = []
    with app.app_context():
        models = ",".join(dict.fromkeys(c["model"] for c in cells))
        db.session.add(EvaluationJob(id=job_id, status=status, model_key=models, target={}, params={}, progress={},
                                     created_at=finished - timedelta(minutes=10), finished_at=finished))
        db.session.flush()
        for position, spec in enumerate(cells):
            binary = "right" in spec
            scores = [1.0 if ok else 0.0 for ok in spec["right"]] if binary else list(spec["scores"])
            sample_ids = spec.get("sample_ids") or [f"s{i}" for i in range(len(scores))]
            kind = spec.get("kind", "mcq")
            metric_name = "acc" if binary else "rouge_l"
            cell = EvaluationCell(
                job_id=job_id, position=position, model_key=spec["model"],
                target={"name": spec.get("name", spec["model"]), "provider": spec.get("provider", "simulator")},
                dataset_id=spec["dataset"], dataset_hash=spec.get("hash", f"{spec['dataset']:0<8}".encode().hex()[:64]),
                dataset_name=spec.get("dataset_name", spec["dataset"].title()), dataset_kind=kind,
                benchmark="general_mcq" if kind == "mcq" else "general_qa", status=spec.get("status", "completed"),
                done=len(scores), total=len(scores), primary_metric=metric_name,
                metrics={metric_name: spec.get("metric") or metric_of(scores, binary)},
                started_at=spec.get("finished", finished) - timedelta(minutes=5),
                finished_at=spec.get("finished", finished))
            db.session.add(cell)
            db.session.flush()
            db.session.execute(insert(EvaluationSample), [
                {"cell_id": cell.id, "sample_index": i, "sample_id": sid, "subset": "default",
                 "input_messages": [{"role": "user", "content": f"question {sid}"}], "prediction": f"answer {i}",
                 "reference": "A", "score": score, "correct": (score == 1.0) if binary else None,
                 "scores": {metric_name: score}, "repeat_scores": [score], "meta": {}}
                for i, (sid, score) in enumerate(zip(sample_ids, scores, strict=True))])
            ids.append(cell.id)
        db.session.commit()
    return ids
