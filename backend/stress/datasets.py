"""Uploaded prompt files for stress tests, checked against what evalscope's dataset plugins read.

- ``line_by_line``: one prompt per non-empty line (plain text, a JSON array of messages, or a JSON
  request body; evalscope's ``line_by_line`` plugin accepts all three).
- ``openqa``: JSON Lines, each an object with a non-empty string ``question`` (the ``openqa`` plugin
  parses every line, so blank lines are dropped when storing).
- ``custom``: evalscope 1.x's ``custom`` plugin reads one plain-text prompt per line (it does not parse
  JSON), so the check is the same as plain-text ``line_by_line``.

Files are stored as ``<datasets_dir>/<id>.<ext>`` with a server-made id; the client's file name is kept
only as display text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO

from backend.config import resolve_path
from backend.db import db
from backend.errors import ApiError
from backend.stress.models import StressDataset, new_job_id

FORMATS = {"line_by_line": "txt", "openqa": "jsonl", "custom": "txt"}


def datasets_root(settings: dict[str, Any]) -> Path:
    return resolve_path(settings["datasets_dir"]).resolve()


def stored_path(settings: dict[str, Any], dataset_id: str, dataset_format: str) -> Path:
    if not dataset_id.isalnum() or dataset_format not in FORMATS:
        raise ValueError("bad dataset id or format")
    return datasets_root(settings) / f"{dataset_id}.{FORMATS[dataset_format]}"


def _lines(data: bytes) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(f"file: not UTF-8 text (byte {exc.start})", field="file") from None
    if "\x00" in text:
        raise ApiError("file: binary content (NUL bytes)", field="file")
    return [line.strip() for line in text.splitlines() if line.strip()]


def validate(data: bytes, dataset_format: str) -> list[str]:
    """The lines to store; raises ApiError (field ``file``) naming the first bad line."""
    lines = _lines(data)
    if not lines:
        raise ApiError("file: no non-empty lines", field="file")
    if dataset_format == "openqa":
        for number, line in enumerate(lines, 1):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ApiError(f"file: line {number} is not JSON ({exc.msg})", field="file") from None
            if not isinstance(item, dict) or not isinstance(item.get("question"), str) \
                    or not item["question"].strip():
                raise ApiError(f"file: line {number} has no non-empty string 'question'", field="file")
    elif dataset_format == "line_by_line":
        for number, line in enumerate(lines, 1):
            if line[0] in "[{":
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    continue  # plain text that happens to start with a bracket
                if isinstance(item, dict) and not isinstance(item.get("messages"), list):
                    raise ApiError(f"file: line {number} is a JSON object without a 'messages' list",
                                   field="file")
                if isinstance(item, list) and not all(isinstance(m, dict) and "role" in m for m in item):
                    raise ApiError(f"file: line {number} is a JSON array that is not a list of messages",
                                   field="file")
    return lines


def save_upload(stream: BinaryIO, filename: str | None, dataset_format: str, settings: dict[str, Any]) -> StressDataset:
    if dataset_format not in FORMATS:
        raise ApiError(f"format: one of {', '.join(FORMATS)}", field="format")
    limit = int(settings["max_dataset_bytes"])
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ApiError(f"file: larger than {limit} bytes (stress.max_dataset_bytes)", field="file", status=413,
                       code="too_large")
    lines = validate(data, dataset_format)
    dataset = StressDataset(id=new_job_id(), format=dataset_format,
                            filename=(os.path.basename(filename or "") or "upload")[:200],
                            size_bytes=len(data), records=len(lines))
    path = stored_path(settings, dataset.id, dataset_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".part")
    temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    db.session.add(dataset)
    db.session.commit()
    return dataset


def list_datasets() -> list[dict[str, Any]]:
    rows = db.session.scalars(db.select(StressDataset).order_by(StressDataset.created_at.desc())).all()
    return [row.as_dict() for row in rows]


def get_dataset(dataset_id: str) -> StressDataset | None:
    return db.session.get(StressDataset, dataset_id)
