"""Exports of an evaluation run: its scores table and its per-sample records as CSV, JSON or XLSX.

Every format carries the same columns (``SCORE_COLUMNS``, ``SAMPLE_COLUMNS``) in the same order. An unknown
value is an empty CSV cell, ``null`` in JSON and an empty XLSX cell, never 0. Model output is written as it
came, with two exceptions that only XLSX needs: characters the XML underneath cannot hold (control
characters) are dropped, and a text that starts with ``=`` stays text (openpyxl would otherwise store it as
a formula, which a spreadsheet would run when the file is opened). Cells over Excel's 32,767 characters are
cut there with a marker; CSV and JSON keep the whole text.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

XLSX_MAX_CELL = 32_767
CUT_MARK = " [cut: longer than an Excel cell]"

FORMATS = {  # format: (media type, suffix)
    "csv": ("text/csv; charset=utf-8", "csv"),
    "json": ("application/json", "json"),
    "xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
}
WHATS = ("scores", "samples")

SCORE_COLUMNS = ("job_id", "cell_id", "model", "dataset", "dataset_hash", "subset", "metric", "value", "n",
                 "ci_low", "ci_high", "ci_method", "status", "error")
SAMPLE_COLUMNS = ("job_id", "cell_id", "model", "dataset", "subset", "sample_id", "repeats", "input", "prediction",
                  "extracted", "reference", "score", "correct", "judge_verdict", "judge_explanation", "error")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def to_csv(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(name)) for name in columns])
    return out.getvalue()


def to_json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=1, ensure_ascii=False, allow_nan=False, default=str)


def _xlsx_value(value: Any) -> Any:
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):
        value = ILLEGAL_CHARACTERS_RE.sub("", value)
        if len(value) > XLSX_MAX_CELL:
            value = value[: XLSX_MAX_CELL - len(CUT_MARK)] + CUT_MARK
    return value


def to_xlsx(sheets: Sequence[tuple[str, Sequence[str], Iterable[dict[str, Any]]]]) -> bytes:
    """One workbook, a sheet per ``(title, columns, rows)``, written in openpyxl's streaming mode."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    workbook = Workbook(write_only=True)
    for title, columns, rows in sheets:
        sheet = workbook.create_sheet(title=title)
        sheet.append(list(columns))
        for row in rows:
            cells = []
            for name in columns:
                value = _xlsx_value(row.get(name))
                cell = WriteOnlyCell(sheet, value=value)
                if isinstance(value, str):
                    cell.data_type = "s"  # never a formula, whatever the text starts with
                cells.append(cell)
            sheet.append(cells)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def export(what: str, kind: str, job: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[bytes | str, str, str]:
    """The body, media type and file name of an export of ``what`` (scores or samples) as ``kind``."""
    columns = SCORE_COLUMNS if what == "scores" else SAMPLE_COLUMNS
    media, suffix = FORMATS[kind]
    name = f"evaluation-{job['id']}-{what}.{suffix}"
    if kind == "csv":
        return to_csv(columns, rows), media, name
    if kind == "json":
        return to_json({"job": job, "columns": list(columns), what: [{c: r.get(c) for c in columns} for r in rows]}), \
            media, name
    return to_xlsx([(what, columns, rows)]), media, name
