"""The simulator's answering mode: it answers dataset items right with a set probability, on purpose.

A profile with ``behavior=answer`` holds an **answer key**: the items of the bundled datasets
(``backend/evaluations/bundled/``) plus any files or dataset folders named in its ``answer_files``
(``os.pathsep``-separated) or by ``--answers PATH``. Files are read as evalscope reads them: MCQ rows
``id, question, A.. , answer`` (CSV or JSON Lines), QA lines ``query``/``question`` with
``response``/``answer``, or ``messages`` (the last user message is the question). A folder contributes
every ``*.csv`` / ``*.jsonl`` under it except few-shot ``*_dev.*`` files, so ``--answers data/eval_datasets``
gives the key every stored dataset; a prompt the key does not know makes it re-read its files when they
changed (at most once a second), so a dataset uploaded while the simulator runs is known from then on.
A QA line without ``id`` is known by its item number (``"1"``, ``"2"``, ...), as
``backend/evaluations/datasets.py`` stores it.

**Finding the item.** evalscope's prompt embeds the question (``general_mcq``'s templates put it
after ``问题`` and a full-width colon or between the instruction and ``A)``; ``general_qa`` sends it
as it is or after ``请回答问题``). The prompt's question is looked up by normalised text (``normalise``:
NFKC, case-folded, whitespace collapsed); failing that, the item whose normalised question occurs
last in the normalised prompt is taken (few-shot examples come before the real question), the
longest on a tie.

**Right or wrong.** Item ``item_id`` is answered correctly iff

    int(sha256(f"{seed}:{item_id}".encode()).hexdigest()[:8], 16) / 2**32 < accuracy

so a test knows exactly which items each profile gets right. A wrong MCQ answer is the choice
``others[int(sha256(f"{seed}:{item_id}:wrong".encode()).hexdigest()[:8], 16) % len(others)]`` among
the other letters in order; a wrong QA answer is ``WRONG_QA_ANSWER``. The reply is in the form
evalscope's extraction reads: ``答案`` + full-width colon + ``B`` when the prompt asks for that form (general_mcq's
default Chinese template, ``parse_answers_zh``), else ``ANSWER: B`` (``parse_answers``); a QA reply is
the reference text itself. A prompt that matches no item gets ``UNKNOWN_ANSWER``, a sentence without
any capital A-J, so no letter is read from it.

**The judge** (``behavior=judge``) answers evalscope 1.14's LLM-judge prompts
(``evalscope/metrics/judge/llm_judge.py`` with the JSON reply contract of
``evalscope/api/judge/contracts.py``): for the reference-based template (``[Reference Answer]`` and
``[Predicted Answer]``) it replies ``{"reasoning": ..., "verdict": "A"}`` (A: CORRECT) iff
``normalise_answer(prediction) == normalise_answer(reference)``, else ``"B"``; for the numeric template
(``[Response]``, a 0-1 rating) it finds the question in its answer key and replies ``"score": 1.0``
when the response equals that item's reference after ``normalise_answer``, else ``0.0``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "evaluations" / "bundled"
LETTERS = "ABCDEFGHIJ"
WRONG_QA_ANSWER = "I do not know."
UNKNOWN_ANSWER = "that question is not in my answer key."

_MCQ_ZH_QUESTION = re.compile(r"问题\uff1a(.*?)\n选项\uff1a", re.S)
_MCQ_EN_QUESTION = re.compile(r"is (?:one|one or more) of [A-J](?:,[A-J])*\.(?: Think step by step before answering\.)?"
                              r"\n\n(.*?)\n\nA\) ", re.S)
_QA_QUESTION = re.compile(r"请回答问题\n(.*)\Z", re.S)
_CHINESE_FORMAT = re.compile(r"答案\uff1a\[LETTERS?\]")


@dataclass(frozen=True)
class Item:
    item_id: str
    kind: str  # mcq | qa
    question: str  # normalised
    answer: str  # the letter (mcq) or the reference text (qa)
    letters: tuple[str, ...] = ()


def normalise(text: str) -> str:
    """How prompts and questions are compared: NFKC, case-folded, runs of whitespace as one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def normalise_answer(text: str) -> str:
    """How the judge compares a prediction with a reference: ``normalise`` and then surrounding spaces,
    quotes and the punctuation ``.,;:!?`` stripped."""
    return normalise(text).strip(" .,;:!?\"'")


def draw(seed: int, item_id: str, salt: str = "") -> int:
    return int(hashlib.sha256(f"{seed}:{item_id}{salt}".encode()).hexdigest()[:8], 16)


def answers_correctly(seed: int, item_id: str, accuracy: float) -> bool:
    return draw(seed, item_id) / 2**32 < accuracy


def expected(item_ids: list[str], accuracy: float, seed: int) -> dict[str, bool]:
    """Documentation only: which of ``item_ids`` a profile answers right (tests recompute the formula)."""
    return {item_id: answers_correctly(seed, item_id, accuracy) for item_id in item_ids}


# --- reading answer keys ----------------------------------------------------------------------------

def _mcq_item(row: dict, fallback_id: str) -> Item | None:
    letters = []
    for letter in LETTERS:
        if row.get(letter) in (None, ""):
            break
        letters.append(letter)
    answer = str(row.get("answer", "")).strip().upper()
    if len(letters) < 2 or answer not in letters or not str(row.get("question", "")).strip():
        return None
    return Item(str(row.get("id") or fallback_id), "mcq", normalise(str(row["question"])), answer, tuple(letters))


def _qa_item(row: dict, fallback_id: str) -> Item | None:
    reference = row.get("response") or row.get("answer")
    question = row.get("query") or row.get("question")
    if not question and isinstance(row.get("messages"), list):
        users = [m.get("content") for m in row["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        question = users[-1] if users else None
    if not isinstance(question, str) or not isinstance(reference, str) or not question.strip():
        return None
    return Item(str(row.get("id") or fallback_id), "qa", normalise(question), reference.strip())


def _row_item(row: dict, number: int) -> Item | None:
    if "A" in row and "question" in row:
        return _mcq_item(row, str(number))
    return _qa_item(row, str(number))


def read_file(path: Path) -> list[Item]:
    items: list[Item] = []
    if path.suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows: list[dict] = list(csv.DictReader(handle))
    elif path.suffix == ".jsonl":
        rows = []
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            if line.strip():
                value = json.loads(line)
                if isinstance(value, dict):
                    rows.append(value)
    else:
        return items
    for number, row in enumerate(rows, 1):
        item = _row_item(row, number)
        if item is not None:
            items.append(item)
    return items


def dataset_files(paths: list[str | Path]) -> list[Path]:
    """The dataset files under ``paths``: a file as it is, a folder's ``*.csv`` / ``*.jsonl`` at any depth
    (the platform keeps one folder per dataset) except few-shot ``*_dev.*`` files and hidden or
    half-written folders."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            files.append(path)
            continue
        for found in sorted(path.rglob("*")):
            relative = found.relative_to(path).parts
            if found.suffix in (".csv", ".jsonl") and not found.stem.endswith("_dev") \
                    and not any(part.startswith(".") for part in relative) and found.is_file():
                files.append(found)
    return files


def read_paths(paths: list[str | Path]) -> list[Item]:
    items: list[Item] = []
    for file in dataset_files(paths):
        try:
            items.extend(read_file(file))
        except (OSError, ValueError, csv.Error):  # a file being replaced, or not a dataset: skip it
            continue
    return items


def split_paths(spec: str) -> list[str]:
    return [part for part in spec.split(os.pathsep) if part.strip()]


RESCAN_S = 1.0  # an unknown prompt re-reads the answer files at most this often, when they changed


class AnswerKey:
    """The items a profile knows, looked up from a prompt. A prompt it does not know makes it look again
    at its files (at most once a second, and only when the set of files or their times changed), so a
    dataset uploaded while the simulator runs joins the key."""

    def __init__(self, items: list[Item], paths: list[str | Path] = ()) -> None:  # type: ignore[assignment]
        self.paths = list(paths)
        self._set(items)
        self._stamp = self._files_stamp()
        self._checked = time.monotonic()

    def _set(self, items: list[Item]) -> None:
        self.items = items
        self._by_question: dict[str, Item] = {}
        for item in items:
            self._by_question.setdefault(item.question, item)

    @classmethod
    def load(cls, extra_paths: list[str | Path] = ()) -> AnswerKey:  # type: ignore[assignment]
        paths = [BUNDLED_DIR, *extra_paths]
        return cls(read_paths(paths), paths)

    def _files_stamp(self) -> tuple:
        stamp = []
        for file in dataset_files(self.paths):
            try:
                info = file.stat()
            except OSError:
                continue
            stamp.append((str(file), info.st_mtime_ns, info.st_size))
        return tuple(stamp)

    def refresh(self) -> bool:
        """Re-read the files if they changed (and a second has passed since the last look)."""
        now = time.monotonic()
        if not self.paths or now - self._checked < RESCAN_S:
            return False
        self._checked = now
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        self._set(read_paths(self.paths))
        return True

    def find(self, prompt: str) -> Item | None:
        item = self._find(prompt)
        if item is None and self.refresh():
            item = self._find(prompt)
        return item

    def _find(self, prompt: str) -> Item | None:
        for pattern in (_MCQ_ZH_QUESTION, _MCQ_EN_QUESTION, _QA_QUESTION):
            matches = pattern.findall(prompt)
            if matches and (item := self._by_question.get(normalise(matches[-1]))) is not None:
                return item
        if (item := self._by_question.get(normalise(prompt))) is not None:
            return item
        text = normalise(prompt)
        best: tuple[int, int] | None = None
        found = None
        for item in self.items:
            position = text.rfind(item.question)
            if position >= 0:
                rank = (position + len(item.question), len(item.question))
                if best is None or rank > best:
                    best, found = rank, item
        return found


def answer(key: AnswerKey, prompt: str, accuracy: float, seed: int) -> str:
    """The reply of an answering profile to ``prompt``."""
    item = key.find(prompt)
    if item is None:
        return UNKNOWN_ANSWER
    right = answers_correctly(seed, item.item_id, accuracy)
    if item.kind == "qa":
        return item.answer if right else WRONG_QA_ANSWER
    letter = item.answer
    if not right:
        others = [other for other in item.letters if other != item.answer]
        letter = others[draw(seed, item.item_id, ":wrong") % len(others)]
    return f"答案\uff1a{letter}" if _CHINESE_FORMAT.search(prompt) else f"ANSWER: {letter}"


# --- the judge --------------------------------------------------------------------------------------

_SECTION = re.compile(r"^\[(Question|Reference Answer|Predicted Answer|Response)\]\n", re.M)
_PATTERN_END = "\n\nEvaluate the model's answer based on correctness"
_CONTRACT = "\n\nReply with a single JSON object"


def _sections(prompt: str) -> dict[str, str]:
    """The judge prompt's sections, each the text up to the next known section (the last one up to the
    grading instructions or the reply contract)."""
    body = prompt.split(_CONTRACT, 1)[0]
    marks = list(_SECTION.finditer(body))
    sections: dict[str, str] = {}
    for index, mark in enumerate(marks):
        name = mark.group(1)
        if name in sections:  # a later "[Question]" inside a prediction is part of that prediction
            continue
        end = marks[index + 1].start() if index + 1 < len(marks) else len(body)
        sections[name] = body[mark.end():end]
    if "Predicted Answer" in sections:  # the prediction runs to the grading instructions, whatever it holds
        start = body.index("[Predicted Answer]\n", body.index("[Reference Answer]\n")) + len("[Predicted Answer]\n")
        sections["Predicted Answer"] = body[start:].rsplit(_PATTERN_END, 1)[0]
    if "Response" in sections:
        start = body.index("[Response]\n") + len("[Response]\n")
        sections["Response"] = body[start:]
    return {name: text.strip() for name, text in sections.items()}


def judge(key: AnswerKey, prompt: str) -> str | None:
    """The judge's JSON reply, or None when ``prompt`` is not one of evalscope's generic judge prompts."""
    if "[Reference Answer]\n" in prompt and "[Predicted Answer]\n" in prompt:
        sections = _sections(prompt)
        same = normalise_answer(sections.get("Predicted Answer", "")) == \
            normalise_answer(sections.get("Reference Answer", ""))
        return json.dumps({"reasoning": "the prediction equals the reference" if same
                           else "the prediction differs from the reference", "verdict": "A" if same else "B"})
    if "[Response]\n" in prompt and "[Question]\n" in prompt:
        sections = _sections(prompt)
        item = key.find(sections.get("Question", ""))
        same = item is not None and normalise_answer(sections.get("Response", "")) == normalise_answer(item.answer)
        reason = "the question is not in the answer key" if item is None else (
            "the response equals the reference" if same else "the response differs from the reference")
        return json.dumps({"reasoning": reason, "score": 1.0 if same else 0.0})
    return None
