"""Per-request rows from evalscope's ``benchmark_data.db`` (one SQLite file per level) into our table.

evalscope writes a row per request as it ends (table ``result``): start and completion times on the
monotonic clock, success, latency and first-chunk latency in seconds, token counts, time per output
token, the inter-token gaps as a JSON list, and the response chunks as base64 pickle. We keep the
figures, not the chunks. The pickle is read only for a failed request's error text, with an
unpickler that builds nothing but plain containers, strings and numbers, never an arbitrary object.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import pickle
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import Session

from backend.results.models import StressRequest

_COLUMNS = ("start_time", "completed_time", "success", "latency", "first_chunk_latency", "prompt_tokens",
            "completion_tokens", "time_per_output_token", "inter_token_latencies", "response_messages", "is_stream")
MAX_ERROR_CHARS = 500


@dataclass
class LevelRequests:
    rows: list[dict[str, Any]]  # StressRequest columns without job_id and position
    gaps_ms: np.ndarray  # every inter-token gap of the level's requests, for its ITL percentiles
    origin: float | None = None  # the first start on evalscope's clock (perf_counter): start_s 0 of the rows


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


_NO_GAPS = np.empty(0)


def _gaps_ms(text: Any) -> np.ndarray:
    """A request's inter-token gaps (JSON list of seconds) in ms; what is not a finite, non-negative
    number is left out. A request has hundreds of them, so this is array work, not a loop."""
    try:
        listed = json.loads(text or "[]")
        gaps = np.asarray(listed if isinstance(listed, list) else [], dtype=float)
    except (TypeError, ValueError):
        return _NO_GAPS
    if gaps.ndim != 1:
        return _NO_GAPS
    return gaps[np.isfinite(gaps) & (gaps >= 0)] * 1000.0


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number >= 0 else None


class _PlainUnpickler(pickle.Unpickler):
    """Plain data only: any class or function the pickle names is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def _error_text(encoded: Any) -> str | None:
    """The error a failed request's response holds, when evalscope kept one as plain text."""
    if not isinstance(encoded, str) or not encoded:
        return None
    try:
        data = _PlainUnpickler(io.BytesIO(base64.b64decode(encoded, validate=True))).load()
    except (binascii.Error, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError):
        return None
    texts: list[str] = []

    def collect(item: Any, depth: int = 0) -> None:
        if depth > 4 or len(texts) >= 3:
            return
        if isinstance(item, str | bytes):
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
            if text.strip():
                texts.append(text.strip())
        elif isinstance(item, dict):
            for key in ("error", "message", "detail"):
                if key in item:
                    collect(item[key], depth + 1)
        elif isinstance(item, list | tuple):
            for child in item[:3]:
                collect(child, depth + 1)

    collect(data)
    return " | ".join(texts)[:MAX_ERROR_CHARS] or None


def read_level_file(path: Path) -> LevelRequests | None:
    """Every request of one level, ordered by start; None when the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return None
    try:
        connection.row_factory = sqlite3.Row
        raw = connection.execute(f"SELECT {', '.join(_COLUMNS)} FROM result ORDER BY start_time, rowid").fetchall()
    except sqlite3.Error:
        return None
    finally:
        connection.close()
    starts = [s for row in raw if (s := _number(row["start_time"])) is not None]
    origin = min(starts) if starts else None
    rows, all_gaps = [], []
    for seq, row in enumerate(raw):
        success = bool(row["success"])
        start, end = _number(row["start_time"]), _number(row["completed_time"])
        gaps = _gaps_ms(row["inter_token_latencies"]) if success else _NO_GAPS
        if len(gaps):
            all_gaps.append(gaps)
        first = _number(row["first_chunk_latency"]) if success and row["is_stream"] else None
        latency = _number(row["latency"]) if success else None
        tpot = _number(row["time_per_output_token"]) if success else None
        rows.append({
            "seq": seq,
            "start_s": start - origin if start is not None and origin is not None else None,
            "end_s": end - origin if end is not None and origin is not None else None,
            "success": success,
            "ttft_ms": first * 1000.0 if first is not None and first >= 0 else None,
            "latency_s": latency if latency is not None and latency >= 0 else None,
            "tpot_ms": tpot * 1000.0 if tpot is not None and tpot > 0 else None,
            "itl_mean_ms": float(gaps.mean()) if len(gaps) else None,
            "itl_max_ms": float(gaps.max()) if len(gaps) else None,
            "input_tokens": _count(row["prompt_tokens"]) if success else None,
            "output_tokens": _count(row["completion_tokens"]) if success else None,
            "error": None if success else _error_text(row["response_messages"]),
        })
    return LevelRequests(rows=rows, gaps_ms=np.concatenate(all_gaps) if all_gaps else _NO_GAPS, origin=origin)


def merge_shards(parts: Sequence[LevelRequests]) -> tuple[LevelRequests, tuple[float, float] | None]:
    """One level's requests from all its shards, on one clock (0 is the earliest start of any shard) and
    ordered by start, and the window in which every shard ran: from the latest of the shards' first starts
    to the earliest of their last ends (None when some shard has no timed request or they never overlap).

    The shards of one host share evalscope's clock (``perf_counter``, the system's monotonic clock)."""
    timed = [part for part in parts if part.origin is not None]
    origin = min((part.origin for part in timed), default=None)  # type: ignore[type-var]
    rows: list[dict[str, Any]] = []
    spans: list[tuple[float, float] | None] = []
    for part in parts:
        shift = (part.origin - origin) if part.origin is not None and origin is not None else 0.0

        def moved(value: float | None, shift: float = shift) -> float | None:
            return value + shift if value is not None else None

        shifted = [{**row, "start_s": moved(row["start_s"]), "end_s": moved(row["end_s"])} for row in part.rows]
        starts = [row["start_s"] for row in shifted if row["start_s"] is not None]
        ends = [row["end_s"] for row in shifted if row["end_s"] is not None]
        spans.append((min(starts), max(ends)) if starts and ends else None)
        rows.extend(shifted)
    rows.sort(key=lambda row: (row["start_s"] is None, row["start_s"] or 0.0))
    rows = [{**row, "seq": seq} for seq, row in enumerate(rows)]
    gaps = [part.gaps_ms for part in parts if len(part.gaps_ms)]
    merged = LevelRequests(rows=rows, gaps_ms=np.concatenate(gaps) if gaps else _NO_GAPS, origin=origin)
    window = None
    if spans and all(span is not None for span in spans):
        start = max(span[0] for span in spans if span is not None)
        end = min(span[1] for span in spans if span is not None)
        window = (start, end) if end > start else None
    return merged, window


def store_requests(session: Session, job_id: str, position: int, rows: list[dict[str, Any]]) -> None:
    """One bulk insert of a level's rows, in the caller's transaction (with the level's own row)."""
    if rows:
        session.execute(insert(StressRequest), [{"job_id": job_id, "position": position, **row} for row in rows])


PACKED = ("success", "start_s", "ttft_ms", "tpot_ms", "latency_s")  # the columns of a packed level, in order


def pack_columns(rows: list[dict[str, Any]]) -> bytes:
    """A level's per-request figures as one float64 array in .npy form (NaN for unknown), for fast reading."""
    data = np.array([[1.0 if row.get("success") else 0.0, *(np.nan if row.get(name) is None else row[name]
                                                          for name in PACKED[1:])] for row in rows], dtype="<f8")
    out = io.BytesIO()
    np.save(out, data.reshape(-1, len(PACKED)), allow_pickle=False)
    return out.getvalue()


def unpack_columns(blob: bytes) -> np.ndarray | None:
    """The array ``pack_columns`` wrote; None when it is not one (never unpickled)."""
    try:
        data = np.load(io.BytesIO(blob), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    return data if data.ndim == 2 and data.shape[1] == len(PACKED) else None
