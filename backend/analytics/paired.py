"""Paired comparison of two or more models on the same dataset content and the same samples.

The cells compared are named (``cells=<id>,<id>``) or found: for ``models=a,b&dataset=<id>`` each model's
latest completed cell on that dataset, on one version (``version=<hash prefix>``, or else the newest
content hash every model has a run on). Samples are matched by the dataset's sample id; only the samples
every model has a score for are compared (the others are counted and left out), so the n of every figure
is the same. Each pair gets the difference of its scores (B minus A), the paired test (exact McNemar for
right/wrong scores, the paired bootstrap otherwise: ``backend/analytics/stats.py``), the 95 % interval of
the difference, a plain sentence, and the samples where they disagree with a link to the side by side.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
from sqlalchemy import select

from backend.analytics import stats
from backend.analytics.leaderboard import parse_list
from backend.db import db
from backend.errors import ApiError
from backend.evaluations.models import CellStatus, EvaluationCell, EvaluationSample

MAX_MODELS = 6
DISAGREEMENTS_SHOWN = 100


def _cell_ids(raw: str | None) -> list[int]:
    ids = []
    for item in parse_list(raw, "cells"):
        if not item.isdigit():
            raise ApiError(f"cells: {item[:20]!r} is not a cell id", field="cells")
        ids.append(int(item))
    return ids


def find_cells(models: list[str], dataset: str | None, version: str | None, cells: str | None) -> list[EvaluationCell]:
    """The cells to compare, in the order asked; a 400 naming the argument when they cannot be found."""
    if cells:
        ids = _cell_ids(cells)
        if not 2 <= len(ids) <= MAX_MODELS:
            raise ApiError(f"cells: give 2 to {MAX_MODELS} cell ids", field="cells")
        found = {c.id: c for c in db.session.scalars(select(EvaluationCell).where(EvaluationCell.id.in_(ids)))}
        missing = [i for i in ids if i not in found]
        if missing:
            raise ApiError(f"cells: no cell {missing[0]}", field="cells", status=404, code="not_found")
        chosen = [found[i] for i in ids]
        hashes = {(c.dataset_id, c.dataset_hash) for c in chosen}
        if len(hashes) > 1:
            raise ApiError("cells: the cells are on different datasets or dataset versions; a paired comparison "
                           "needs the same samples", field="cells")
        return chosen
    if not 2 <= len(models) <= MAX_MODELS:
        raise ApiError(f"models: give 2 to {MAX_MODELS} model keys", field="models")
    if not dataset:
        raise ApiError("dataset: required (a dataset id)", field="dataset")
    query = (select(EvaluationCell).where(EvaluationCell.dataset_id == dataset,
                                          EvaluationCell.model_key.in_(models),
                                          EvaluationCell.status == CellStatus.COMPLETED.value)
             .order_by(EvaluationCell.finished_at.desc(), EvaluationCell.id.desc()))
    candidates = db.session.scalars(query).all()
    if version:
        candidates = [c for c in candidates if (c.dataset_hash or "").startswith(version)]
        if not candidates:
            raise ApiError(f"version: no completed run on {dataset} version {version}", field="version")
    by_model: dict[str, list[EvaluationCell]] = {m: [] for m in models}
    for cell in candidates:
        by_model[cell.model_key].append(cell)
    missing = [m for m, found in by_model.items() if not found]
    if missing:
        raise ApiError(f"models: {missing[0]} has no completed run on {dataset}", field="models")
    common = set.intersection(*({c.dataset_hash for c in found} for found in by_model.values()))
    if not common:
        versions = {m: sorted({(c.dataset_hash or "none")[:8] for c in found}) for m, found in by_model.items()}
        listed = "; ".join(m + ": " + ", ".join(v) for m, v in versions.items())
        raise ApiError(f"dataset: the models were never run on one version of {dataset} ({listed})",
                       field="dataset", details={"versions": versions})
    newest = next(c.dataset_hash for c in candidates if c.dataset_hash in common)
    return [next(c for c in by_model[m] if c.dataset_hash == newest) for m in models]


def _samples(cell_ids: list[int]) -> dict[int, dict[str, tuple[float, bool | None]]]:
    rows = db.session.connection().execute(
        select(EvaluationSample.cell_id, EvaluationSample.sample_id, EvaluationSample.score, EvaluationSample.correct)
        .where(EvaluationSample.cell_id.in_(cell_ids))).fetchall()
    out: dict[int, dict[str, tuple[float, bool | None]]] = {i: {} for i in cell_ids}
    for cell_id, sample_id, score, correct in rows:
        if score is not None:
            out[cell_id][sample_id] = (float(score), correct)
    return out


def _cell_info(cell: EvaluationCell) -> dict[str, Any]:
    return {"cell_id": cell.id, "job_id": cell.job_id, "model": cell.model_key,
            "model_name": (cell.target or {}).get("name") or cell.model_key, "dataset_id": cell.dataset_id,
            "dataset_name": cell.dataset_name, "dataset_hash": cell.dataset_hash, "metric": cell.primary_metric,
            "finished_at": cell.finished_at.isoformat() if cell.finished_at else None}


def compare(models: list[str], dataset: str | None, *, version: str | None = None,
            cells: str | None = None) -> dict[str, Any]:
    chosen = find_cells(models, dataset, version, cells)
    ids = [c.id for c in chosen]
    if len(set(ids)) != len(ids):
        raise ApiError("cells: a cell is named twice", field="cells")
    samples = _samples(ids)
    common = sorted(set.intersection(*(set(samples[i]) for i in ids)))
    binary = all(samples[i][s][1] is not None and samples[i][s][0] in (0.0, 1.0) for i in ids for s in common)
    info = [_cell_info(c) for c in chosen]
    for item, cell in zip(info, chosen, strict=True):
        item["samples"] = len(samples[cell.id])
        item["left_out"] = len(samples[cell.id]) - len(common)
    result: dict[str, Any] = {"cells": info, "dataset_id": chosen[0].dataset_id,
                              "dataset_name": chosen[0].dataset_name, "dataset_hash": chosen[0].dataset_hash,
                              "n": len(common), "binary": binary, "pairs": [],
                              "test": "exact McNemar (binomial on the discordant pairs)" if binary
                              else "paired bootstrap of the mean difference"}
    if not common:
        result["reason"] = "no sample has a score from every model"
        return result
    matrix = np.array([[samples[i][s][0] for s in common] for i in ids])
    for item, row in zip(info, matrix, strict=True):
        if binary:
            item["score"] = stats.score_interval([float(v) for v in row])
        else:
            cell = next(c for c in chosen if c.id == item["cell_id"])
            own = (cell.metrics or {}).get(cell.primary_metric or "")
            item["score"] = own if own and own.get("n") == len(common) else stats.score_interval(row.tolist())
    for a, b in combinations(range(len(ids)), 2):
        test = stats.paired_test(matrix[a], matrix[b], binary).as_dict()
        differs = np.nonzero(matrix[a] != matrix[b])[0]
        disagreements = [{"sample_id": common[k], "score_a": float(matrix[a][k]), "score_b": float(matrix[b][k])}
                         for k in differs[:DISAGREEMENTS_SHOWN]]
        result["pairs"].append({
            "a": info[a]["model"], "b": info[b]["model"], "cell_a": ids[a], "cell_b": ids[b], **test,
            "sentence": stats.sentence(info[a]["model_name"], info[b]["model_name"], test),
            "disagreements": len(differs), "disagreement_samples": disagreements,
            "side_by_side": {"a": ids[a], "b": ids[b]}})
    return result


def pair_rows(comparison: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"dataset": comparison["dataset_name"], "dataset_hash": comparison["dataset_hash"], "model_a": p["a"],
             "model_b": p["b"], "cell_a": p["cell_a"], "cell_b": p["cell_b"], "n": p["n"], "score_a": p["score_a"],
             "score_b": p["score_b"], "diff": p["diff"], "ci_low": p["ci_low"], "ci_high": p["ci_high"],
             "test": p["test"], "p": p["p"], "reason": p["reason"], "disagreements": p["disagreements"],
             "sentence": p["sentence"]} for p in comparison["pairs"]]


PAIR_COLUMNS = ("dataset", "dataset_hash", "model_a", "model_b", "cell_a", "cell_b", "n", "score_a", "score_b",
                "diff", "ci_low", "ci_high", "test", "p", "reason", "disagreements", "sentence")
