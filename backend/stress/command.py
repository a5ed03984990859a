"""The ``evalscope perf`` argument list for a job (never a shell string) and where its files go.

Every value that came from a request is passed as ``--flag=value`` so that a value starting with ``-``
cannot become an option, and the prompt is passed as ``@file`` (a file we write in the job's output
directory) because evalscope reads ``--prompt @path`` as a file name: a prompt typed as ``@/etc/passwd``
must never make it read a server file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from backend.config import resolve_path
from backend.stress.evalscope_args import SYSTEM_FILE_FLAG, WARMUP_PER_SLOT_FLAG, bedrock_args

# The module that runs evalscope's CLI: it registers our Bedrock API plugin, applies the measurement
# fixes and reads the key from PEP_TARGET_API_KEY (backend/stress/evalscope_entry.py).
ENTRY_MODULE = "backend.stress.evalscope_entry"


class CommandError(RuntimeError):
    """The job cannot be turned into a command (missing plugin, missing file)."""


SHARD_SEED_BASE = 1  # shard i of a sharded job runs evalscope with --seed=SHARD_SEED_BASE + i


@dataclass(frozen=True)
class JobPaths:
    """Everything on disk for one job, derived from its id and the configured roots only.

    A sharded job (``params["shards"] > 1``) runs one evalscope per shard, each with its own outputs
    folder ``<job folder>/shard_<i>``: ``shard(i)`` is that shard's view (its run, level and progress
    files), sharing the job's folder, log and prompt files. An unsharded job has no shard folders."""

    outputs_root: Path
    logs_root: Path
    job_id: str
    shard_index: int | None = None

    def shard(self, index: int) -> JobPaths:
        return replace(self, shard_index=index)

    @property
    def job_dir(self) -> Path:  # the job's own folder (its --outputs-dir when unsharded)
        return self.outputs_root / self.job_id

    @property
    def output_dir(self) -> Path:  # --outputs-dir
        if self.shard_index is None:
            return self.job_dir
        return self.job_dir / f"shard_{self.shard_index}"

    @property
    def shards_spec_path(self) -> Path:  # what backend.stress.shards runs
        return self.job_dir / "shards.json"

    @property
    def barrier_dir(self) -> Path:  # the shards' ready.<level>.<shard> and go.<level> files
        return self.job_dir / "barrier"

    @property
    def run_dir(self) -> Path:  # evalscope writes <outputs-dir>/<--name>/
        return self.output_dir / self.job_id

    @property
    def log_path(self) -> Path:
        return self.logs_root / f"{self.job_id}.log"

    @property
    def prompt_path(self) -> Path:
        return self.job_dir / "prompt.txt"

    @property
    def system_path(self) -> Path:
        return self.job_dir / "system.txt"

    @property
    def progress_path(self) -> Path:
        return self.run_dir / "progress.json"

    def level_dir(self, concurrency: int, requests: int) -> Path:
        return self.run_dir / f"parallel_{concurrency}_number_{requests}"


def job_paths(settings: dict[str, Any], job_id: str) -> JobPaths:
    if not job_id.isalnum():
        raise ValueError(f"bad job id {job_id!r}")
    return JobPaths(resolve_path(settings["outputs_dir"]).resolve(), resolve_path(settings["logs_dir"]).resolve(),
                    job_id)


def _bedrock_args(model_id: str, region: str | None) -> list[str]:
    try:
        return bedrock_args(model_id, region or "")
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def dataset_path(settings: dict[str, Any], dataset_id: str, dataset_format: str) -> Path:
    from backend.stress.datasets import stored_path

    return stored_path(settings, dataset_id, dataset_format)


def warmup_args(warmup: int | str) -> list[str]:
    """evalscope's own ``--warmup-num`` for a fixed count; our entry module's flag for one per concurrency slot
    (evalscope takes one count for every level of a sweep)."""
    if warmup == "concurrency":
        return [WARMUP_PER_SLOT_FLAG]
    return [f"--warmup-num={int(warmup)}"] if int(warmup) > 0 else []


def share(total: int, index: int, count: int) -> int:
    """Shard ``index`` of ``count``'s part of ``total`` (concurrency or requests): the first ``total % count``
    shards take one more, so the parts add up to ``total``."""
    return total // count + (1 if index < total % count else 0)


def shard_levels(params: dict[str, Any], index: int, count: int) -> tuple[list[int], list[int]]:
    """The concurrency levels and request counts shard ``index`` of ``count`` runs."""
    return ([share(int(level), index, count) for level in params["concurrency"]],
            [share(int(number), index, count) for number in params["requests"]])


def build_command(*, job_id: str, target: dict[str, Any], params: dict[str, Any], settings: dict[str, Any],
                  tokenizer_dir: Path | None = None, dataset_file: Path | None = None,
                  shard: tuple[int, int] | None = None) -> list[str]:
    """The command of the job's evalscope, or with ``shard=(i, n)`` that of its shard i of n: its part of
    every level, its own seed and outputs folder."""
    paths = job_paths(settings, job_id)
    levels = [int(level) for level in params["concurrency"]]
    counts = [int(count) for count in params["requests"]]
    seed: list[str] = []
    if shard is not None:
        index, count = shard
        levels, counts = shard_levels(params, index, count)
        paths = paths.shard(index)
        seed = [f"--seed={SHARD_SEED_BASE + index}"]
    args = [sys.executable, "-m", ENTRY_MODULE, "perf", f"--model={target['model_id']}"]
    if target["provider"] == "bedrock":
        args += _bedrock_args(target["model_id"], target.get("region"))
    else:
        args += [f"--url={target['chat_url']}", "--api=openai"]
    args += ["--parallel", *map(str, levels), "--number", *map(str, counts)]
    args += [f"--max-tokens={int(params['output_tokens'])}"]
    if params.get("exact_output_tokens"):
        args += [f"--min-tokens={int(params['output_tokens'])}"]

    dataset = params["dataset"]
    if dataset == "prompt":
        args += [f"--prompt=@{paths.prompt_path}"]
        if params.get("system"):
            args += [f"{SYSTEM_FILE_FLAG}={paths.system_path}"]
    else:
        args += [f"--dataset={dataset}"]
    if dataset in ("random", "random_vl"):
        tokens = int(params["input_tokens"])
        args += [f"--min-prompt-length={tokens}", f"--max-prompt-length={tokens}"]
    if dataset == "random_vl":
        args += [f"--image-width={int(params['image_width'])}", f"--image-height={int(params['image_height'])}",
                 f"--image-num={int(params['image_count'])}"]
    if dataset_file is not None:
        args += [f"--dataset-path={dataset_file}"]
    if tokenizer_dir is not None:
        args += [f"--tokenizer-path={tokenizer_dir}"]

    args += ["--stream" if params.get("stream", True) else "--no-stream",
             f"--temperature={float(params.get('temperature', 0.0))}",
             f"--connect-timeout={int(params['connect_timeout_s'])}",
             f"--read-timeout={int(params['read_timeout_s'])}",
             f"--total-timeout={int(params['total_timeout_s'])}",
             # The worker tests the connection itself, quickly; evalscope's own test retries a failing
             # server every 10 s until --total-timeout.
             "--no-test-connection",
             f"--sleep-interval={int(settings['level_pause_s'])}",
             f"--outputs-dir={paths.output_dir}", "--no-timestamp", f"--name={job_id}",
             *warmup_args(params.get("warmup", 0)), *seed,
             "--enable-progress-tracker", "--db-commit-interval=1"]
    return args
