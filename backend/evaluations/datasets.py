"""Evaluation datasets: validated uploads, the bundled ones, built-in benchmarks, and evalscope's layout.

Two kinds, in evalscope's own custom formats (``general_mcq`` and ``general_qa`` in evalscope 1.14):

- ``mcq``: multiple choice. CSV or JSON Lines with the columns ``id, question, A, B[, C .. J], answer``
  (``answer`` one of the choice letters of its row), and optionally a second file of the same shape with
  few-shot examples (evalscope's ``dev`` split).
- ``qa``: question answering. JSON Lines, each line ``{"query": ..., "response": ...}`` (evalscope also
  reads ``question`` / ``answer``, taken here as the same), optionally ``system`` and ``id``; or
  ``{"messages": [{"role", "content"}, ...], "response": ...}`` whose last message is the user's.

**Validation** names the file field (``file`` or ``dev_file``), the line (1-based, as an editor counts)
and the column: ``file: line 3, column 'answer': 'E' is not one of the row's choices A, B, C, D``
(``details`` carry ``field``, ``line`` and ``column`` too).

**Storage and identity.** A valid upload is normalised (UTF-8 without BOM, ``\\n`` line ends, no blank
lines, one JSON object per line with sorted keys, ``question``/``answer`` of QA renamed to
``query``/``response``, MCQ answers in capitals, a QA line without ``id`` given its item number) and
stored as ``<evaluations.datasets_dir>/<id>/`` in exactly the layout evalscope's local loader reads::

    mcq: default_val.jsonl  [default_dev.jsonl]      (LocalDataLoader: <subset>_<split>.jsonl)
    qa:  default.jsonl                                 (LocalDataLoader: <subset>.jsonl)

``content_hash`` is the sha256 over the kind and the normalised files (``content_hash()``), and the id
is its first 16 hex digits, so the same content uploaded twice (as CSV or JSONL, with CRLF or a BOM) is
the same dataset, and a changed file is a new one. A run records the id (and hash) it used.

**evalscope.** ``evalscope_dir(dataset)`` returns that folder and the ``--dataset-args`` mapping for it,
e.g. ``{"general_mcq": {"local_path": "/.../3f2a...", "subset_list": ["default"], "few_shot_num": 0}}``:
run ``evalscope eval --datasets general_mcq --dataset-args '<json of that mapping>'``.

**Built-in benchmarks** (``builtin_benchmarks()``) are a short list of evalscope benchmark names, each
available only when the local ModelScope or Hugging Face cache already holds its data; the check reads
the disk, never the network, and says plainly what is missing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import statistics
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from flask import current_app
from sqlalchemy.exc import IntegrityError

from backend.config import resolve_path
from backend.db import db
from backend.errors import ApiError
from backend.evaluations.dataset_models import EvalDataset

log = logging.getLogger(__name__)

KINDS = ("mcq", "qa")
LETTERS = "ABCDEFGHIJ"
SUBSET = "default"
BENCHMARKS = {"mcq": "general_mcq", "qa": "general_qa"}
# The stored files, named as evalscope's LocalDataLoader looks for them (<subset>_<split>.jsonl or
# <subset>.jsonl); general_mcq's splits are val (evaluated) and dev (few-shot), general_qa's is test.
MCQ_EVAL_FILE = f"{SUBSET}_val.jsonl"
MCQ_DEV_FILE = f"{SUBSET}_dev.jsonl"
QA_FILE = f"{SUBSET}.jsonl"
DEFAULT_FEW_SHOT = 5  # shots used when a dataset has a dev file and the caller names no number
MCQ_COLUMNS = ("id", "question", *LETTERS, "answer")
QA_KEYS = {"id", "query", "question", "response", "answer", "system", "messages"}
MESSAGE_ROLES = ("system", "user", "assistant")
MAX_NAME_CHARS = 100
MAX_FILENAME_CHARS = 200
EXTENSIONS = {"mcq": (".csv", ".jsonl"), "qa": (".jsonl",)}

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


@dataclass(frozen=True)
class Bundled:
    kind: str
    name: str
    file: str
    dev_file: str | None = None


# The datasets that ship with the platform (files in backend/evaluations/bundled/, written by
# scripts/make_bundled_datasets.py), registered at start-up.
BUNDLED = (
    Bundled("mcq", "Arithmetic (40 multiple-choice sums)", "arithmetic_val.csv", "arithmetic_dev.csv"),
    Bundled("qa", "Short facts (30 questions)", "facts.jsonl"),
)


class DatasetFilesMissing(RuntimeError):
    """A dataset's row exists but its stored files are gone or changed (and it is not a bundled one)."""


# --- reading and checking ---------------------------------------------------------------------------

def _refuse(field_name: str, message: str, line: int | None = None, column: str | None = None,
            status: int = 400, code: str = "bad_request") -> ApiError:
    where = "" if line is None else f"line {line}" + ("" if column is None else f", column '{column}'") + ": "
    details: dict[str, Any] = {}
    if line is not None:
        details["line"] = line
    if column is not None:
        details["column"] = column
    return ApiError(f"{field_name}: {where}{message}", field=field_name, status=status, code=code,
                    details=details)


def decode_text(data: bytes, field_name: str) -> str:
    """UTF-8 text without BOM; refuses an empty file, bytes that are not UTF-8 and NUL bytes, by line."""
    if not data.strip():
        raise _refuse(field_name, "the file is empty", line=1)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _refuse(field_name, f"not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}); "
                      "is this a binary file?", line=line) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise _refuse(field_name, "binary content (a NUL byte)", line=line)
    return text


def _check_text(value: str, field_name: str, line: int, column: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(field_name, "text holds a lone surrogate (a \\ud800-style escape)", line, column) from None
    return value


def _json_lines(text: str, field_name: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        try:
            item = json.loads(line)
        except RecursionError:
            raise _refuse(field_name, "nested too deeply", number) from None
        except json.JSONDecodeError as exc:
            raise _refuse(field_name, f"not JSON ({exc.msg} at character {exc.pos + 1})", number) from None
        if not isinstance(item, dict):
            raise _refuse(field_name, f"a JSON {type(item).__name__}, not an object", number)
        rows.append((number, item))
    if not rows:
        raise _refuse(field_name, "the file is empty", line=1)
    return rows


def _close_name(name: str, known: tuple[str, ...] | set[str]) -> str:
    for candidate in known:
        if candidate.lower() == name.strip().lower():
            return f" (did you mean '{candidate}'?)"
    return ""


def _mcq_record(values: dict[str, Any], field_name: str, line: int, letters: list[str]) -> dict[str, str]:
    """One MCQ item as stored: id, question, the choice letters of its row, answer (a capital)."""
    row: dict[str, str] = {}
    for column in ("id", "question", *letters, "answer"):
        value = values.get(column)
        if isinstance(value, bool) or value is None:
            raise _refuse(field_name, "missing" if value is None else "must be text", line, column)
        if isinstance(value, int | float):
            value = str(value)
        if not isinstance(value, str):
            raise _refuse(field_name, f"must be text, not {type(value).__name__}", line, column)
        value = _check_text(value, field_name, line, column).strip()
        if not value:
            raise _refuse(field_name, "empty" + (" choice" if column in letters else ""), line, column)
        row[column] = value
    answer = row["answer"].upper()
    if answer not in letters:
        raise _refuse(field_name, f"'{row['answer']}' is not one of the row's choices {', '.join(letters)}",
                      line, "answer")
    row["answer"] = answer
    return row


def _letters_of(columns: list[str], field_name: str, line: int, header: bool) -> list[str]:
    """The choice letters among ``columns``: A, B and then no gaps (``C`` missing before ``D`` is refused)."""
    letters = [letter for letter in LETTERS if letter in columns]
    for index, letter in enumerate(letters):
        if letter != LETTERS[index]:
            raise _refuse(field_name, f"{'missing column' if header else 'missing choice'} '{LETTERS[index]}' "
                          f"(choices run A, B, C ... without gaps)", line, None if header else LETTERS[index])
    if len(letters) < 2:
        missing = LETTERS[len(letters)]
        if header:
            raise _refuse(field_name, f"missing column '{missing}' (at least two choices, A and B)", line)
        raise _refuse(field_name, "missing (at least two choices, A and B)", line, missing)
    return letters


def parse_mcq_csv(text: str, field_name: str) -> list[tuple[int, dict[str, str]]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, dict[str, str]]] = []
    header: list[str] | None = None
    header_line = 1
    letters: list[str] = []
    consumed = 0
    try:
        for record in reader:
            start, consumed = consumed + 1, reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue
            if header is None:
                header, header_line = [cell.strip() for cell in record], start
                _check_header(header, field_name, header_line)
                letters = _letters_of(header, field_name, header_line, header=True)
                continue
            if len(record) != len(header):
                raise _refuse(field_name, f"{len(record)} values for the {len(header)} columns of the header",
                              start)
            rows.append((start, _mcq_record(dict(zip(header, record, strict=True)), field_name, start, letters)))
    except csv.Error as exc:
        raise _refuse(field_name, f"not valid CSV ({exc})", consumed + 1) from None
    if header is None:
        raise _refuse(field_name, "the file is empty", line=1)
    if not rows:
        raise _refuse(field_name, "a header but no items", header_line + 1)
    return rows


def _check_header(header: list[str], field_name: str, line: int) -> None:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise _refuse(field_name, f"bad header: column '{name}' appears twice", line)
        seen.add(name)
        if name not in MCQ_COLUMNS:
            shown = name if len(name) <= 40 else name[:40] + "..."
            raise _refuse(field_name, f"bad header: unknown column '{shown}'{_close_name(name, MCQ_COLUMNS)}; "
                          "the columns are id, question, A, B [, C ... J], answer", line)
    for required in ("id", "question", "answer"):
        if required not in seen:
            raise _refuse(field_name, f"missing column '{required}' (the header names id, question, A, B "
                          "[, C ... J], answer)", line)


def parse_mcq_jsonl(text: str, field_name: str) -> list[tuple[int, dict[str, str]]]:
    rows = []
    for line, item in _json_lines(text, field_name):
        for key in item:
            if key not in MCQ_COLUMNS:
                raise _refuse(field_name, f"unknown key{_close_name(key, MCQ_COLUMNS)}; the keys are id, "
                              "question, A, B [, C ... J], answer", line, key[:40])
        letters = _letters_of(list(item), field_name, line, header=False)
        rows.append((line, _mcq_record(item, field_name, line, letters)))
    return rows


def parse_qa_jsonl(text: str, field_name: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for line, item in _json_lines(text, field_name):
        for key in item:
            if key not in QA_KEYS:
                raise _refuse(field_name, f"unknown key{_close_name(key, QA_KEYS)}; the keys are query "
                              "(or question), response (or answer), system, messages, id", line, key[:40])
        for first, second in (("query", "question"), ("response", "answer")):
            if first in item and second in item:
                raise _refuse(field_name, f"both '{first}' and '{second}' (they mean the same)", line, second)
        row: dict[str, Any] = {}
        response_key = "answer" if "answer" in item else "response"
        row["response"] = _qa_text(item.get(response_key), field_name, line, response_key)
        if "messages" in item:
            for key in ("query", "question", "system"):
                if key in item:
                    raise _refuse(field_name, "not with 'messages' (put it in the messages)", line, key)
            row["messages"] = _messages(item["messages"], field_name, line)
        else:
            query_key = "query" if "query" in item else "question"
            row["query"] = _qa_text(item.get(query_key), field_name, line, query_key)
            if item.get("system") is not None:
                row["system"] = _qa_text(item["system"], field_name, line, "system")
        if "id" in item:
            raw_id = item["id"]
            if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
                raise _refuse(field_name, "must be text or a whole number", line, "id")
            row["id"] = _qa_text(str(raw_id), field_name, line, "id")
        rows.append((line, row))
    return rows


def _qa_text(value: Any, field_name: str, line: int, column: str) -> str:
    if value is None:
        raise _refuse(field_name, "missing", line, column)
    if not isinstance(value, str):
        raise _refuse(field_name, f"must be text, not {type(value).__name__}", line, column)
    value = _check_text(value, field_name, line, column).strip()
    if not value:
        raise _refuse(field_name, "empty", line, column)
    return value


def _messages(value: Any, field_name: str, line: int) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _refuse(field_name, "must be a non-empty list of {role, content} objects", line, "messages")
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise _refuse(field_name, "each message is an object with exactly 'role' and 'content'", line, where)
        if message["role"] not in MESSAGE_ROLES:
            raise _refuse(field_name, f"role must be one of {', '.join(MESSAGE_ROLES)}", line, where)
        messages.append({"role": message["role"], "content": _qa_text(message["content"], field_name, line,
                                                                       f"{where}.content")})
    if messages[-1]["role"] != "user":
        raise _refuse(field_name, "the last message must be the user's (the question)", line, "messages")
    return messages


@dataclass
class Parsed:
    """A validated dataset: its items as they will be stored (and the few-shot items of an MCQ)."""

    kind: str
    items: list[dict[str, Any]]
    dev_items: list[dict[str, Any]] = field(default_factory=list)

    def files(self) -> dict[str, bytes]:
        """The normalised files, by the name evalscope's loader looks for."""
        if self.kind == "mcq":
            files = {MCQ_EVAL_FILE: _jsonl_bytes(self.items)}
            if self.dev_items:
                files[MCQ_DEV_FILE] = _jsonl_bytes(self.dev_items)
            return files
        return {QA_FILE: _jsonl_bytes(self.items)}


def _jsonl_bytes(items: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items).encode("utf-8")


def _unique_ids(rows: list[tuple[int, dict[str, Any]]], field_name: str) -> None:
    first_line: dict[str, int] = {}
    for line, row in rows:
        if row["id"] in first_line:
            raise _refuse(field_name, f"id '{row['id'][:40]}' is already used on line {first_line[row['id']]}",
                          line, "id")
        first_line[row["id"]] = line


def parse(kind: str, data: bytes, filename: str, dev_data: bytes | None = None,
          dev_filename: str | None = None) -> Parsed:
    """Validate a dataset's file(s); raises ``ApiError`` naming the field, the line and the column."""
    if kind not in KINDS:
        raise ApiError(f"kind: one of {', '.join(KINDS)}", field="kind")
    if kind == "qa":
        if dev_data is not None:
            raise ApiError("dev_file: few-shot files are for multiple-choice datasets only", field="dev_file")
        rows = parse_qa_jsonl(decode_text(data, "file"), "file")
        for number, (_, row) in enumerate(rows, 1):
            row.setdefault("id", str(number))
        _unique_ids(rows, "file")
        return Parsed(kind, [row for _, row in rows])
    rows = _parse_mcq_file(data, filename, "file")
    _unique_ids(rows, "file")
    dev_rows: list[tuple[int, dict[str, Any]]] = []
    if dev_data is not None:
        dev_rows = _parse_mcq_file(dev_data, dev_filename or "", "dev_file")
        _unique_ids(dev_rows, "dev_file")
    return Parsed(kind, [row for _, row in rows], [row for _, row in dev_rows])


def _parse_mcq_file(data: bytes, filename: str, field_name: str) -> list[tuple[int, dict[str, Any]]]:
    text = decode_text(data, field_name)
    if filename.lower().endswith(".csv"):
        return parse_mcq_csv(text, field_name)
    return parse_mcq_jsonl(text, field_name)


def content_hash(kind: str, files: dict[str, bytes]) -> str:
    """sha256 over ``pep-eval-dataset\\n<kind>\\n`` and, for each stored file in name order,
    ``<name>\\n<byte length>\\n<bytes>``."""
    digest = hashlib.sha256(f"pep-eval-dataset\n{kind}\n".encode())
    for name in sorted(files):
        digest.update(f"{name}\n{len(files[name])}\n".encode())
        digest.update(files[name])
    return digest.hexdigest()


def dataset_id_for(digest: str) -> str:
    return digest[:16]


def summarise(parsed: Parsed) -> dict[str, Any]:
    """What the list and the preview show besides the rows: answer letters, choices per item, lengths."""
    if parsed.kind == "mcq":
        answers = Counter(item["answer"] for item in parsed.items)
        choices = Counter(sum(1 for letter in LETTERS if letter in item) for item in parsed.items)
        letters = LETTERS[:max(choices)]
        return {"answers": {letter: answers[letter] for letter in letters},
                "choices_per_item": {str(count): choices[count] for count in sorted(choices)}}
    lengths = [len(item["response"]) for item in parsed.items]
    forms = Counter("messages" if "messages" in item else "query" for item in parsed.items)
    return {"forms": dict(sorted(forms.items())),
            "reference_chars": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)}}


# --- storing ----------------------------------------------------------------------------------------

def settings_from_app() -> dict[str, Any]:
    return current_app.config["PEP"]["evaluations"]


def datasets_root(settings: dict[str, Any]) -> Path:
    return resolve_path(settings["datasets_dir"]).resolve()


def stored_dir(settings: dict[str, Any], dataset_id: str) -> Path:
    if not re.fullmatch(r"[0-9a-f]{16}", dataset_id):
        raise ValueError(f"bad dataset id {dataset_id!r}")
    return datasets_root(settings) / dataset_id


def _stored_files_match(folder: Path, files: dict[str, bytes]) -> bool:
    try:
        present = {path.name for path in folder.iterdir()}
        return present == set(files) and all((folder / name).read_bytes() == data for name, data in files.items())
    except OSError:
        return False


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Put ``files`` (and nothing else) in ``folder``, atomically: a reader never sees half a dataset."""
    if _stored_files_match(folder, files):
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.part"
    temporary.mkdir()
    try:
        for name, data in files.items():
            (temporary / name).write_bytes(data)
        if folder.exists():
            if _stored_files_match(folder, files):  # another process wrote it meanwhile
                return
            shutil.rmtree(folder, ignore_errors=True)  # a broken copy: its content no longer matches its id
        try:
            os.replace(temporary, folder)
        except OSError:
            if not _stored_files_match(folder, files):  # not just another process winning the same write
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def store(parsed: Parsed, name: str, filename: str, dev_filename: str | None, settings: dict[str, Any],
          bundled: bool = False) -> tuple[EvalDataset, bool]:
    """The dataset row for this content (created if new) and whether it was created; files written."""
    files = parsed.files()
    digest = content_hash(parsed.kind, files)
    dataset_id = dataset_id_for(digest)
    _write_files(stored_dir(settings, dataset_id), files)
    existing = db.session.get(EvalDataset, dataset_id)
    if existing is not None:
        if bundled and not existing.bundled:
            existing.bundled = True
            db.session.commit()
        return existing, False
    row = EvalDataset(id=dataset_id, content_hash=digest, kind=parsed.kind, name=name, bundled=bundled,
                      filename=filename, dev_filename=dev_filename if parsed.dev_items else None,
                      items=len(parsed.items), dev_items=len(parsed.dev_items),
                      size_bytes=sum(len(data) for data in files.values()), summary=summarise(parsed))
    db.session.add(row)
    try:
        db.session.commit()
    except IntegrityError:  # the same content stored by another request a moment ago
        db.session.rollback()
        return db.session.get(EvalDataset, dataset_id), False  # type: ignore[return-value]
    return row, True


def check_filename(raw: str | None, kind: str, field_name: str) -> str:
    """A plain file name with an extension the kind accepts; it is display text, never a path we open."""
    name = (raw or "").strip()
    if not name:
        raise ApiError(f"{field_name}: the upload has no file name", field=field_name)
    if len(name) > MAX_FILENAME_CHARS:
        raise ApiError(f"{field_name}: file name longer than {MAX_FILENAME_CHARS} characters", field=field_name)
    if "/" in name or "\\" in name or name in (".", "..") or any(unicodedata.category(c)[0] == "C" for c in name):
        raise ApiError(f"{field_name}: the file name must be a plain name (no folders, no control characters)",
                       field=field_name)
    if not name.lower().endswith(EXTENSIONS[kind]):
        raise ApiError(f"{field_name}: a {'multiple-choice' if kind == 'mcq' else 'question-answering'} dataset "
                       f"is a {' or '.join(EXTENSIONS[kind])} file", field=field_name)
    return name


def check_name(raw: str | None, filename: str) -> str:
    name = " ".join((raw or "").split()) or filename.rsplit(".", 1)[0]
    if len(name) > MAX_NAME_CHARS:
        raise ApiError(f"name: at most {MAX_NAME_CHARS} characters", field="name")
    if any(unicodedata.category(c)[0] == "C" for c in name):
        raise ApiError("name: control characters are not allowed", field="name")
    return name


def read_limited(stream: BinaryIO, settings: dict[str, Any], field_name: str) -> bytes:
    limit = int(settings["max_dataset_bytes"])
    data = stream.read(limit + 1)
    if len(data) > limit:
        line = data[:limit].count(b"\n") + 1
        raise _refuse(field_name, f"the file is larger than the {limit:,} bytes allowed "
                      "(evaluations.max_dataset_bytes); this line passes the limit", line=line, status=413,
                      code="too_large")
    return data


def upload(kind: str | None, name: str | None, file: Any, dev_file: Any,
           settings: dict[str, Any]) -> tuple[EvalDataset, bool]:
    """Validate and store an upload (werkzeug ``FileStorage`` objects, ``dev_file`` may be None)."""
    kind = (kind or "").strip()
    if kind not in KINDS:
        raise ApiError(f"kind: one of {', '.join(KINDS)}", field="kind")
    if file is None:
        raise ApiError("file: required (a multipart field named 'file')", field="file")
    filename = check_filename(file.filename, kind, "file")
    dataset_name = check_name(name, filename)
    dev_filename = None
    dev_data = None
    if dev_file is not None and (dev_file.filename or "").strip():
        if kind != "mcq":
            raise ApiError("dev_file: few-shot files are for multiple-choice datasets only", field="dev_file")
        dev_filename = check_filename(dev_file.filename, kind, "dev_file")
    data = read_limited(file.stream, settings, "file")
    if dev_filename is not None:
        dev_data = read_limited(dev_file.stream, settings, "dev_file")
    parsed = parse(kind, data, filename, dev_data, dev_filename)
    return store(parsed, dataset_name, filename, dev_filename, settings)


def register_bundled(settings: dict[str, Any]) -> list[EvalDataset]:
    """Store the bundled datasets (idempotent: the same content is the same row)."""
    rows = []
    for spec in BUNDLED:
        dev_path = BUNDLED_DIR / spec.dev_file if spec.dev_file else None
        parsed = parse(spec.kind, (BUNDLED_DIR / spec.file).read_bytes(), spec.file,
                       dev_path.read_bytes() if dev_path else None, spec.dev_file)
        rows.append(store(parsed, spec.name, spec.file, spec.dev_file, settings, bundled=True)[0])
    return rows


# --- reading back -----------------------------------------------------------------------------------

def list_datasets() -> list[EvalDataset]:
    return list(db.session.scalars(
        db.select(EvalDataset).order_by(EvalDataset.bundled.desc(), EvalDataset.created_at.desc())).all())


def get_dataset(dataset_id: str) -> EvalDataset | None:
    if not re.fullmatch(r"[0-9a-f]{16}", dataset_id or ""):
        return None
    return db.session.get(EvalDataset, dataset_id)


def _bundled_spec(dataset: EvalDataset) -> Bundled | None:
    return next((spec for spec in BUNDLED if spec.file == dataset.filename and spec.kind == dataset.kind), None)


def stored_files(dataset: EvalDataset, settings: dict[str, Any]) -> Path:
    """The dataset's folder, checked against its hash; a bundled dataset's files are rewritten if lost."""
    folder = stored_dir(settings, dataset.id)
    names = [MCQ_EVAL_FILE, *([MCQ_DEV_FILE] if dataset.dev_items else [])] if dataset.kind == "mcq" else [QA_FILE]
    try:
        files = {name: (folder / name).read_bytes() for name in names}
    except OSError:
        files = {}
    if files and content_hash(dataset.kind, files) == dataset.content_hash:
        return folder
    spec = _bundled_spec(dataset) if dataset.bundled else None
    if spec is not None:
        register_bundled(settings)
        return folder
    raise DatasetFilesMissing(f"dataset {dataset.id} ({dataset.name}): its files in {folder} are missing or "
                              "changed; upload the file again")


def evalscope_dir(dataset: EvalDataset, settings: dict[str, Any] | None = None,
                  few_shot: int | None = None) -> tuple[Path, dict[str, Any]]:
    """The folder to hand to evalscope and the ``--dataset-args`` mapping (keyed by benchmark name).

    MCQ: ``{"general_mcq": {"local_path": folder, "subset_list": ["default"], "few_shot_num": n}}`` where
    ``n`` is ``few_shot`` or, when None, ``min(5, dev items)`` (0 without a dev file); QA:
    ``{"general_qa": {"local_path": folder, "subset_list": ["default"]}}``. Raises ``DatasetFilesMissing``
    when the stored files are gone or no longer match the dataset's hash, ``ValueError`` for more shots
    than the dev file holds.
    """
    settings = settings or settings_from_app()
    folder = stored_files(dataset, settings)
    args: dict[str, Any] = {"local_path": str(folder), "subset_list": [SUBSET]}
    if dataset.kind == "mcq":
        shots = min(DEFAULT_FEW_SHOT, dataset.dev_items) if few_shot is None else few_shot
        if not 0 <= shots <= dataset.dev_items:
            raise ValueError(f"few_shot: between 0 and {dataset.dev_items} (the dataset's few-shot items)")
        args["few_shot_num"] = shots
    return folder, {BENCHMARKS[dataset.kind]: args}


def read_items(dataset: EvalDataset, settings: dict[str, Any], dev: bool = False) -> list[dict[str, Any]]:
    folder = stored_files(dataset, settings)
    name = (MCQ_DEV_FILE if dev else MCQ_EVAL_FILE) if dataset.kind == "mcq" else QA_FILE
    if dev and (dataset.kind != "mcq" or not dataset.dev_items):
        return []
    text = (folder / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line]


def preview(dataset: EvalDataset, settings: dict[str, Any], rows: int | None = None) -> dict[str, Any]:
    """The first rows, the counts and the answer distribution (or reference lengths) of a dataset."""
    count = int(settings.get("preview_rows", 10)) if rows is None else rows
    items = read_items(dataset, settings)
    letters = [letter for letter in LETTERS if any(letter in item for item in items)] if dataset.kind == "mcq" \
        else []
    return {"dataset": dataset.as_dict(), "rows": items[:count], "shown": min(count, len(items)),
            "items": dataset.items, "dev_items": dataset.dev_items, "letters": letters,
            "dev_rows": read_items(dataset, settings, dev=True)[:count]}


# --- evalscope's built-in benchmarks, where the machine has their data ---------------------------------

# name -> (ModelScope dataset id, Hugging Face dataset id), as evalscope 1.14's adapters declare them.
BUILTIN = {
    "gsm8k": ("AI-ModelScope/gsm8k", "openai/gsm8k"),
    "mmlu": ("cais/mmlu", "cais/mmlu"),
    "arc": ("allenai/ai2_arc", "allenai/ai2_arc"),
    "ceval": ("evalscope/ceval", "ceval/ceval-exam"),
    "cmmlu": ("evalscope/cmmlu", None),
    "hellaswag": ("evalscope/hellaswag", "Rowan/hellaswag"),
    "math_500": ("AI-ModelScope/MATH-500", "HuggingFaceH4/MATH-500"),
    "truthful_qa": ("evalscope/truthful_qa", "truthfulqa/truthful_qa"),
    "humaneval": ("opencompass/humaneval", "openai/openai_humaneval"),
}


def _cache_candidates(modelscope_id: str, hf_id: str | None, environ: dict[str, str]) -> list[Path]:
    home = Path(environ.get("HOME") or os.path.expanduser("~"))
    modelscope = Path(environ.get("MODELSCOPE_CACHE") or home / ".cache" / "modelscope" / "hub")
    candidates = [modelscope / "datasets" / modelscope_id, modelscope / "datasets" / modelscope_id.replace("/", "___")]
    if hf_id:
        hf_home = Path(environ.get("HF_HOME") or home / ".cache" / "huggingface")
        hub = Path(environ.get("HF_HUB_CACHE") or hf_home / "hub")
        datasets_cache = Path(environ.get("HF_DATASETS_CACHE") or hf_home / "datasets")
        candidates += [hub / f"datasets--{hf_id.replace('/', '--')}", datasets_cache / hf_id.replace("/", "___")]
    return candidates


def _has_files(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(path.is_file() for path in folder.rglob("*"))
    except OSError:
        return False


def builtin_benchmarks(environ: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Each listed benchmark with ``available`` and, when not, the plain reason; reads only the disk."""
    env = dict(os.environ if environ is None else environ)
    found = []
    for name, (modelscope_id, hf_id) in BUILTIN.items():
        candidates = _cache_candidates(modelscope_id, hf_id, env)
        hit = next((path for path in candidates if _has_files(path)), None)
        entry: dict[str, Any] = {"name": name, "available": hit is not None, "path": str(hit) if hit else None,
                                 "reason": None}
        if hit is None:
            sources = modelscope_id + (f" or {hf_id}" if hf_id and hf_id != modelscope_id else "")
            entry["reason"] = (f"not available offline: no local copy of {sources} in the ModelScope or "
                               "Hugging Face cache (download it once on a machine with network access)")
        found.append(entry)
    return found
