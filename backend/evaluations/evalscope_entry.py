"""Run evalscope's own ``eval`` command line once per cell of an evaluation job, in this one process.

    python -m backend.evaluations.evalscope_entry --pep-cell=0 eval <evalscope eval arguments> \
                                                  --pep-cell=1 eval <evalscope eval arguments> ...

Each group behaves like ``evalscope eval <arguments>`` (evalscope's ``run_cmd``, the function behind the
``evalscope`` console script); the groups run one after the other, so one job is one process (one process
group to cancel, one pid to re-attach to) while each model x dataset cell has its own ``--work-dir``. A cell
that fails does not stop the next one: the entry writes ``pep_status.json`` into the cell's work directory
(``{"status": "ok"}`` or ``{"status": "error", "error": "<the exception>"}``) and goes on; its exit status
is 0 only when every cell succeeded.

Before the first group:

1. **Offline.** ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE`` and ModelScope's offline switch are set, so
   nothing waits on a hub (the worker sets them too).
2. **Our Bedrock model API is registered** (``--eval-type=pep_bedrock``, see
   ``backend.evaluations.bedrock_model_api``).
3. **Keys come from the environment, never the command line.** ``PEP_CELL_API_KEY_<n>`` is the evaluated
   model's key for cell ``n`` (appended to that group as ``--api-key``) and ``PEP_JUDGE_API_KEY`` the judge's
   (put into the ``--judge`` JSON's models); every ``PEP_*_API_KEY*`` variable is removed from ``os.environ``
   first, so nothing this process starts inherits one, and ``/proc/<pid>/cmdline`` never holds one.
4. **A judged sample keeps its rule-based scores.** With ``--judge`` (strategy ``llm``) evalscope replaces a
   sample's scores by the judge's verdict (``acc``), so a QA cell would lose ROUGE-L. ``score_with_judge_contracts``
   of evalscope's judge mixin is wrapped: after the judge has scored, the adapter's own ``match_score`` runs
   too and its values (``Rouge-L-F``...) are added to the sample's score under their own names; the judge's
   value and its main score are left as they are.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

CELL_FLAG = "--pep-cell"
STATUS_FILE = "pep_status.json"
CELL_KEY_ENV = "PEP_CELL_API_KEY_"  # + the cell's position
JUDGE_KEY_ENV = "PEP_JUDGE_API_KEY"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "MODELSCOPE_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def split_groups(argv: list[str]) -> list[tuple[int, list[str]]]:
    """``[(cell, ["eval", ...]), ...]`` from the command line; each group starts with ``--pep-cell=<n>``."""
    groups: list[tuple[int, list[str]]] = []
    for arg in argv:
        if arg.startswith(CELL_FLAG + "="):
            groups.append((int(arg.split("=", 1)[1]), []))
        elif not groups:
            raise SystemExit(f"the command line must start with {CELL_FLAG}=<n>, not {arg!r}")
        else:
            groups[-1][1].append(arg)
    return groups


def take_keys(environ: dict[str, str] | os._Environ[str] = os.environ) -> tuple[dict[int, str], str | None]:
    """The cells' keys and the judge's, removed from ``environ``."""
    cells: dict[int, str] = {}
    for name in [name for name in environ if name.startswith(CELL_KEY_ENV)]:
        value = environ.pop(name)
        suffix = name.removeprefix(CELL_KEY_ENV)
        if suffix.isdigit() and value:
            cells[int(suffix)] = value
    judge = environ.pop(JUDGE_KEY_ENV, None) or None
    environ.pop("PEP_TARGET_API_KEY", None)
    return cells, judge


def with_keys(args: list[str], api_key: str | None, judge_key: str | None) -> list[str]:
    """A group's arguments with the keys put in (never logged: evalscope masks ``api_key`` in its config dump)."""
    out = []
    for arg in args:
        if judge_key and arg.startswith("--judge="):
            judge = json.loads(arg.split("=", 1)[1])
            for model in judge.get("models", []):
                model["api_key"] = judge_key
            arg = "--judge=" + json.dumps(judge)
        out.append(arg)
    if api_key:
        out.append(f"--api-key={api_key}")
    return out


def work_dir(args: list[str]) -> Path | None:
    for arg in args:
        if arg.startswith("--work-dir="):
            return Path(arg.split("=", 1)[1])
    return None


def write_status(directory: Path | None, status: dict[str, str]) -> None:
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status), encoding="utf-8")
    tmp.replace(path)


def run_group(args: list[str]) -> None:
    from evalscope.cli.cli import run_cmd

    sys.argv = ["evalscope", *args]
    try:
        run_cmd()
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise RuntimeError(f"evalscope exited with {exc.code}") from None


def keep_rule_scores() -> None:
    from evalscope.api.mixin.llm_judge_mixin import LLMJudgeMixin

    original = LLMJudgeMixin.score_with_judge_contracts
    if getattr(original, "_pep", False):
        return

    def score_with_judge_contracts(self, original_prediction, filtered_prediction, reference, task_state):  # type: ignore[no-untyped-def]
        score = original(self, original_prediction, filtered_prediction, reference, task_state)
        try:
            rule = self.match_score(original_prediction=original_prediction, filtered_prediction=filtered_prediction,
                                    reference=reference, task_state=task_state)
        except Exception as exc:
            score.metadata = {**(score.metadata or {}), "pep_rule_error": f"{type(exc).__name__}: {exc}"}
            return score
        for name, value in (rule.value or {}).items():
            score.value.setdefault(name, value)
        return score

    score_with_judge_contracts._pep = True  # type: ignore[attr-defined]
    LLMJudgeMixin.score_with_judge_contracts = score_with_judge_contracts  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    os.environ.update(OFFLINE_ENV)
    groups = split_groups(list(sys.argv[1:] if argv is None else argv))
    keys, judge_key = take_keys()
    import backend.evaluations.bedrock_model_api  # noqa: F401 - registers our model API with evalscope

    keep_rule_scores()

    failed = 0
    for cell, args in groups:
        directory = work_dir(args)
        print(f"# backend.evaluations.evalscope_entry: cell {cell} starting", flush=True)
        try:
            run_group(with_keys(args, keys.get(cell), judge_key))
        except BaseException as exc:  # one cell's failure must not stop the next
            if isinstance(exc, KeyboardInterrupt):
                raise
            failed += 1
            reason = failure_reason(exc)
            traceback.print_exc()
            write_status(directory, {"status": "error", "error": reason[:2000]})
            print(f"# backend.evaluations.evalscope_entry: cell {cell} failed: {reason[:500]}", flush=True)
            continue
        write_status(directory, {"status": "ok"})
        print(f"# backend.evaluations.evalscope_entry: cell {cell} finished", flush=True)
    return 1 if failed else 0


def failure_reason(exc: BaseException) -> str:
    """``Type: message``, followed by the causes it was raised from: the OpenAI client's
    "APIConnectionError: Connection error." says nothing until its cause does ("peer closed connection
    without sending complete message body (received 100 bytes, expected 500)")."""
    parts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < 4:
        seen.add(id(current))
        text = f"{type(current).__name__}: {current}".strip()
        if not parts or str(current) not in parts[-1]:
            parts.append(text)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return " <- ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
