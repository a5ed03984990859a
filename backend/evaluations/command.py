"""The ``evalscope eval`` argument list for an evaluation job (never a shell string) and where its files go.

One process per job runs every cell in turn (``backend.evaluations.evalscope_entry``): each cell is a
group ``--pep-cell=<n> eval --flag=value ...`` with its own ``--work-dir``. Every value is passed as
``--flag=value`` so that a value starting with ``-`` cannot become an option; JSON values are built
with ``json.dumps`` from validated data, never pasted from a request. Keys never appear here: the worker
passes them in the environment (``PEP_CELL_API_KEY_<n>``, ``PEP_JUDGE_API_KEY``).

evalscope's request defaults retry a failing sample 5 times 10 s apart (about 47 s per sample against an
unreachable server, and the OpenAI client retries twice more inside each); here both are bounded:
``retries`` (``evaluations.retries``) ``retry_interval`` (``evaluations.retry_interval_s``), the client's own
retries off (``--model-args={"max_retries": 0}``) and a per-request ``timeout``.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.config import resolve_path

ENTRY_MODULE = "backend.evaluations.evalscope_entry"
BEDROCK_EVAL_TYPE = "pep_bedrock"  # backend.evaluations.bedrock_model_api (not imported here: it imports evalscope)
MODEL_DIR = "model"  # --model-id: the folder evalscope writes each cell's predictions and reviews under
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,199}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


class CommandError(RuntimeError):
    """The job cannot be turned into a command (a value that cannot be passed safely)."""


@dataclass(frozen=True)
class EvalPaths:
    """Everything on disk for one job, derived from its id and the configured roots only."""

    outputs_root: Path
    logs_root: Path
    job_id: str

    @property
    def output_dir(self) -> Path:
        return self.outputs_root / self.job_id

    @property
    def log_path(self) -> Path:
        return self.logs_root / f"{self.job_id}.log"

    def cell_dir(self, position: int) -> Path:  # the cell's --work-dir
        return self.output_dir / f"cell_{int(position)}"

    @property
    def marker(self) -> str:
        """An argument only this job's command line has (recovery re-attaches only to a pid that has it)."""
        return f"--work-dir={self.cell_dir(0)}"


def job_paths(settings: dict[str, Any], job_id: str) -> EvalPaths:
    if not job_id.isalnum():
        raise ValueError(f"bad job id {job_id!r}")
    return EvalPaths(resolve_path(settings["outputs_dir"]).resolve(), resolve_path(settings["logs_dir"]).resolve(),
                     job_id)


def _safe(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SAFE_VALUE.match(value):
        raise CommandError(f"{what} cannot be passed to evalscope: {value!r}")
    return value


def _url(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or any(c.isspace() for c in value):
        raise CommandError(f"{what} is not an http(s) URL: {value!r}")
    return value


def model_args(target: dict[str, Any]) -> list[str]:
    """``--model``, ``--eval-type`` and ``--api-url`` for a stored target (catalogue or manual)."""
    model_id = _safe(target["model_id"], "the model id")
    if target["provider"] == "bedrock":
        region = target.get("region") or ""
        if region and not _REGION.match(region):
            raise CommandError(f"not an AWS region: {region!r}")
        return [f"--model={model_id}", f"--eval-type={BEDROCK_EVAL_TYPE}", f"--api-url=bedrock://{region}"]
    return [f"--model={model_id}", "--eval-type=openai_api", f"--api-url={_url(target['chat_url'], 'the chat URL')}"]


def generation_config(params: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    return {"temperature": float(params["temperature"]), "max_tokens": int(params["max_tokens"]),
            "seed": int(params["seed"]), "timeout": int(params["timeout_s"]), "retries": int(params["retries"]),
            "retry_interval": int(settings["retry_interval_s"])}


def judge_config(judge: dict[str, Any], params: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """evalscope's typed ``--judge``: the LLM strategy with one judge whose ``api_url`` is always set (never a
    public hub); its key is added by the entry module from the environment."""
    if judge.get("provider") == "bedrock":
        entry: dict[str, Any] = {"model_id": _safe(judge["model_id"], "the judge's model id"),
                                 "eval_type": BEDROCK_EVAL_TYPE, "api_url": f"bedrock://{judge.get('region') or ''}"}
    else:
        entry = {"model_id": _safe(judge["model_id"], "the judge's model id"), "eval_type": "openai_api",
                 "api_url": _url(judge["chat_url"], "the judge's chat URL").removesuffix("/chat/completions"),
                 "api_key": "EMPTY", "model_args": {"max_retries": 0}}
    entry["generation_config"] = {"temperature": 0.0, "max_tokens": 512, "timeout": int(params["timeout_s"]),
                                  "retries": int(params["retries"]),
                                  "retry_interval": int(settings["retry_interval_s"])}
    return {"strategy": "llm", "models": [entry]}


# general_mcq's default prompt is evalscope's Chinese template (its answers are asked for in Chinese); our datasets and
# pages are English, so multiple choice is asked with evalscope's English single-answer template, copied
# verbatim from evalscope.utils.multi_choices.SINGLE_ANSWER_TEMPLATE (the web side never imports evalscope).
# With it evalscope extracts "ANSWER: B" (parse_answers); a dataset_args prompt_template wins over the default.
MCQ_TEMPLATE = ("Answer the following multiple choice question. The entire content of your response should be of "
                "the following format: 'ANSWER: [LETTER]' (without quotes) where [LETTER] is one of {letters}.\n\n"
                "{question}\n\n{choices}")


def cell_args(*, cell: dict[str, Any], params: dict[str, Any], settings: dict[str, Any], paths: EvalPaths,
              judge: dict[str, Any] | None) -> list[str]:
    """One cell's group: ``--pep-cell=<n> eval ...``. ``cell["dataset_args"]`` is what the dataset module
    gives evalscope for the dataset (``local_path``, ``subset_list``...), built from stored rows."""
    benchmark = _safe(cell["benchmark"], "the benchmark name")
    dataset_args = dict(cell.get("dataset_args") or {})
    dataset_args["few_shot_num"] = int(params.get("few_shot", 0))
    if benchmark == "general_mcq":
        dataset_args.setdefault("prompt_template", MCQ_TEMPLATE)
    if cell.get("evalscope_metrics"):
        dataset_args["metric_list"] = list(cell["evalscope_metrics"])
    args = [f"--pep-cell={int(cell['position'])}", "eval", *model_args(cell["target"]), f"--model-id={MODEL_DIR}",
            f"--datasets={benchmark}", "--dataset-args=" + json.dumps({benchmark: dataset_args}, sort_keys=True),
            "--generation-config=" + json.dumps(generation_config(params, settings), sort_keys=True),
            f"--repeats={int(params['repeats'])}", f"--eval-batch-size={int(params['batch_size'])}",
            f"--seed={int(params['seed'])}", f"--work-dir={paths.cell_dir(cell['position'])}", "--no-timestamp"]
    if cell["target"]["provider"] != "bedrock":
        args.append("--model-args=" + json.dumps({"max_retries": 0}))
    if params.get("limit") is not None:
        args.append(f"--limit={int(params['limit'])}")
    if judge is not None and cell.get("judged"):
        args.append("--judge=" + json.dumps(judge_config(judge, params, settings), sort_keys=True))
    return args


def build_command(*, job_id: str, cells: list[dict[str, Any]], params: dict[str, Any], settings: dict[str, Any],
                  judge: dict[str, Any] | None) -> list[str]:
    """The whole argument list: the entry module, then one group per cell still to run."""
    paths = job_paths(settings, job_id)
    args = [sys.executable, "-m", ENTRY_MODULE]
    for cell in cells:
        args += cell_args(cell=cell, params=params, settings=settings, paths=paths, judge=judge)
    return args
