"""Reading an evaluation run back: its scores table, its samples (filtered, searched, paged) and two models
side by side on the same dataset. Database rows only (``evaluation_cells``, ``evaluation_samples``).

- **Samples** of a run are ordered by cell (model x dataset, in the run's order) and by the sample's index
  in its cell, and paged by a keyset cursor on that order (``after`` / ``before``: ``<cell_id>.<index>``),
  so page 200 costs what page 1 does: each page is one indexed range read of ``limit + 1`` rows, plus one
  count of the filtered rows. Filters: wrong answers only, a score range, a subset, one cell; search is a
  case-insensitive substring over the input messages, the prediction and the reference.
- **Wrong** means not fully right: ``correct`` is false, or the sample has no right/wrong verdict (a
  continuous metric such as ROUGE-L) and its score is below 1, or it has no score at all (its request
  failed).
- **Side by side** takes two cells (``a`` and ``b``, cell ids; from one run or two) evaluated on the same
  dataset content (the same content hash, or the same built-in benchmark when neither has a hash), matches
  their samples by the dataset's sample id and sorts the pairs where the models disagree first (only A
  right, only B right), then both wrong, then both right, with the four counts. A sample counts as right
  when ``correct`` is true, or, for a continuous metric, when its score is at least ``CONTINUOUS_RIGHT``.
  The pairs are classified and counted in the database (a join on the (cell, sample id) index); full rows
  are read only for the page shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, case, func, or_, select, tuple_
from sqlalchemy.orm import aliased

from backend.db import db
from backend.errors import ApiError, NotFound
from backend.evaluations.models import EvaluationCell, EvaluationJob, EvaluationSample

PAGE_SIZE = 25
MAX_PAGE_SIZE = 500
MAX_QUERY = 200
CONTINUOUS_RIGHT = 0.5
PREVIEW_CHARS = 2000


# --- the run and its scores ----------------------------------------------------------------------


def evaluation_job(job_id: str) -> EvaluationJob:
    job = db.session.get(EvaluationJob, job_id)
    if job is None:
        raise NotFound(f"no evaluation {job_id!r}")
    return job


def cell_label(cell: EvaluationCell) -> str:
    name = (cell.target or {}).get("name") or cell.model_key
    return f"{name} on {cell.dataset_name}"


def cell_dict(cell: EvaluationCell) -> dict[str, Any]:
    return {"id": cell.id, "job_id": cell.job_id, "position": cell.position, "model": cell.model_key,
            "model_name": (cell.target or {}).get("name") or cell.model_key, "dataset": cell.dataset_name,
            "dataset_id": cell.dataset_id, "dataset_hash": cell.dataset_hash, "dataset_kind": cell.dataset_kind,
            "benchmark": cell.benchmark, "status": cell.status, "done": cell.done, "total": cell.total,
            "primary_metric": cell.primary_metric, "metrics": cell.metrics or {}, "live": cell.live or {},
            "error": cell.error, "judge_input_tokens": cell.judge_input_tokens,
            "judge_output_tokens": cell.judge_output_tokens, "judge_cost": cell.judge_cost,
            "label": cell_label(cell)}


def score_rows(job: EvaluationJob) -> list[dict[str, Any]]:
    """One row per cell and metric (the cell's primary metric first): value, n and its 95 % interval. A cell
    without metrics (failed, or not finished) is one row whose value is unknown, with the cell's error."""
    rows = []
    for cell in job.cells:
        metrics = cell.metrics or {}
        names = sorted(metrics, key=lambda name: (name != cell.primary_metric, name))
        base = {"job_id": job.id, "cell_id": cell.id, "model": cell.model_key, "dataset": cell.dataset_name,
                "dataset_hash": cell.dataset_hash, "status": cell.status, "error": cell.error}
        if not names:
            rows.append({**base, "subset": None, "metric": cell.primary_metric, "value": None, "n": None,
                         "ci_low": None, "ci_high": None, "ci_method": None, "primary": True})
        for name in names:
            metric = metrics[name] or {}
            rows.append({**base, "subset": metric.get("subset"), "metric": name, "value": metric.get("score"),
                         "n": metric.get("n"), "ci_low": metric.get("ci_low"), "ci_high": metric.get("ci_high"),
                         "ci_method": metric.get("method"), "primary": name == cell.primary_metric})
    return rows


def headline_scores(job: EvaluationJob) -> list[dict[str, Any]]:
    """Each cell's primary metric, for the chart."""
    return [row for row in score_rows(job) if row["primary"]]


def judge_cost(job: EvaluationJob) -> dict[str, Any]:
    """The judge's tokens and cost over the run's cells; the cost is unknown (None) when any judged cell's
    cost is, never a partial sum shown as the total."""
    judged = [c for c in job.cells if c.judge_input_tokens is not None or c.judge_output_tokens is not None]
    if not judged:
        return {"judged": False}
    costs = [c.judge_cost for c in judged]
    return {"judged": True, "cells": len(judged),
            "input_tokens": sum(c.judge_input_tokens or 0 for c in judged),
            "output_tokens": sum(c.judge_output_tokens or 0 for c in judged),
            "cost_usd": None if any(cost is None for cost in costs) else sum(costs)}


# --- samples -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleFilter:
    cell_id: int | None = None
    wrong: bool = False
    min_score: float | None = None
    max_score: float | None = None
    subset: str | None = None
    text: str | None = None

    def query_args(self) -> dict[str, str]:
        """The filter as the query arguments that give it back (for links)."""
        args = {"cell": self.cell_id, "wrong": 1 if self.wrong else None, "min_score": self.min_score,
                "max_score": self.max_score, "subset": self.subset, "q": self.text}
        return {name: str(value) for name, value in args.items() if value is not None}


def _wrong() -> Any:
    s = EvaluationSample
    return or_(s.correct.is_(False), and_(s.correct.is_(None), or_(s.score.is_(None), s.score < 1.0)))


def _contains(column: Any, text: str) -> Any:
    return func.lower(column).contains(text.lower(), autoescape=True)


def _filtered(job: EvaluationJob, flt: SampleFilter) -> Select[Any]:
    s = EvaluationSample
    cell_ids = [cell.id for cell in job.cells]
    if flt.cell_id is not None:
        if flt.cell_id not in cell_ids:
            raise ApiError(f"cell: run {job.id} has no cell {flt.cell_id}", field="cell")
        cell_ids = [flt.cell_id]
    query = select(s).where(s.cell_id.in_(cell_ids))
    if flt.wrong:
        query = query.where(_wrong())
    if flt.min_score is not None:
        query = query.where(s.score >= flt.min_score)
    if flt.max_score is not None:
        query = query.where(s.score <= flt.max_score)
    if flt.subset:
        query = query.where(s.subset == flt.subset)
    if flt.text:
        # The input is stored as JSON text, where non-ASCII letters are \\u escapes: look for both spellings.
        escaped = json.dumps(flt.text)[1:-1]
        terms = [_contains(func.coalesce(s.prediction, ""), flt.text),
                 _contains(func.coalesce(s.reference, ""), flt.text),
                 _contains(func.cast(s.input_messages, db.Text), flt.text)]
        if escaped != flt.text:
            terms.append(_contains(func.cast(s.input_messages, db.Text), escaped))
        query = query.where(or_(*terms))
    return query


def parse_cursor(raw: str | None, name: str) -> tuple[int, int] | None:
    if raw is None or raw == "":
        return None
    cell, dot, index = raw.partition(".")
    if not dot or not cell.isdigit() or not index.isdigit() or len(raw) > 40:
        raise ApiError(f"{name}: must be a cursor from a previous page (<cell>.<index>)", field=name)
    return int(cell), int(index)


def cursor_of(sample: EvaluationSample) -> str:
    return f"{sample.cell_id}.{sample.sample_index}"


def samples_page(job: EvaluationJob, flt: SampleFilter, *, limit: int = PAGE_SIZE, after: str | None = None,
                 before: str | None = None) -> dict[str, Any]:
    """One page of the run's samples under ``flt``: ``after`` (the next page) or ``before`` (the previous)
    a cursor, the first page with neither. ``next`` and ``previous`` are the cursors to ask with, or None."""
    s = EvaluationSample
    if after and before:
        raise ApiError("before: give after or before, not both", field="before")
    base = _filtered(job, flt)
    total = db.session.scalar(select(func.count()).select_from(base.order_by(None).subquery()))
    key = tuple_(s.cell_id, s.sample_index)
    start_after, end_before = parse_cursor(after, "after"), parse_cursor(before, "before")
    query = base
    if start_after is not None:
        query = query.where(key > tuple_(*start_after)).order_by(s.cell_id, s.sample_index)
    elif end_before is not None:
        query = query.where(key < tuple_(*end_before)).order_by(s.cell_id.desc(), s.sample_index.desc())
    else:
        query = query.order_by(s.cell_id, s.sample_index)
    rows = list(db.session.scalars(query.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    if end_before is not None:
        rows.reverse()
    # Whether there is a page on the other side of this one: after a cursor there is one before it, and so on.
    has_next = more if end_before is None else True
    has_previous = (start_after is not None) or (end_before is not None and more)
    cells = {cell.id: cell for cell in job.cells}
    return {"job_id": job.id, "total": total, "limit": limit, "filter": flt.query_args(),
            "samples": [sample_dict(row, cells[row.cell_id]) for row in rows],
            "next": cursor_of(rows[-1]) if rows and has_next else None,
            "previous": cursor_of(rows[0]) if rows and has_previous else None}


def sample_dict(sample: EvaluationSample, cell: EvaluationCell) -> dict[str, Any]:
    return {"cell_id": cell.id, "model": cell.model_key, "dataset": cell.dataset_name, "index": sample.sample_index,
            "sample_id": sample.sample_id, "subset": sample.subset, "input_messages": sample.input_messages,
            "prediction": sample.prediction, "extracted": sample.extracted, "reference": sample.reference,
            "score": sample.score, "correct": sample.correct, "scores": sample.scores,
            "repeat_scores": sample.repeat_scores, "judge_verdict": sample.judge_verdict,
            "judge_explanation": sample.judge_explanation, "error": sample.error, "right": is_right(sample)}


def subsets(job: EvaluationJob) -> list[str]:
    s = EvaluationSample
    return list(db.session.scalars(select(s.subset).where(s.cell_id.in_([c.id for c in job.cells]))
                                   .distinct().order_by(s.subset)))


def is_right(sample: Any) -> bool:
    if sample.correct is not None:
        return bool(sample.correct)
    return sample.score is not None and sample.score >= CONTINUOUS_RIGHT


def input_text(messages: Any) -> str:
    """The input messages as plain text (for the samples export): ``role: content`` per message."""
    if not isinstance(messages, list):
        return "" if messages is None else str(messages)
    parts = []
    for message in messages:
        if isinstance(message, dict):
            content = message.get("content")
            if not isinstance(content, str):
                content = json.dumps(content, ensure_ascii=False)
            parts.append(f"{message.get('role', '?')}: {content}")
        else:
            parts.append(str(message))
    return "\n\n".join(parts)


def export_sample_rows(job: EvaluationJob) -> list[dict[str, Any]]:
    """Every sample of the run, flat, in the review's order (the exports' rows). Read as plain columns, not
    ORM objects: a third of the time at 10,000 samples."""
    s = EvaluationSample
    cells = {cell.id: cell for cell in job.cells}
    rows = db.session.execute(select(s.cell_id, s.subset, s.sample_id, s.repeat_scores, s.input_messages,
                                     s.prediction, s.extracted, s.reference, s.score, s.correct, s.judge_verdict,
                                     s.judge_explanation, s.error)
                              .where(s.cell_id.in_(list(cells))).order_by(s.cell_id, s.sample_index))
    out = []
    for row in rows:
        cell = cells[row.cell_id]
        out.append({"job_id": job.id, "cell_id": cell.id, "model": cell.model_key, "dataset": cell.dataset_name,
                    "subset": row.subset, "sample_id": row.sample_id, "repeats": len(row.repeat_scores or []),
                    "input": input_text(row.input_messages), "prediction": row.prediction,
                    "extracted": row.extracted, "reference": row.reference, "score": row.score,
                    "correct": row.correct, "judge_verdict": row.judge_verdict,
                    "judge_explanation": row.judge_explanation, "error": row.error})
    return out


# --- side by side --------------------------------------------------------------------------------

OUTCOMES = ("only_a", "only_b", "both_wrong", "both_right")


def parse_cell_id(raw: str | None, name: str) -> int:
    if raw is None or raw.strip() == "":
        raise ApiError(f"{name}: is required (a cell id from the run's scores table)", field=name)
    if not raw.strip().isdigit() or len(raw) > 18:
        raise ApiError(f"{name}: must be a cell id (a whole number)", field=name)
    return int(raw)


def _cell(cell_id: int, name: str) -> EvaluationCell:
    cell = db.session.get(EvaluationCell, cell_id)
    if cell is None:
        raise NotFound(f"{name}: there is no cell {cell_id}", field=name)
    return cell


def same_dataset(a: EvaluationCell, b: EvaluationCell) -> bool:
    if a.dataset_hash or b.dataset_hash:
        return a.dataset_hash == b.dataset_hash
    return a.dataset_id == b.dataset_id and a.benchmark == b.benchmark


def side_by_side(a_id: int, b_id: int, *, outcome: str | None = None, offset: int = 0,
                 limit: int = PAGE_SIZE) -> dict[str, Any]:
    """Two cells on the same dataset, sample by sample: the counts of the four outcomes, the samples only in
    one of them, and one page of pairs (disagreements first, or only ``outcome``)."""
    if a_id == b_id:
        raise ApiError("b: choose a different cell from a", field="b")
    if outcome is not None and outcome not in OUTCOMES:
        raise ApiError(f"outcome: must be one of {', '.join(OUTCOMES)}", field="outcome")
    a, b = _cell(a_id, "a"), _cell(b_id, "b")
    if not same_dataset(a, b):
        raise ApiError(f"b: cell {b.id} was evaluated on {b.dataset_name} ({(b.dataset_hash or b.dataset_id)[:12]}), "
                       f"cell {a.id} on {a.dataset_name} ({(a.dataset_hash or a.dataset_id)[:12]}): "
                       "not the same dataset", field="b")
    counts, pages = _classified(a.id, b.id, outcome, offset, limit)
    matched = sum(counts.values())
    sizes = dict(db.session.execute(select(EvaluationSample.cell_id, func.count()).where(
        EvaluationSample.cell_id.in_([a.id, b.id])).group_by(EvaluationSample.cell_id)).all())
    page_keys = [key for key, _ in pages]
    full_a = _samples_by_id(a.id, page_keys)
    full_b = _samples_by_id(b.id, page_keys)
    pairs = [{"sample_id": key, "outcome": name, "a": sample_dict(full_a[key], a), "b": sample_dict(full_b[key], b)}
             for key, name in pages]
    return {"a": cell_dict(a), "b": cell_dict(b), "matched": matched, "counts": counts,
            "only_in_a": sizes.get(a.id, 0) - matched, "only_in_b": sizes.get(b.id, 0) - matched,
            "outcome": outcome, "offset": offset, "limit": limit,
            "total": counts[outcome] if outcome else matched, "pairs": pairs}


def _right_sql(sample: Any) -> Any:
    """``is_right`` in SQL: the verdict when there is one, else a score of at least ``CONTINUOUS_RIGHT``."""
    return case((sample.correct.is_not(None), sample.correct),
                else_=and_(sample.score.is_not(None), sample.score >= CONTINUOUS_RIGHT))


def _classified(a_id: int, b_id: int, outcome: str | None, offset: int,
                limit: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The four counts over the samples both cells have (matched by sample id), and one page of
    ``(sample_id, outcome)`` in the side by side's order: the outcomes in ``OUTCOMES`` order, then A's index.
    Two queries in the database over the (cell, sample id) index; no row of 10,000 reaches Python."""
    left, right = aliased(EvaluationSample), aliased(EvaluationSample)
    ra, rb = _right_sql(left), _right_sql(right)
    rank = case((and_(ra, ~rb), 0), (and_(~ra, rb), 1), (and_(~ra, ~rb), 2), else_=3).label("rank")
    joined = select(left.sample_id, left.sample_index, rank).join(
        right, and_(right.cell_id == b_id, right.sample_id == left.sample_id)).where(left.cell_id == a_id)
    pairs = joined.subquery()
    counts = {name: 0 for name in OUTCOMES}
    for position, count in db.session.execute(select(pairs.c.rank, func.count()).group_by(pairs.c.rank)).all():
        counts[OUTCOMES[int(position)]] = int(count)
    page = select(pairs.c.sample_id, pairs.c.rank)
    if outcome is not None:
        page = page.where(pairs.c.rank == OUTCOMES.index(outcome))
    rows = db.session.execute(page.order_by(pairs.c.rank, pairs.c.sample_index).offset(offset).limit(limit)).all()
    return counts, [(row.sample_id, OUTCOMES[int(row.rank)]) for row in rows]


def _samples_by_id(cell_id: int, sample_ids: list[str]) -> dict[str, EvaluationSample]:
    if not sample_ids:
        return {}
    s = EvaluationSample
    rows = db.session.scalars(select(s).where(s.cell_id == cell_id, s.sample_id.in_(sample_ids)))
    return {row.sample_id: row for row in rows}


def comparable_cells(cell: EvaluationCell, limit: int = 50) -> list[EvaluationCell]:
    """Other cells (of any run, newest first) on the same dataset content: the side by side's choices."""
    c = EvaluationCell
    query = select(c).where(c.id != cell.id)
    if cell.dataset_hash:
        query = query.where(c.dataset_hash == cell.dataset_hash)
    else:
        query = query.where(c.dataset_hash.is_(None), c.dataset_id == cell.dataset_id, c.benchmark == cell.benchmark)
    return list(db.session.scalars(query.order_by(c.id.desc()).limit(limit)))
