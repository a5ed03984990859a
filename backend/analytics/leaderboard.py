"""The leaderboard: a models x datasets matrix of scores, each with its n and 95 % interval, from the
evaluation cells in the database (``evaluation_cells``; one read of narrow columns, no sample rows).

- **Columns** are (dataset, content hash, sample count, metric): runs on another version of a dataset
  (another ``dataset_hash``), on another number of samples (a ``limit``), or scored by another metric are
  never put in one column; a dataset with more than one column has each labelled with its version
  (``v<first 8 hex of the hash>``) and its n.
- **Which run a cell shows** is explicit: ``pick=latest`` (default: the most recently finished cell) or
  ``pick=best`` (the highest score), and ``runs=<job id>,...`` puts those runs' cells first wherever they
  have one. Every cell says which run it is from, when it finished and how many runs there were.
- **Best and ties**: per column the highest score is the best; every model whose interval overlaps the
  best's (``backend/analytics/stats.py``) is tied with it. **Mean rank** is over the columns a model has.
- **Filters**: datasets (ids), a dataset group (the dataset's kind: ``mcq``, ``qa`` or ``builtin``),
  models (keys), provider (the catalogue provider of the target), and a date range on when the cell
  finished (``since`` inclusive; ``until`` exclusive, except that a day alone is included whole).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from backend.analytics import stats
from backend.db import db
from backend.errors import ApiError
from backend.evaluations.models import CellStatus, EvaluationCell

PICKS = ("latest", "best")
GROUPS = ("mcq", "qa", "builtin")
MAX_LIST = 200


@dataclass
class Filters:
    datasets: list[str] = field(default_factory=list)
    group: str | None = None
    models: list[str] = field(default_factory=list)
    provider: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    pick: str = "latest"
    runs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"datasets": self.datasets, "group": self.group, "models": self.models, "provider": self.provider,
                "since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat() if self.until else None, "pick": self.pick, "runs": self.runs}


def parse_list(raw: str | None, name: str) -> list[str]:
    if not raw:
        return []
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if len(items) > MAX_LIST:
        raise ApiError(f"{name}: at most {MAX_LIST} items", field=name)
    for item in items:
        if len(item) > 200 or not item.isprintable():
            raise ApiError(f"{name}: {item[:40]!r} is not a valid name", field=name)
    return list(dict.fromkeys(items))


def parse_date(raw: str | None, name: str) -> datetime | None:
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(f"{name}: must be a date (YYYY-MM-DD) or a date and time", field=name) from None
    return value.replace(tzinfo=None)


def filters_from(args: Any) -> Filters:
    """The leaderboard's filters from query arguments (pages and API read them the same way)."""
    pick = args.get("pick") or "latest"
    if pick not in PICKS:
        raise ApiError(f"pick: must be one of {', '.join(PICKS)}", field="pick")
    group = args.get("group") or None
    if group is not None and group not in GROUPS:
        raise ApiError(f"group: must be one of {', '.join(GROUPS)}", field="group")
    provider = args.get("provider") or None
    if provider is not None and (len(provider) > 50 or not provider.isprintable()):
        raise ApiError("provider: not a valid provider name", field="provider")
    since, until = parse_date(args.get("since"), "since"), parse_date(args.get("until"), "until")
    if until is not None and len((args.get("until") or "").strip()) == 10:
        until += timedelta(days=1)  # a day given alone is included whole
    if since and until and until < since:
        raise ApiError("until: must not be before since", field="until")
    return Filters(datasets=parse_list(args.get("datasets") or args.get("dataset"), "datasets"), group=group,
                   models=parse_list(args.get("models"), "models"), provider=provider, since=since, until=until,
                   pick=pick, runs=parse_list(args.get("runs"), "runs"))


# --- reading cells ----------------------------------------------------------------------------------

CELL_COLUMNS = (EvaluationCell.id, EvaluationCell.job_id, EvaluationCell.model_key, EvaluationCell.target,
                EvaluationCell.dataset_id, EvaluationCell.dataset_hash, EvaluationCell.dataset_name,
                EvaluationCell.dataset_kind, EvaluationCell.primary_metric, EvaluationCell.metrics,
                EvaluationCell.finished_at)


def _naive(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=None)


def scored_cells(flt: Filters | None = None) -> list[dict[str, Any]]:
    """Every completed cell that has a score of its primary metric, as plain dicts, oldest first."""
    import json

    flt = flt or Filters()
    query = select(*CELL_COLUMNS).where(EvaluationCell.status == CellStatus.COMPLETED.value)
    if flt.datasets:
        query = query.where(EvaluationCell.dataset_id.in_(flt.datasets))
    if flt.group:
        query = query.where(EvaluationCell.dataset_kind == flt.group)
    if flt.models:
        query = query.where(EvaluationCell.model_key.in_(flt.models))
    if flt.since:
        query = query.where(EvaluationCell.finished_at >= flt.since)
    if flt.until:
        query = query.where(EvaluationCell.finished_at < flt.until)
    rows = db.session.connection().execute(query.order_by(EvaluationCell.finished_at, EvaluationCell.id)).fetchall()
    cells = []
    for (cell_id, job_id, model, target, dataset_id, dataset_hash, dataset_name, kind, metric, metrics,
         finished) in rows:
        target = json.loads(target) if isinstance(target, str) else (target or {})
        metrics = json.loads(metrics) if isinstance(metrics, str) else (metrics or {})
        value = (metrics or {}).get(metric or "")
        if not value or value.get("score") is None:
            continue
        provider = target.get("catalog_provider") or target.get("provider")
        if flt.provider and provider != flt.provider:
            continue
        cells.append({"cell_id": cell_id, "job_id": job_id, "model": model,
                      "model_name": target.get("name") or model, "provider": provider,
                      "dataset_id": dataset_id, "dataset_hash": dataset_hash, "dataset_name": dataset_name,
                      "kind": kind, "metric": metric, "score": value["score"], "n": value.get("n"),
                      "ci_low": value.get("ci_low"), "ci_high": value.get("ci_high"), "method": value.get("method"),
                      "finished_at": _naive(finished)})
    return cells


def column_key(cell: dict[str, Any]) -> str:
    version = (cell["dataset_hash"] or "nohash")[:12]
    return f"{cell['dataset_id']}@{version}/n{cell['n']}/{cell['metric']}"


def _choose(candidates: list[dict[str, Any]], flt: Filters) -> dict[str, Any]:
    chosen = [c for c in candidates if c["job_id"] in flt.runs]
    pool = chosen or candidates
    if flt.pick == "best":
        return max(pool, key=lambda c: (c["score"], c["finished_at"] or datetime.min, c["cell_id"]))
    return max(pool, key=lambda c: (c["finished_at"] or datetime.min, c["cell_id"]))


# --- the matrix -------------------------------------------------------------------------------------


def leaderboard(flt: Filters | None = None, cells: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    flt = flt or Filters()
    cells = scored_cells(flt) if cells is None else cells
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        by_key[(cell["model"], column_key(cell))].append(cell)
    shown: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)  # column -> model -> cell
    for (model, key), candidates in by_key.items():
        cell = dict(_choose(candidates, flt))
        cell["runs"] = len(candidates)
        cell["finished_at"] = cell["finished_at"].isoformat() if cell["finished_at"] else None
        cell["chosen"] = "run" if cell["job_id"] in flt.runs else flt.pick
        shown[key][model] = cell

    versions: dict[str, set[str]] = defaultdict(set)
    for key in shown:
        versions[key.split("@", 1)[0]].add(key)
    columns = []
    model_ranks: dict[str, list[float]] = defaultdict(list)
    for key in sorted(shown, key=lambda k: (next(iter(shown[k].values()))["dataset_name"].lower(), k)):
        entries = shown[key]
        sample = next(iter(entries.values()))
        best, tied = stats.overlaps_best(entries)
        col_ranks = stats.ranks({m: e["score"] for m, e in entries.items()})
        for model, entry in entries.items():
            entry["best"] = model == best
            entry["tied"] = model in tied and model != best
            entry["rank"] = col_ranks[model]
            model_ranks[model].append(col_ranks[model])
        split = len(versions[sample["dataset_id"]]) > 1
        version = (sample["dataset_hash"] or "")[:8] or None
        label = sample["dataset_name"] + (f" (v{version or '?'}, n={sample['n']}, {sample['metric']})" if split else "")
        columns.append({"key": key, "dataset_id": sample["dataset_id"], "dataset_name": sample["dataset_name"],
                        "dataset_hash": sample["dataset_hash"], "version": version, "n": sample["n"],
                        "metric": sample["metric"], "kind": sample["kind"], "label": label,
                        "split_versions": split, "models": len(entries), "best": best,
                        "tied": sorted(m for m in tied if m != best)})
    rows = []
    for model in {m for entries in shown.values() for m in entries}:
        any_cell = next(entries[model] for entries in shown.values() if model in entries)
        model_cells = {key: shown[key][model] for key in shown if model in shown[key]}
        places = model_ranks[model]
        rows.append({"model": model, "model_name": any_cell["model_name"], "provider": any_cell["provider"],
                     "mean_rank": sum(places) / len(places), "ranked_in": len(places),
                     "best_in": sum(1 for c in model_cells.values() if c["best"]),
                     "tied_in": sum(1 for c in model_cells.values() if c["tied"]), "cells": model_cells})
    rows.sort(key=lambda r: (r["mean_rank"], -r["ranked_in"], r["model"]))
    notes = [f"{dataset} has {len(keys)} columns: runs on different versions, sample counts or metrics are "
             f"kept apart" for dataset, keys in sorted(versions.items()) if len(keys) > 1]
    return {"filters": flt.as_dict(), "columns": columns, "rows": rows, "notes": notes,
            "definitions": DEFINITIONS}


DEFINITIONS = {
    "score": "The cell's primary metric over its samples, with its sample count n and 95 % interval "
             "(Wilson for right/wrong scores, a seeded bootstrap of the mean otherwise).",
    "best": "The highest score of the column.",
    "tied": "A model whose 95 % interval overlaps the best's: the data do not tell them apart.",
    "mean rank": "The mean over the columns a model has of its place by score (1 is best; equal scores share "
                 "the mean of their places).",
    "column": "One dataset version (content hash), sample count and metric: runs that differ in any are never "
              "put in one column.",
    "run shown": "latest (default): the most recently finished run; best: the highest-scoring run; "
                 "runs=<id>: that run wherever it has a cell.",
}


def table_rows(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The leaderboard flattened, one row per model x column, for CSV and XLSX."""
    out = []
    for row in board["rows"]:
        for column in board["columns"]:
            cell = row["cells"].get(column["key"])
            if cell is None:
                continue
            out.append({"model": row["model"], "provider": row["provider"], "mean_rank": row["mean_rank"],
                        "ranked_in": row["ranked_in"], "column": column["key"], "dataset": column["dataset_name"],
                        "dataset_id": column["dataset_id"], "dataset_hash": column["dataset_hash"],
                        "metric": column["metric"], "score": cell["score"], "n": cell["n"],
                        "ci_low": cell["ci_low"], "ci_high": cell["ci_high"], "ci_method": cell["method"],
                        "best": cell["best"], "tied_with_best": cell["tied"], "rank": cell["rank"],
                        "job_id": cell["job_id"], "cell_id": cell["cell_id"],
                        "finished_at": cell["finished_at"],
                        "runs": cell["runs"], "shown": cell["chosen"]})
    return out


TABLE_COLUMNS = ("model", "provider", "mean_rank", "ranked_in", "column", "dataset", "dataset_id", "dataset_hash",
                 "metric", "score", "n", "ci_low", "ci_high", "ci_method", "best", "tied_with_best", "rank",
                 "job_id", "cell_id", "finished_at", "runs", "shown")
