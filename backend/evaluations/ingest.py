"""A finished cell's reviews -> per-sample rows and metrics with their sample count and 95 % interval.

Per sample (evalscope's ``group_id``; each repeat is one review line with its ``generation_index``):

- ``acc`` (multiple choice): evalscope's ``accuracy`` (its extraction of the answer letter);
- ``exact_match`` (QA): the prediction, normalised (case, surrounding space and punctuation, inner runs of
  space), equals the reference normalised the same way;
- ``rouge_l`` (QA): evalscope's ``Rouge-L-F`` (ROUGE-L F1);
- ``judge`` (QA with a judge): the judge's ``acc`` verdict, only when the judge gave a usable one;
- a built-in benchmark's own main score.

A sample's metric is the mean over its repeats; the cell's metric is over samples, with a Wilson interval
when every sample's value is 0 or 1 (a proportion) and a bootstrap interval of the mean otherwise
(``backend.evaluations.scoring``). A metric no sample could be scored on fails the cell with the reason; it
is never stored as 0. Rows are written with one bulk insert per cell (10,000 samples in well under 2 s).
"""

from __future__ import annotations

import json
import re
import string
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import delete, text
from sqlalchemy.orm import Session

from backend.evaluations import scoring
from backend.evaluations.models import EvaluationCell, EvaluationSample
from backend.evaluations.outputs import read_reviews
from backend.text import scrub as storable

PROPORTIONS = frozenset({"acc", "exact_match", "judge"})
REVIEW_KEYS = {"acc": "accuracy", "rouge_l": "Rouge-L-F", "judge": "acc"}
_SPACE = re.compile(r"\s+")


class MetricUnavailable(ValueError):
    """A metric the cell asked for could not be computed for any sample (the reason is the message)."""


def normalise(text: str | None) -> str:
    """For exact match: lower case, inner whitespace runs as one space, surrounding space and punctuation off."""
    return _SPACE.sub(" ", (text or "").lower()).strip().strip(string.punctuation + " ")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return storable(", ".join(str(item) for item in value))
    return storable(str(value))


def _messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """What the model was asked: the review's messages without the model's own last answer."""
    messages = [m for m in record.get("messages") or [] if isinstance(m, dict)]
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        out.append({"role": str(message.get("role") or "user"), "content": storable(str(content or ""))})
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class JudgeUse:
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0


def _judge(score: dict[str, Any], use: JudgeUse) -> tuple[float | None, str | None, str | None]:
    """The judge's usable verdict value, its raw text and its explanation; token use added to ``use``."""
    metadata = score.get("metadata") or {}
    attempts = [a for a in metadata.get("judge_attempts") or [] if isinstance(a, dict)]
    raw = None
    for attempt in attempts:
        use.calls += 1
        usage = (attempt.get("model_output") or {}).get("usage") or {}
        use.input_tokens += int(usage.get("input_tokens") or 0)
        use.output_tokens += int(usage.get("output_tokens") or 0)
        if raw is None and attempt.get("raw_response") is not None:
            raw = str(attempt["raw_response"])
    summary = score.get("judge_summary") or {}
    usable = bool(attempts) and int(summary.get("scored") or 0) > 0 and "judge_unavailable" not in metadata
    value = _number((score.get("value") or {}).get("acc")) if usable else None
    explanation = score.get("explanation")
    if explanation is None and not usable and attempts:
        explanation = summary.get("error") or attempts[0].get("error")
    return value, _text(raw), _text(explanation)


def sample_values(kind: str, metrics: list[str], score: dict[str, Any], reference: str | None,
                  use: JudgeUse) -> tuple[dict[str, float | None], str | None, str | None]:
    """One review line's value per metric (None: not computable for this line), judge text and explanation."""
    values = score.get("value") or {}
    out: dict[str, float | None] = {}
    verdict = explanation = None
    for metric in metrics:
        if metric == "exact_match":
            prediction = score.get("extracted_prediction") or score.get("prediction")
            out[metric] = None if reference is None else float(normalise(prediction) == normalise(reference))
        elif metric == "judge":
            out[metric], verdict, explanation = _judge(score, use)
        elif metric in REVIEW_KEYS and kind != "builtin":
            out[metric] = _number(values.get(REVIEW_KEYS[metric]))
        else:  # a built-in benchmark: its own main score, under its own name
            out[metric] = _number(values.get(metric))
    return out, verdict, explanation


def interval(scores_by_sample: dict[int, list[float | None]], seed: int, proportion: bool = True) -> dict[str, Any]:
    """``{score, n, ci_low, ci_high, method, repeats, reason}`` over ``{sample: [value of each repeat]}``, by
    ``backend.evaluations.scoring``: repeats folded per sample, then Wilson for a proportion scored 0/1 once,
    a bootstrap of the per-sample means otherwise (always for a continuous metric such as ROUGE-L)."""
    if proportion:
        estimate = scoring.aggregate(scores_by_sample, seed=seed)
    else:
        means, repeats, _unscored = scoring.per_sample_means(scores_by_sample)
        estimate = scoring.bootstrap_mean(list(means.values()), seed=seed)
        estimate = replace(estimate, repeats=min(repeats) if repeats else None)
    return {"score": estimate.value, "n": estimate.n, "ci_low": estimate.low, "ci_high": estimate.high,
            "method": estimate.method, "repeats": estimate.repeats, "reason": estimate.reason}


@dataclass
class CellResult:
    metrics: dict[str, Any]
    samples: int
    judge: JudgeUse
    error: str | None = None  # the first metric that could not be computed, and why


def ingest_cell(session: Session, cell: EvaluationCell, cell_dir: Path, metrics: list[str], *,
                seed: int = 0, item_ids: list[str] | None = None) -> CellResult:
    """Replace the cell's sample rows with those of its reviews files and compute its metrics (no commit).

    ``metrics`` in order, the first is the primary one. ``item_ids`` are the dataset's item ids in file order
    (evalscope reads a stored dataset in that order), for samples whose review carries no id (QA).
    Idempotent: a cell ingested again (a restarted worker) gets the same rows, never twice.
    """
    groups: dict[int, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for subset, record in read_reviews(cell_dir, cell.benchmark):
        sample_score = record.get("sample_score") or {}
        key = sample_score.get("group_id", sample_score.get("sample_id", record.get("index")))
        if isinstance(key, int):
            groups[key].append((subset, record))
    use = JudgeUse()
    rows: list[dict[str, Any]] = []
    per_metric: dict[str, dict[int, list[float]]] = {metric: {} for metric in metrics}
    primary = metrics[0] if metrics else None
    for index in sorted(groups):
        repeats = sorted(groups[index], key=lambda item: (item[1].get("sample_score") or {}).get("generation_index", 0))
        subset, first = repeats[0]
        first_score = (first.get("sample_score") or {}).get("score") or {}
        reference = _text(first.get("target"))
        by_metric: dict[str, list[float]] = defaultdict(list)
        verdict = explanation = None
        for _subset, record in repeats:
            score = (record.get("sample_score") or {}).get("score") or {}
            values, judged, why = sample_values(cell.dataset_kind, metrics, score, reference, use)
            verdict, explanation = verdict or judged, explanation or why
            for metric, value in values.items():
                if value is not None:
                    by_metric[metric].append(value)
        means = {metric: sum(v) / len(v) for metric, v in by_metric.items() if v}
        for metric, values in by_metric.items():
            if values:
                per_metric[metric][index] = values
        score_value = means.get(primary) if primary else None
        proportion = primary in PROPORTIONS or (cell.dataset_kind == "builtin" and score_value in (0.0, 1.0))
        metadata = (first.get("sample_score") or {}).get("sample_metadata") or {}
        sample_id = metadata.get("id") if isinstance(metadata, dict) else None
        if sample_id is None and item_ids is not None and 0 <= index < len(item_ids):
            sample_id = item_ids[index]
        rows.append({
            "cell_id": cell.id, "sample_index": index, "sample_id": str(sample_id if sample_id is not None else index),
            "subset": subset[:200], "input_messages": _messages(first),
            "prediction": _text(first_score.get("prediction")),
            "extracted": _text(first_score.get("extracted_prediction")), "reference": reference,
            "score": score_value, "correct": (score_value == 1.0) if proportion and score_value is not None else None,
            "scores": means, "repeat_scores": by_metric.get(primary, []) if primary else [],
            "judge_verdict": verdict, "judge_explanation": explanation, "error": None,
            "meta": {"repeats": len(repeats), "status": first_score.get("status")},
        })
    session.execute(delete(EvaluationSample).where(EvaluationSample.cell_id == cell.id))
    if rows:
        bulk_insert_samples(session, rows)
    result = CellResult(metrics={}, samples=len(rows), judge=use)
    for metric in metrics:
        values = per_metric[metric]
        if not values:
            reason = _why_missing(metric, len(rows))
            result.error = result.error or reason
            continue
        result.metrics[metric] = interval(values, seed, proportion=metric in PROPORTIONS
                                          or cell.dataset_kind == "builtin")
        if len(values) < len(rows):
            result.metrics[metric]["excluded"] = len(rows) - len(values)
    return result


_JSON_COLUMNS = ("input_messages", "scores", "repeat_scores", "metadata")


def bulk_insert_samples(session: Session, rows: list[dict[str, Any]]) -> None:
    """One executemany of the sample rows, the JSON columns serialised once here: the ORM's bulk insert spent
    most of its second per 10,000 rows building bind parameters and running the JSON type's processor."""
    table = EvaluationSample.__table__
    names = [column.name for column in table.columns if column.name != "id"]
    encoded = []
    for row in rows:
        values = {**row, "metadata": row.get("meta", {})}
        for name in _JSON_COLUMNS:
            values[name] = json.dumps(values.get(name), ensure_ascii=False, separators=(",", ":"))
        encoded.append({name: values.get(name) for name in names})
    statement = text(f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})")
    session.execute(statement, encoded)


def _why_missing(metric: str, samples: int) -> str:
    if samples == 0:
        return f"{metric}: no sample was scored (evalscope wrote no reviews)"
    if metric == "judge":
        return f"judge: the judge gave no usable verdict for any of the {samples} samples"
    if metric == "exact_match":
        return f"exact_match: none of the {samples} samples has a reference"
    return f"{metric}: evalscope reported no {REVIEW_KEYS.get(metric, metric)} for any of the {samples} samples"
