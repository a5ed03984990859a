"""The evaluation kind of job (``backend/jobs/kinds.py``): what only ``evalscope eval`` jobs need.

The worker claims, starts, follows, cancels and recovers; this module says how an evaluation starts
(datasets resolved to their stored folders, a TCP test of every endpoint, keys into the environment, the
command line), what it records while it runs (each cell's progress and accuracy so far from its growing
predictions and reviews files; a cell ingested as soon as evalscope has finished it) and how it ends.

Cells run one after the other in one process (``backend.evaluations.evalscope_entry``). Statuses:

- a cell our entry module marked ``ok`` -> its samples and metrics are ingested -> ``completed``; if a
  metric it asked for cannot be computed, ``failed`` with that reason (the other metrics are kept);
- a cell marked ``error`` -> ``failed`` with evalscope's exception (an unreachable endpoint fails fast: the
  worker's TCP test, then evalscope's bounded retries);
- a cell cut short: ``cancelled`` (cancel requested) or ``interrupted`` (the process died), with the
  samples it had scored stored and their metrics computed over those (n says how many);
- the job: ``cancelled`` when cancel was requested before every cell ended; ``completed`` when every cell
  completed; ``failed`` when one failed ("1 of 4 cells failed: <reason>"), completed cells kept;
  ``interrupted`` when the process vanished unwatched before every cell ended.
"""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from backend.db import db
from backend.evaluations import command as commands
from backend.evaluations.evalscope_entry import CELL_KEY_ENV, JUDGE_KEY_ENV, OFFLINE_ENV
from backend.evaluations.ingest import ingest_cell, normalise
from backend.evaluations.models import CellStatus, EvaluationCell, EvaluationJob, EvaluationSample
from backend.evaluations.outputs import CellFiles, cell_status, follow_cell, log_errors, primary_value, tail
from backend.evaluations.params import metrics_for
from backend.jobs.kinds import Context, Ending, Launch, Outcome, Refused, Running
from backend.jobs.models import JobStatus, utcnow
from backend.jobs.process import child_env
from backend.security.targets import launch_problem
from backend.stress import secrets
from backend.stress.kind import connection_problem

log = logging.getLogger("backend.evaluations.kind")

# What the live accuracy reads from a review line, per primary metric (exact match is ours: at ingestion).
LIVE_KEYS = {"acc": "accuracy", "rouge_l": "Rouge-L-F", "judge": "acc"}


def live_value(primary: str | None) -> Any:
    """How the accuracy so far reads a review line: evalscope's own value, or our exact match (computed the
    way ingestion computes it) for QA."""
    if primary == "exact_match":
        def exact(record: dict[str, Any]) -> float | None:
            score = ((record.get("sample_score") or {}).get("score") or {})
            target = record.get("target")
            reference = ", ".join(map(str, target)) if isinstance(target, list) else target
            if reference is None:
                return None
            prediction = score.get("extracted_prediction") or score.get("prediction")
            return float(normalise(prediction) == normalise(str(reference)))
        return exact
    key = LIVE_KEYS.get(primary) if primary else None
    return lambda record: primary_value(record, key)


@dataclass
class EvalState:
    """What the worker knows of one evaluation job while it follows it (``Running.state``)."""

    paths: commands.EvalPaths
    cells: dict[int, dict[str, Any]]  # position -> {benchmark, kind, metrics, seed}
    files: dict[int, CellFiles] = field(default_factory=dict)
    ingested: set[int] = field(default_factory=set)


def _cell_metrics(cell: EvaluationCell, params: dict[str, Any], has_judge: bool) -> list[str]:
    if cell.dataset_kind == "builtin":
        return []  # its own main score, named by evalscope (read at ingestion)
    return metrics_for(cell.dataset_kind, params.get("metrics"), has_judge)


def _state(job: EvaluationJob, settings: dict[str, Any]) -> EvalState:
    params = dict(job.params)
    has_judge = bool((job.target or {}).get("judge"))
    cells = {cell.position: {"benchmark": cell.benchmark, "kind": cell.dataset_kind,
                             "metrics": _cell_metrics(cell, params, has_judge)} for cell in job.cells}
    return EvalState(paths=commands.job_paths(settings, job.id), cells=cells)


def _key_for(target: dict[str, Any], job: EvaluationJob, ctx: Context) -> str | None:
    if target.get("kind") == "manual":
        if not job.api_key_encrypted:
            return None
        return secrets.decrypt(ctx.config["server"]["secret_key"], job.api_key_encrypted)
    env_name = target.get("api_key_env")
    return os.environ.get(env_name) if env_name else None


def _dataset_args(cell: EvaluationCell, params: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """What evalscope is told about the cell's dataset: B's ``evalscope_dir`` for a stored one, checked
    against its content hash; for a built-in benchmark, its cache checked again (nothing waits on a hub)."""
    from backend.evaluations import datasets

    if cell.dataset_kind == "builtin":
        found = {b["name"]: b for b in datasets.builtin_benchmarks()}.get(cell.dataset_id)
        if found is None or not found["available"]:
            raise ValueError((found or {}).get("reason") or f"not available offline: {cell.dataset_id}")
        return {}
    dataset = datasets.get_dataset(cell.dataset_id)
    if dataset is None:
        raise ValueError(f"the dataset {cell.dataset_id} is gone")
    if dataset.content_hash != cell.dataset_hash:
        raise ValueError(f"the dataset {cell.dataset_id} changed since the job was created")
    few_shot = int(params.get("few_shot", 0)) if dataset.kind == "mcq" else None
    _folder, mapping = datasets.evalscope_dir(dataset, settings, few_shot=few_shot)
    return dict(mapping[cell.benchmark])


def _finish_cell(cell: EvaluationCell, status: CellStatus, error: str | None = None) -> None:
    cell.status = status.value
    cell.error = error
    cell.finished_at = cell.finished_at or utcnow()


class EvaluationKind:
    """``evalscope eval`` over models x datasets: rows ``evaluation_jobs``, settings ``evaluations.*``."""

    name = "evaluation"
    model = EvaluationJob
    section = "evaluations"

    # -- starting --

    def prepare(self, job: EvaluationJob, ctx: Context) -> Launch:
        settings = dict(ctx.settings)
        params = dict(job.params)
        judge = (job.target or {}).get("judge")
        state = _state(job, settings)
        runnable: list[dict[str, Any]] = []
        env: dict[str, str] = {"PYTHONUNBUFFERED": "1", **OFFLINE_ENV}
        problems: dict[str, str | None] = {}

        def reachable(target: dict[str, Any]) -> str | None:
            if target.get("provider") != "openai":
                return None
            url = target["chat_url"]
            if url not in problems:
                # Checked again at launch: the name may resolve elsewhere since the job was created.
                problems[url] = (launch_problem(url, ctx.config, trusted=target.get("kind") != "manual")
                                 or connection_problem(url, float(settings["connect_check_timeout_s"])))
            return problems[url]

        judge_problem = reachable(judge) if judge else None
        first_reason = None
        for cell in job.cells:
            target = dict(cell.target)
            reason = reachable(target)
            if reason is None and judge_problem and state.cells[cell.position]["metrics"].count("judge"):
                reason = f"the judge {judge.get('name')}: {judge_problem}"
            try:
                dataset_args = _dataset_args(cell, params, settings) if reason is None else {}
                key = _key_for(target, job, ctx) if reason is None else None
            except (ValueError, RuntimeError, secrets.SecretUnavailable) as exc:
                reason = str(exc)
            if reason is not None:
                _finish_cell(cell, CellStatus.FAILED, reason)
                state.ingested.add(cell.position)
                first_reason = first_reason or reason
                continue
            if key:
                env[f"{CELL_KEY_ENV}{cell.position}"] = key
            metrics = state.cells[cell.position]["metrics"]
            runnable.append({"position": cell.position, "benchmark": cell.benchmark, "target": target,
                             "dataset_args": dataset_args, "judged": "judge" in metrics,
                             "evalscope_metrics": ["Rouge"] if cell.dataset_kind == "qa" else None})
        if not runnable:
            raise Refused(first_reason or "the job has no cell to run")
        if judge:
            judge_key = _key_for(judge, job, ctx)
            if judge_key:
                env[JUDGE_KEY_ENV] = judge_key
        try:
            command = commands.build_command(job_id=job.id, cells=runnable, params=params, settings=settings,
                                             judge=judge)
        except commands.CommandError as exc:
            raise Refused(str(exc)) from None
        state.paths.output_dir.mkdir(parents=True, exist_ok=True)
        state.paths.logs_root.mkdir(parents=True, exist_ok=True)
        header = ("$ " + shlex.join(command[1:]) + "\n"
                  f"# {len(runnable)} of {len(job.cells)} cells to run; starting evalscope "
                  "(loading it takes a few seconds)\n")
        secret_names = [name for name in os.environ if name.startswith(CELL_KEY_ENV)] + [JUDGE_KEY_ENV]
        return Launch(command=command, log_path=state.paths.log_path, env=child_env(env, drop=secret_names),
                      state=state, header=header, program="evalscope")

    # -- recovery --

    def recover_state(self, job: EvaluationJob, ctx: Context) -> EvalState:
        state = _state(job, dict(ctx.settings))
        state.ingested = {cell.position for cell in job.cells if cell.cell_status.is_finished}
        return state

    def process_marker(self, job: EvaluationJob, state: EvalState, ctx: Context) -> str:
        return state.paths.marker

    def log_path(self, job: EvaluationJob, ctx: Context) -> Path:  # copied into the database (jobs/logs.py)
        return commands.job_paths(dict(ctx.settings), job.id).log_path

    # -- following --

    def update(self, job: EvaluationJob, running: Running, ctx: Context) -> None:
        state: EvalState = running.state
        params = dict(job.params)
        for cell in job.cells:
            if cell.position in state.ingested:
                continue
            directory = state.paths.cell_dir(cell.position)
            verdict = cell_status(directory)
            if verdict is not None:
                self._ingest(cell, directory, state, params, verdict)
                continue
            if not directory.exists():
                continue
            info = state.cells[cell.position]
            primary = info["metrics"][0] if info["metrics"] else None
            files = follow_cell(directory, state.files.setdefault(cell.position, CellFiles()), live_value(primary))
            if cell.status == CellStatus.QUEUED.value:
                cell.status, cell.started_at = CellStatus.RUNNING.value, utcnow()
            live = {"answered": files.answered, "reviewed": files.reviewed, "metric": primary,
                    "score_so_far": round(files.score_sum / files.scored, 6) if files.scored else None,
                    "scored": files.scored}
            if cell.done != files.answered:
                cell.done = files.answered
            if live != cell.live:
                cell.live = live
        self._progress(job)

    def _ingest(self, cell: EvaluationCell, directory: Path, state: EvalState, params: dict[str, Any],
                verdict: dict[str, Any] | None, cut: CellStatus | None = None) -> None:
        """Store a cell's samples and metrics; ``verdict`` from our entry module, or ``cut`` when it never
        finished (cancelled or interrupted)."""
        info = state.cells[cell.position]
        metrics = list(info["metrics"])
        if cell.dataset_kind == "builtin":
            metrics = _builtin_metric(directory, cell.benchmark)
        result = ingest_cell(db.session, cell, directory, metrics, seed=int(params.get("seed", 0)),
                             item_ids=_item_ids(cell)) if metrics else None
        if result is not None:
            cell.metrics = result.metrics
            cell.primary_metric = metrics[0]
            cell.done = max(cell.done or 0, result.samples * int(params.get("repeats", 1)))
            if result.judge.calls:
                cell.judge_input_tokens = result.judge.input_tokens
                cell.judge_output_tokens = result.judge.output_tokens
                cell.judge_cost = _judge_cost(cell, result.judge.input_tokens, result.judge.output_tokens)
        if cut is not None:
            _finish_cell(cell, cut, "cancelled by request" if cut is CellStatus.CANCELLED
                         else "the evalscope process ended before this cell finished")
        elif verdict is not None and verdict.get("status") == "error":
            _finish_cell(cell, CellStatus.FAILED, str(verdict.get("error") or "evalscope failed"))
        elif result is None:
            _finish_cell(cell, CellStatus.FAILED, f"{cell.benchmark}: evalscope wrote no scored sample")
        elif result.error:
            _finish_cell(cell, CellStatus.FAILED, result.error)
        else:
            _finish_cell(cell, CellStatus.COMPLETED)
        state.ingested.add(cell.position)
        log.info("evaluation cell %s/%d %s", cell.job_id, cell.position, cell.status)

    @staticmethod
    def _progress(job: EvaluationJob) -> None:
        cells = job.cells
        done = sum(cell.done or 0 for cell in cells)
        total = sum(cell.total or 0 for cell in cells)
        finished = sum(1 for cell in cells if cell.cell_status.is_finished)
        current = next((cell.position for cell in cells if cell.status == CellStatus.RUNNING.value), None)
        data = {"percent": round(100.0 * min(done, total) / total, 2) if total else 0.0, "done": done,
                "total": total, "cells": len(cells), "cells_finished": finished, "current_cell": current}
        if data != job.progress:
            job.progress = data

    # -- ending --

    def abandon(self, job: EvaluationJob, ctx: Context) -> dict[str, Any]:
        """Its worker's host is gone (its lease expired): the cells it had scored stay; the others end
        interrupted, from the rows alone (that host's files are out of reach)."""
        for cell in job.cells:
            if not cell.cell_status.is_finished:
                _finish_cell(cell, CellStatus.INTERRUPTED, "its worker's host stopped before the cell ended")
        db.session.flush()
        self._progress(job)
        return {"progress": dict(job.progress)}

    def conclude(self, job: EvaluationJob, running: Running, ctx: Context, ending: Ending) -> Outcome:
        self.update(job, running, ctx)
        state: EvalState = running.state
        params = dict(job.params)
        cancelled = bool(job.cancel_requested)
        for cell in job.cells:
            if cell.position in state.ingested:
                continue
            cut = CellStatus.CANCELLED if cancelled else CellStatus.INTERRUPTED
            if ending.exit_code is not None and not cancelled:
                cut = CellStatus.FAILED
            directory = state.paths.cell_dir(cell.position)
            if cut is CellStatus.FAILED:
                self._ingest(cell, directory, state, params, {"status": "error", "error": self._log_reason(state)})
            else:
                self._ingest(cell, directory, state, params, None, cut=cut)
        db.session.flush()
        cells = job.cells
        failed = [cell for cell in cells if cell.status == CellStatus.FAILED.value]
        values: dict[str, Any] = {"failed_requests": len(failed)}
        self._progress(job)
        values["progress"] = dict(job.progress)
        all_done = all(cell.status == CellStatus.COMPLETED.value for cell in cells)
        if cancelled and not all_done:
            return Outcome(JobStatus.CANCELLED, "cancelled by request", values)
        if any(cell.status == CellStatus.INTERRUPTED.value for cell in cells):
            reason = ending.interrupted_reason or "the evalscope process ended while no worker was watching it"
            return Outcome(JobStatus.INTERRUPTED, reason, values)
        if failed:
            return Outcome(JobStatus.FAILED, f"{len(failed)} of {len(cells)} cells failed: {failed[0].error}", values)
        return Outcome(JobStatus.COMPLETED, None, values)

    @staticmethod
    def _log_reason(state: EvalState) -> str:
        logged = log_errors(state.paths.log_path)
        if logged:
            return logged[-1][:1500]
        return " | ".join(tail(state.paths.log_path, 8))[-1500:] or "evalscope ended without finishing the cell"


def _item_ids(cell: EvaluationCell) -> list[str] | None:
    """A stored dataset's item ids in file order (None for a built-in benchmark or a dataset gone)."""
    from flask import current_app

    from backend.evaluations import datasets

    if cell.dataset_kind == "builtin":
        return None
    dataset = datasets.get_dataset(cell.dataset_id)
    if dataset is None:
        return None
    try:
        items = datasets.read_items(dataset, current_app.config["PEP"]["evaluations"])
    except (OSError, ValueError, datasets.DatasetFilesMissing):
        return None
    return [str(item.get("id", index + 1)) for index, item in enumerate(items)]


def _builtin_metric(directory: Path, benchmark: str) -> list[str]:
    """A built-in benchmark's main score name, from its first review line."""
    from backend.evaluations.outputs import read_reviews

    for _subset, record in read_reviews(directory, benchmark):
        name = ((record.get("sample_score") or {}).get("score") or {}).get("main_score_name")
        if name:
            return [str(name)]
    return []


def _judge_cost(cell: EvaluationCell, input_tokens: int, output_tokens: int) -> float | None:
    """USD for the judge's tokens when it is a priced Bedrock model (config/pricing.yaml); None otherwise."""
    from flask import current_app

    from backend.results.cost import Pricing

    judge = (cell.job.target or {}).get("judge") or {}
    if judge.get("provider") != "bedrock":
        return None
    pricing = Pricing.load(current_app.config["PEP"]["results"]["pricing_file"])
    prices = pricing.bedrock.get(str(judge.get("key") or ""))
    if prices is None:
        return None
    return round((input_tokens * prices["input_per_m"] + output_tokens * prices["output_per_m"]) / 1e6, 6)


def samples_stored(cell_id: int) -> int:
    return int(db.session.scalar(select(func.count()).select_from(EvaluationSample)
                                 .where(EvaluationSample.cell_id == cell_id)) or 0)
