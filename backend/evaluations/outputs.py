"""Reading what ``evalscope eval`` writes for each cell, without importing evalscope.

A cell's ``--work-dir`` (``outputs/evaluations/<job>/cell_<n>/``) holds, with ``--model-id=model``::

    predictions/model/<benchmark>_<subset>.jsonl   one line per answered sample (and repeat), appended as each ends
    reviews/model/<benchmark>_<subset>.jsonl       one line per scored sample: its ``sample_score``
    reports/model/<benchmark>.json                 the aggregated report, written when the cell ends
    pep_status.json                                 our entry module's verdict on the cell (ok / error)

Live progress reads the predictions and reviews files as they grow, from the byte offset reached last
time (``Tail``), taking only complete lines, so a line being written is read on the next tick.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_DIR = "model"
STATUS_FILE = "pep_status.json"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"(?:\bERROR\b|Error:|Exception:)")


@dataclass
class Tail:
    """How far one growing JSON-lines file has been read."""

    offset: int = 0
    lines: int = 0


@dataclass
class CellFiles:
    """What has been read so far of one cell's growing files."""

    predictions: dict[str, Tail] = field(default_factory=dict)
    reviews: dict[str, Tail] = field(default_factory=dict)
    answered: int = 0
    reviewed: int = 0
    score_sum: float = 0.0  # primary metric summed over reviewed lines
    scored: int = 0  # reviewed lines that had the primary metric


def read_new_lines(path: Path, tail: Tail) -> list[dict[str, Any]]:
    """Complete JSON lines appended to ``path`` since ``tail``; advances ``tail``. A bad line is skipped."""
    try:
        with path.open("rb") as handle:
            handle.seek(tail.offset)
            data = handle.read()
    except OSError:
        return []
    end = data.rfind(b"\n")
    if end < 0:
        return []
    records = []
    for raw in data[:end].split(b"\n"):
        tail.lines += 1
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    tail.offset += end + 1
    return records


def _files(cell_dir: Path, kind: str) -> list[Path]:
    folder = cell_dir / kind / MODEL_DIR
    try:
        return sorted(path for path in folder.glob("*.jsonl") if path.is_file())
    except OSError:
        return []


def subset_of(path: Path, benchmark: str) -> str:
    """The subset a predictions/reviews file is for: ``general_mcq_default.jsonl`` -> ``default``."""
    stem = path.stem
    return stem[len(benchmark) + 1:] if stem.startswith(benchmark + "_") else stem


def primary_value(record: dict[str, Any], key: str | None) -> float | None:
    """A review line's value of ``key`` (or of its own main score when ``key`` is None)."""
    score = (record.get("sample_score") or {}).get("score") or {}
    values = score.get("value") or {}
    name = key or score.get("main_score_name")
    value = values.get(name) if name else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def follow_cell(cell_dir: Path, files: CellFiles, value_of: Callable[[dict[str, Any]], float | None]) -> CellFiles:
    """Read what the cell's predictions and reviews files gained since last time (``files`` is updated);
    ``value_of`` gives a review line's primary score (None when it has none)."""
    for path in _files(cell_dir, "predictions"):
        tail = files.predictions.setdefault(path.name, Tail())
        files.answered += len(read_new_lines(path, tail))
    for path in _files(cell_dir, "reviews"):
        tail = files.reviews.setdefault(path.name, Tail())
        for record in read_new_lines(path, tail):
            files.reviewed += 1
            value = value_of(record)
            if value is not None:
                files.score_sum += value
                files.scored += 1
    return files


def read_reviews(cell_dir: Path, benchmark: str) -> list[tuple[str, dict[str, Any]]]:
    """Every complete review line of the cell, with its subset."""
    records = []
    for path in _files(cell_dir, "reviews"):
        subset = subset_of(path, benchmark)
        records.extend((subset, record) for record in read_new_lines(path, Tail()))
    return records


def read_predictions(cell_dir: Path, benchmark: str) -> list[tuple[str, dict[str, Any]]]:
    records = []
    for path in _files(cell_dir, "predictions"):
        subset = subset_of(path, benchmark)
        records.extend((subset, record) for record in read_new_lines(path, Tail()))
    return records


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cell_status(cell_dir: Path) -> dict[str, Any] | None:
    """Our entry module's verdict on a cell that has ended (``{"status": "ok" | "error", "error"?}``)."""
    status = read_json(cell_dir / STATUS_FILE)
    return status if isinstance(status, dict) and status.get("status") in ("ok", "error") else None


def read_report(cell_dir: Path, benchmark: str) -> dict[str, Any] | None:
    report = read_json(cell_dir / "reports" / MODEL_DIR / f"{benchmark}.json")
    return report if isinstance(report, dict) else None


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of a log; a log that is a symlink is not followed (O_NOFOLLOW)."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "r", encoding="utf-8", errors="replace") as handle:
            return [_ANSI.sub("", line.rstrip("\n")) for line in deque(handle, maxlen=lines)]
    except OSError:
        return []


def log_errors(path: Path, limit: int = 5) -> list[str]:
    """The last error lines evalscope logged (ANSI colours removed)."""
    found = [line.strip() for line in tail(path, 400) if _ERROR_LINE.search(line) and "ignore_errors" not in line]
    return found[-limit:]
