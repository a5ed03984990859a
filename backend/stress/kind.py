"""The stress-test kind of job (``backend/jobs/kinds.py``): what only ``evalscope perf`` jobs need.

The worker (``backend/jobs/worker.py``) claims, starts, follows, cancels and recovers; this module says
how a stress job starts (secrets, dataset, tokenizer, a TCP test of the target, the command line), what
it records while it runs (progress, live samples, finished levels) and how it ends.

Status when evalscope ends (documented in the README):

- cancel requested -> ``cancelled`` (finished levels kept), unless it had already finished every level;
- exit code 0, every level has results, at least one request succeeded -> ``completed``, with
  ``failed_requests`` counting the failures (evalscope exits 0 even when requests fail);
- exit code 0 but no request succeeded -> ``failed``: "all N requests failed: <first reason>";
- exit code not 0 (or levels missing) -> ``failed`` with the first error evalscope logged or the log tail;
- the process vanished while no worker watched, and its outputs are incomplete -> ``interrupted``.

A job's process is recognised by ``--outputs-dir=<its output folder>`` in its command line. Ingestion is
idempotent: a level already stored (by this worker or by one that died) is never added again, and the
database's unique (job, position) constraint backs that up; a re-attached job whose evalscope ran every
request ends ``completed`` like a watched one (its exit code is unknown; ``progress.json`` says).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
import urllib3
from sqlalchemy import select

from backend.db import db
from backend.jobs.kinds import Context, Ending, Launch, Outcome, Refused, Running
from backend.jobs.process import child_env
from backend.providers.openai_compat import error_message
from backend.results.ingest import LevelRequests, merge_shards, pack_columns, read_level_file, store_requests
from backend.results.metrics import client_load, level_from_requests, over_window
from backend.security.targets import launch_problem
from backend.stress import secrets, spread
from backend.stress.artefacts import list_files
from backend.stress.command import CommandError, JobPaths, build_command, job_paths, shard_levels, share
from backend.stress.datasets import stored_path
from backend.stress.evalscope_args import token_source
from backend.stress.models import JobStatus, StressJob, StressLevel, StressSample
from backend.stress.outputs import (
    CLIENT_CPU_FILE,
    RequestStats,
    combined_requests,
    level_result,
    log_errors,
    read_json,
    read_progress,
    read_requests,
    tail,
)
from backend.stress.params import available_tokenizers
from backend.stress.shards import BARRIER_ENV, INDEX_ENV

log = logging.getLogger("backend.stress.kind")
_NO_USAGE_LOGGED = "Unable to retrieve usage information"  # evalscope perf's words
_NOTHING_PARSED_LOGGED = "Received empty response list"  # evalscope perf: not one event of an answer was read
_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")  # a traceback's last line


@dataclass
class StressState:
    """What the worker knows of one stress job while it follows it (``Running.state``)."""

    paths: JobPaths
    levels: list[int]
    counts: list[int]
    warmup: int | str = 0  # the job's warm-up setting: a count per level, or "concurrency"
    shards: int = 1  # load generators each level is split over (backend/stress/shards.py)
    ingested: set[int] = field(default_factory=set)
    last_rowid: dict[tuple[int, int], int] = field(default_factory=dict)  # (level index, shard)
    last_done: dict[int, int] = field(default_factory=dict)
    last_sample_at: float = field(default_factory=time.monotonic)
    # A shard job of a job spread over hosts (backend/stress/spread.py): that job's id, this shard's index,
    # how many shards; the levels whose common start this worker handed to evalscope; whether it waits.
    group_id: str | None = None
    shard_index: int = 0
    group_size: int = 1
    released: set[int] = field(default_factory=set)
    waiting: bool = False

    def shard_views(self) -> list[tuple[JobPaths, list[int], list[int]]]:
        """Each evalscope's paths, levels and request counts: the job's own when unsharded, else each shard's."""
        if self.shards == 1:
            return [(self.paths, self.levels, self.counts)]
        return [(self.paths.shard(index), [share(level, index, self.shards) for level in self.levels],
                 [share(count, index, self.shards) for count in self.counts]) for index in range(self.shards)]

    def level_dirs(self, index: int) -> list[Path]:
        """Level ``index``'s folder of every shard (one when unsharded)."""
        return [paths.level_dir(levels[index], counts[index]) for paths, levels, counts in self.shard_views()]


# A level's figures (level_result's shape), whether complete, its raw summary and percentiles, its requests
LevelFigures = tuple[dict[str, Any], bool, Any, Any, LevelRequests | None]


def connection_problem(url: str, timeout_s: float) -> str | None:
    """None when a TCP connection to the URL's host opens; otherwise a readable reason."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except TimeoutError:
        return f"cannot connect to {parsed.scheme}://{host}:{port}: no answer within {timeout_s:g} s"
    except OSError as exc:
        # A refused port and an unknown host read the same from outside (no port or name scanning);
        # the server log keeps which.
        log.warning("connection test of %s://%s:%s failed: %s", parsed.scheme, host, port, exc.strerror or exc)
        return f"cannot connect to {parsed.scheme}://{host}:{port}"


def diagnose(target: dict[str, Any], api_key: str | None, timeout_s: float = 5.0, *,
             stream: bool = False) -> str | None:
    """One small request to learn why requests failed (evalscope does not log HTTP errors, nor a stream it
    could not read). The answer is read only as far as needed, within about ``timeout_s`` in all: an error's
    JSON message from its first 4 KB (a 10 MB error page is never held in memory), a stream event by event."""
    if target.get("provider") != "openai" or not target.get("chat_url"):
        return None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body: dict[str, Any] = {"model": target["model_id"], "messages": [{"role": "user", "content": "hello"}],
                            "max_tokens": 1}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    deadline = time.monotonic() + timeout_s
    try:
        response = requests.post(target["chat_url"], json=body, headers=headers, timeout=timeout_s, stream=True)
        with response:
            if not response.ok:
                raw = b""
                with contextlib.suppress(TimeoutError):  # a trickle: what came in time
                    for piece in _pieces(response, deadline):
                        raw += piece
                        if len(raw) >= _ERROR_BYTES:
                            break
                return error_message(response.status_code, raw[:_ERROR_BYTES], response.reason or "")
            if "text/event-stream" in response.headers.get("Content-Type", ""):
                try:
                    return _stream_problem(_pieces(response, deadline))
                except TimeoutError:  # not read to its end in time: nothing to say
                    return None
            return None
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        return f"{type(exc).__name__}: {exc}"


_ERROR_BYTES = 4096  # of an error answer: its JSON message is at the start
_PROBE_BYTES = 1_000_000  # of a streamed answer to a one-token request


def _pieces(response: requests.Response, deadline: float) -> Iterator[bytes]:
    """The body as it arrives (a trickle too); TimeoutError beyond ``deadline`` or ``_PROBE_BYTES``."""
    read = 0
    while piece := response.raw.read1(65536, decode_content=True):
        read += len(piece)
        if read > _PROBE_BYTES or time.monotonic() > deadline:
            raise TimeoutError
        yield piece


def _stream_problem(pieces: Iterator[bytes]) -> str | None:
    """What is wrong with a chat-completions event stream: an event that is not JSON (not echoed, like any
    body that is not a JSON error), an error sent in the stream, or no usage chunk; None when it is sound."""
    buffer, usage = b"", False
    for piece in pieces:
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return None if usage else _NO_USAGE
            try:
                event = json.loads(data)
            except ValueError:
                return "the endpoint's stream is malformed: an event's data is not JSON (not shown)"
            if not isinstance(event, dict):
                return "the endpoint's stream is malformed: an event's data is not a JSON object"
            if event.get("error") is not None or event.get("object") == "error":
                message = error_message(200, data, "").removeprefix("HTTP 200: ")
                return f"the endpoint's stream reported an error: {message}"
            usage = usage or isinstance(event.get("usage"), dict)
    return None if usage else _NO_USAGE


_NO_USAGE = "the endpoint's stream carries no usage chunk (token counts)"


def _host_shard(job: StressJob) -> tuple[int, int] | None:
    """(index, count) of a shard job of a job spread over hosts; None for any other job."""
    value = (job.params or {}).get("host_shard")
    return (int(value[0]), int(value[1])) if value else None


def _state(job: StressJob, ctx: Context) -> StressState:
    """What the worker follows of ``job``: its levels (a host shard's: its part of each), its folders."""
    params = dict(job.params)
    paths = job_paths(ctx.settings, job.id)
    levels, counts = list(params["concurrency"]), list(params["requests"])
    host_shard = _host_shard(job)
    state = StressState(paths=paths, levels=levels, counts=counts, warmup=params.get("warmup", 0),
                        shards=int(params.get("shards", 1)))
    if host_shard is not None:
        index, count = host_shard
        state.paths = paths.shard(index)
        state.levels, state.counts = shard_levels(params, index, count)
        state.group_id, state.shard_index, state.group_size = job.parent_id, index, count
    return state


def stored_positions(job_id: str) -> set[int]:
    """The level positions of a job that already have a result row."""
    return set(db.session.scalars(select(StressLevel.position).where(StressLevel.job_id == job_id)))


def api_key(job: StressJob, ctx: Context) -> str | None:
    if job.api_key_encrypted:
        return secrets.decrypt(ctx.config["server"]["secret_key"], job.api_key_encrypted)
    env_name = job.target.get("api_key_env")
    return os.environ.get(env_name) if env_name else None


class StressKind:
    """``evalscope perf`` sweeps: rows ``stress_jobs``, settings ``stress.*``."""

    name = "stress"
    model = StressJob
    section = "stress"

    # -- starting --

    def prepare(self, job: StressJob, ctx: Context) -> Launch:
        settings = ctx.settings
        paths = job_paths(settings, job.id)
        params, target = dict(job.params), dict(job.target)
        try:
            key = api_key(job, ctx)
        except secrets.SecretUnavailable as exc:
            raise Refused(str(exc)) from None
        dataset_file = None
        if params.get("dataset_file"):
            dataset_file = stored_path(settings, params["dataset_file"], params["dataset"])
            if not dataset_file.is_file():
                raise Refused(f"the uploaded dataset {params['dataset_file']} is gone")
        tokenizer_dir = None
        if params.get("tokenizer"):
            tokenizer_dir = available_tokenizers(settings).get(params["tokenizer"])
            if tokenizer_dir is None:
                raise Refused(f"the tokenizer {params['tokenizer']!r} is no longer configured")
        if target.get("provider") == "openai":
            # Checked again here: the name may resolve elsewhere since the job was created (DNS rebinding).
            problem = launch_problem(target["chat_url"], ctx.config, trusted=target.get("kind") != "manual")
            if problem:
                raise Refused(problem)
            problem = connection_problem(target["chat_url"], min(float(params["connect_timeout_s"]),
                                                                 float(settings["connect_check_timeout_s"])))
            if problem:
                raise Refused(problem)
        shards = int(params.get("shards", 1))
        host_shard = _host_shard(job)
        try:
            commands = [build_command(job_id=job.id, target=target, params=params, settings=settings,
                                      tokenizer_dir=tokenizer_dir, dataset_file=dataset_file,
                                      shard=(index, shards) if shards > 1 else host_shard)
                        for index in range(shards)]
        except CommandError as exc:
            raise Refused(str(exc)) from None

        paths.output_dir.mkdir(parents=True, exist_ok=True)
        paths.logs_root.mkdir(parents=True, exist_ok=True)
        if params["dataset"] == "prompt":
            paths.prompt_path.write_text(params["prompt"], encoding="utf-8")
            if params.get("system"):
                paths.system_path.write_text(params["system"], encoding="utf-8")
        extra = {"PYTHONUNBUFFERED": "1", "EVALSCOPE_HEARTBEAT_INTERVAL": str(int(settings["log_progress_s"]))}
        if key:
            extra[secrets.ENV_VAR] = key
        if host_shard is not None:  # its evalscope waits at each level for the start relayed from the database
            paths.barrier_dir.mkdir(parents=True, exist_ok=True)
            extra.update({BARRIER_ENV: str(paths.barrier_dir), INDEX_ENV: str(host_shard[0])})
        checked = "the connection test passed; " if target.get("provider") == "openai" else ""
        if shards == 1:
            command = commands[0]
            header = ("$ " + shlex.join(command[1:]) + "\n"
                      f"# {checked}starting evalscope (loading it takes a few seconds)\n")
        else:
            spec = {"commands": commands, "barrier": str(paths.barrier_dir), "levels": len(params["concurrency"])}
            paths.shards_spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
            command = [sys.executable, "-m", "backend.stress.shards", str(paths.shards_spec_path),
                       f"--outputs-dir={paths.output_dir}"]
            header = "".join(f"$ [shard {index}] " + shlex.join(shard[1:]) + "\n"
                             for index, shard in enumerate(commands))
            header += f"# {checked}starting {shards} evalscope shards (loading them takes a few seconds)\n"
        state = _state(job, ctx)
        return Launch(command=command, log_path=paths.log_path, env=child_env(extra, drop=(secrets.ENV_VAR,)),
                      state=state, header=header, program="evalscope")

    # -- recovery --

    def recover_state(self, job: StressJob, ctx: Context) -> StressState:
        state = _state(job, ctx)
        state.ingested = stored_positions(job.id)  # a start already agreed is handed to evalscope again: the same
        return state

    # A job spread over hosts is never run itself: its shard jobs are (backend/stress/spread.py). The worker
    # claims and recovers only rows that meet ``runnable``, and takes at most one job of a ``group``.
    @staticmethod
    def runnable() -> Any:
        return StressJob.host_shards.is_(None)

    @staticmethod
    def group() -> Any:
        return StressJob.parent_id

    def quick(self, running: Running) -> bool:
        """Whether the worker should tick quickly: a shard waits for a start relayed through the database."""
        return bool(running.state.waiting)

    def process_marker(self, job: StressJob, state: StressState, ctx: Context) -> str:
        return f"--outputs-dir={state.paths.output_dir}"

    def log_path(self, job: StressJob, ctx: Context) -> Path:  # copied into the database (jobs/logs.py)
        return job_paths(ctx.settings, job.id).log_path

    def artifact_files(self, job: StressJob, ctx: Context) -> list[tuple[str, Path]]:
        """What the files route lists, copied to ``storage.artifacts`` at the end (jobs/storage.py)."""
        return [(found.name, found.path) for found in list_files(job.id, dict(ctx.settings))]

    # -- following --

    def update(self, job: StressJob, running: Running, ctx: Context) -> None:
        state: StressState = running.state
        if state.group_id is not None:
            state.waiting = spread.relay(state.group_id, state.shard_index, state.group_size,
                                         state.paths.barrier_dir, state.released, len(state.levels))
        self._record_progress(job, running)
        self._ingest_levels(running, final=False)

    @staticmethod
    def _current_level(state: StressState) -> int | None:
        """Index of the level running now: the last of the sweep's level directories that exists (of a
        sharded job, the lowest such level of its shards; None until every shard has begun)."""
        current = None
        for paths, levels, counts in state.shard_views():
            found = None
            for index, (level, count) in enumerate(zip(levels, counts, strict=True)):
                if paths.level_dir(level, count).is_dir():
                    found = index
            if found is None:
                return None
            current = found if current is None else min(current, found)
        return current

    def _record_progress(self, job: StressJob, running: Running) -> None:
        """Progress and a live sample, from progress.json and the current level's per-request database.

        evalscope rewrites progress.json at most once a second and only when a request ends, so the last
        requests of a level would stay invisible through the pause between levels; the per-request
        database is committed after every request (``--db-commit-interval=1``) and counts them at once.
        """
        state: StressState = running.state
        index = self._current_level(state)
        total = sum(state.counts)
        # Never backwards: progress.json lags (once a second at most), and a new level's folder exists before
        # its per-request database does, when every earlier level is done. A sharded job's figures are
        # its shards' summed (each shard's own progress.json and per-request database).
        processed_now = 0
        read: list[tuple[int, RequestStats]] = []
        for shard, (paths, levels, counts) in enumerate(state.shard_views()):
            progress = read_progress(paths.progress_path)
            done = progress.processed if progress else 0
            if index is not None:
                done = max(done, sum(counts[:index]))
                shard_stats = read_requests(paths.level_dir(levels[index], counts[index]) / "benchmark_data.db",
                                            state.last_rowid.get((index, shard), 0))
                if shard_stats is not None:
                    done = max(done, sum(counts[:index]) + shard_stats.done)
                    read.append((shard, shard_stats))
            processed_now += done
        processed = max(processed_now, int((job.progress or {}).get("processed") or 0))
        stats = (read[0][1] if len(read) == 1 and state.shards == 1
                 else combined_requests([shard_stats for _, shard_stats in read]))
        data = {"percent": round(100.0 * processed / total, 2) if total else 0.0,
                "level": (index + 1) if index is not None else 0, "levels": len(state.levels),
                "concurrency": state.levels[index] if index is not None else None,
                "processed": processed, "total": total, **self._phase(state, index, stats)}
        if data != job.progress:
            job.progress = data
        if index is None or stats is None or stats.done == state.last_done.get(index, -1):
            return
        now = time.monotonic()
        window = max(now - state.last_sample_at, 1e-3)
        db.session.add(StressSample(job_id=job.id, t=round(time.time() - running.wall_started, 3),
                                    level=state.levels[index], processed=processed,
                                    ok=stats.ok, errors=stats.errors, ttft_ms=stats.window_ttft_ms,
                                    latency_s=stats.window_latency_s,
                                    output_tokens_per_s=round(stats.window_output_tokens / window, 3)))
        for shard, shard_stats in read:
            state.last_rowid[(index, shard)] = shard_stats.last_rowid
        state.last_done[index] = stats.done
        state.last_sample_at = now

    @staticmethod
    def _phase(state: StressState, index: int | None, stats: Any) -> dict[str, Any]:
        """What evalscope is doing, for the page: ``starting`` (loading, before its first level),
        ``warmup`` (the level's warm-up requests, which are never counted, with how many),
        ``first`` (no request of the level has ended yet), ``running``, ``pause`` (between levels)
        and ``finishing`` (after the last level, writing its reports)."""
        if index is None:
            return {"phase": "starting"}
        level = state.levels[index]
        if all((directory / "benchmark_summary.json").exists() for directory in state.level_dirs(index)):
            return {"phase": "pause" if index < len(state.levels) - 1 else "finishing"}
        if stats is not None and stats.done > 0:
            return {"phase": "running"}
        # warm-up per slot: each shard warms its own slots, the level's concurrency in all
        warmup = level if state.warmup == "concurrency" else int(state.warmup or 0) * state.shards
        return {"phase": "warmup", "warmup": warmup} if warmup else {"phase": "first"}

    def _ingest_levels(self, running: Running, *, final: bool) -> None:
        """Result rows for levels whose summary, percentile and client CPU files are written (a sharded
        job's: every shard's), each level once, with the level's per-request rows in the same transaction.
        When the job has ended (``final``), a level cut short (no summary) gets a row computed from the
        requests it finished, marked partial.

        ``state.ingested`` is what this worker knows to be stored; before a level is added, the
        database is asked too (a worker that re-attached, or one that died after its commit), and the
        unique (job, position) constraint refuses whatever slips past both.
        """
        state: StressState = running.state
        stored: set[int] | None = None
        for index, (level, count) in enumerate(zip(state.levels, state.counts, strict=True)):
            if index in state.ingested:
                continue
            directories = state.level_dirs(index)
            if not final and not all((directory / CLIENT_CPU_FILE).exists() for directory in directories):
                continue  # written right after the level's own files: its client CPU comes with the row
            figures = (self._level_figures(directories[0], final) if state.shards == 1
                       else self._sharded_level_figures(directories, final))
            if figures is None:
                continue
            result, complete, summary, percentiles, requests = figures
            client = [read_json(directory / CLIENT_CPU_FILE) for directory in directories]
            if any(isinstance(record, dict) for record in client):
                result["metrics"] = {**result["metrics"], "client": client_load(client)}
            if stored is None:
                stored = stored_positions(running.job_id)
            if index in stored:
                state.ingested.add(index)
                continue
            row = StressLevel(job_id=running.job_id, position=index, concurrency=level,
                              requests=result["requests"] or count, succeeded=result["succeeded"],
                              failed=result["failed"], duration_s=result["duration_s"],
                              req_per_s=result["req_per_s"],
                              output_tokens_per_s=result["output_tokens_per_s"],
                              total_tokens_per_s=result["total_tokens_per_s"],
                              avg_input_tokens=result["avg_input_tokens"],
                              avg_output_tokens=result["avg_output_tokens"], metrics=result["metrics"],
                              raw_summary=summary if complete else {},
                              raw_percentiles=(percentiles or []) if complete else [], complete=complete)
            db.session.add(row)
            if requests is None and state.shards == 1:
                requests = read_level_file(directories[0] / "benchmark_data.db")
            if requests is not None:
                row.request_columns = pack_columns(requests.rows)
                store_requests(db.session, running.job_id, index, requests.rows)
                if state.group_id is not None:  # merged with the other hosts' shards: on the wall clock
                    row.metrics = {**row.metrics, "origin_wall_s": spread.wall_origin(requests.origin, client[0])}
                    row.gap_columns = spread.pack_gaps(requests.gaps_ms)
            state.ingested.add(index)

    @staticmethod
    def _level_figures(directory: Path, final: bool) -> LevelFigures | None:
        """An unsharded level's figures: evalscope's summary and percentiles when both are written (or, at the
        end, the summary alone); at the end, a level without summary from its requests, partial; else None."""
        summary = read_json(directory / "benchmark_summary.json")
        percentiles = read_json(directory / "benchmark_percentile.json")
        if isinstance(summary, dict) and (percentiles is not None or final):
            return (level_result(summary, percentiles if isinstance(percentiles, list) else None), True, summary,
                    percentiles, None)
        if final and (requests := read_level_file(directory / "benchmark_data.db")) is not None and requests.rows:
            return level_from_requests(requests.rows, requests.gaps_ms), False, summary, percentiles, requests
        return None

    @staticmethod
    def _sharded_level_figures(directories: list[Path], final: bool) -> LevelFigures | None:
        """A sharded level's figures from the merged per-request rows of its shards: percentiles of the union
        (never averaged), throughput over the window in which every shard ran. Complete when every shard's
        summary and percentile files are written; at the end, whatever the shards have, partial."""
        summaries = [read_json(directory / "benchmark_summary.json") for directory in directories]
        percentiles = [read_json(directory / "benchmark_percentile.json") for directory in directories]
        complete = all(isinstance(summary, dict) for summary in summaries) and all(
            isinstance(rows, list) for rows in percentiles)
        if not complete and not final:
            return None
        parts = [part for directory in directories
                 if (part := read_level_file(directory / "benchmark_data.db")) is not None]
        if not complete and not any(part.rows for part in parts):
            return None
        if complete and len(parts) < len(directories):
            complete = False  # a shard's per-request file is unreadable: not the whole level
        requests, window = merge_shards(parts)
        result = level_from_requests(requests.rows, requests.gaps_ms)
        if window is not None and complete:
            result = over_window(result, requests.rows, window)
        return (result, complete, {"shards": summaries},
                [{"shard": index, "percentiles": rows} for index, rows in enumerate(percentiles)], requests)

    # -- ending --

    def conclude(self, job: StressJob, running: Running, ctx: Context, ending: Ending) -> Outcome:
        state: StressState = running.state
        exit_code, interrupted_reason = ending.exit_code, ending.interrupted_reason
        self._record_progress(job, running)
        self._ingest_levels(running, final=True)
        db.session.flush()
        levels = db.session.scalars(select(StressLevel).where(StressLevel.job_id == job.id)).all()
        succeeded = sum(level.succeeded for level in levels)
        failed = sum(level.failed for level in levels)
        requested = sum(level.requests for level in levels)
        all_levels = {level.position for level in levels if level.complete} == set(range(len(state.levels)))
        progresses = [read_progress(paths.progress_path) for paths, _, _ in state.shard_views()]
        ran_to_end = exit_code == 0 or (exit_code is None and interrupted_reason is None and all(
            progress is not None and progress.status == "completed" for progress in progresses))
        values: dict[str, Any] = {"failed_requests": failed}
        source = self._token_source(state)
        if source:
            values["token_source"] = source
        if ending.timed_out:
            status, error = JobStatus.FAILED, f"stopped after stress.max_job_s ({ctx.settings['max_job_s']} s)"
        elif job.cancel_requested and not (ran_to_end and all_levels):
            status, error = JobStatus.CANCELLED, "cancelled by request"
        elif ran_to_end and all_levels:
            if succeeded == 0:
                status, error = JobStatus.FAILED, f"all {requested} requests failed: {self._failure_reason(job, ctx)}"
            elif (unread := self._unreadable_answers(levels, state, job, ctx)) is not None:
                status, error = JobStatus.FAILED, unread
            else:
                status, error = JobStatus.COMPLETED, None
        elif exit_code is None:
            status = JobStatus.INTERRUPTED
            error = interrupted_reason or "the evalscope process ended while no worker was watching it"
        elif ran_to_end:
            stored = {level.position for level in levels if level.complete}
            missing = [str(level) for i, level in enumerate(state.levels) if i not in stored]
            status, error = JobStatus.FAILED, f"evalscope ended without results for concurrency {', '.join(missing)}"
        else:
            reason = self._log_reason(state, job, ctx)
            status, error = JobStatus.FAILED, f"evalscope exited with code {exit_code}: {reason}"
        job_progress = dict(job.progress or {})
        if status is JobStatus.COMPLETED:
            job_progress.update(percent=100.0, processed=job_progress.get("total"))
        values["progress"] = job_progress
        return Outcome(status=status, error=error, values=values)

    @staticmethod
    def _token_source(state: StressState) -> str | None:
        try:
            return token_source(state.paths.output_dir)
        except (OSError, ValueError):  # no outputs yet: keep what the job says
            return None

    @staticmethod
    def _failure_reason(job: StressJob, ctx: Context) -> str:
        paths = job_paths(ctx.settings, job.id)
        shards = int(dict(job.params).get("shards", 1))
        runs = [paths] if shards == 1 else [paths.shard(index) for index in range(shards)]
        logged = next((found for run in runs if (found := log_errors(run.run_dir / "benchmark.log"))), None) \
            or log_errors(paths.log_path)
        if logged:
            return logged[0]
        try:
            key = api_key(job, ctx)
        except secrets.SecretUnavailable:
            key = None
        return diagnose(dict(job.target), key) or "evalscope reported no reason"

    @staticmethod
    def _unreadable_answers(levels: list[StressLevel], state: StressState, job: StressJob,
                            ctx: Context) -> str | None:
        """evalscope counts an answer none of whose events it could parse as a success with 0 tokens (and
        logs only that the list was empty): when no level has a single output token and it said so, the
        figures measure nothing, and the job fails naming why."""
        if any(level.avg_output_tokens for level in levels):
            return None
        first_run = state.shard_views()[0][0].run_dir  # shard 0's when sharded
        logged = [*tail(first_run / "benchmark.log", 400), *tail(state.paths.log_path, 400)]
        if not any(_NOTHING_PARSED_LOGGED in line for line in logged):
            return None
        try:
            key = api_key(job, ctx)
        except secrets.SecretUnavailable:
            key = None
        probe = diagnose(dict(job.target), key, stream=bool(dict(job.params).get("stream", True)))
        counted = sum(level.succeeded for level in levels)
        return (f"no answer could be read: {probe or 'evalscope parsed no event of any answer'} "
                f"(evalscope logged '{_NOTHING_PARSED_LOGGED}'); the {counted} requests it counted as "
                "answered carry no tokens, so their figures measure nothing")

    @staticmethod
    def _log_reason(state: StressState, job: StressJob, ctx: Context) -> str:
        logged = log_errors(state.paths.log_path)
        if logged and _NO_USAGE_LOGGED in logged[-1]:
            # evalscope found no usage chunk and has no tokenizer; it does not say why (a stream it could
            # not parse, events that are not JSON, are skipped silently): a probe of the endpoint may.
            try:
                key = api_key(job, ctx)
            except secrets.SecretUnavailable:
                key = None
            probe = diagnose(dict(job.target), key, stream=bool(dict(job.params).get("stream", True)))
            cause = probe or "the endpoint's answers carry no usage (token counts)"
            return (f"{cause}; with no tokenizer set, evalscope could not count tokens "
                    f"({logged[-1][:500]})")
        if logged:
            return logged[-1]
        last = tail(state.paths.log_path, 40)
        # An uncaught exception (no ERROR line): its traceback's last line says what happened, e.g.
        # "OSError: [Errno 28] No space left on device", clearer than the frames above it.
        raised = [line.strip() for line in last if _RAISED.match(line)]
        if raised:
            return raised[-1][:1500]
        return " | ".join(last[-8:])[-1500:] or "no output"
