"""What the web app and the worker need to know about our evalscope runs, without importing evalscope.

``backend.stress.evalscope_entry`` runs evalscope (importing it costs seconds and tens of MB); this
module holds the argument and output conventions both sides share.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

BEDROCK_API = "bedrock"  # the name our evalscope API plugin registers (backend/stress/bedrock_plugin.py)
API_KEY_ENV = "PEP_TARGET_API_KEY"  # how a key reaches the entry module: never on the command line
ENTRY_MARKER = "backend.stress.evalscope_entry: measurement fixes installed"
TOKENIZER_MARKER = "backend.stress.evalscope_entry: token counts from the tokenizer"
# Options of our entry module (removed from the command line before evalscope parses it):
SYSTEM_FILE_FLAG = "--pep-system-file"  # =<path>: every request starts with this file's text as a system message
WARMUP_PER_SLOT_FLAG = "--pep-warmup-per-slot"  # each level's --warmup-num is its concurrency
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")

TokenSource = Literal["server", "tokenizer"]


def bedrock_args(model_id: str, region: str | None) -> list[str]:
    """The evalscope ``perf`` arguments that send a run through our Bedrock plugin.

    ``region`` ``None`` leaves the region to boto3's usual chain (``AWS_REGION``, the profile...).
    Raises ``ValueError`` for a model id or region that cannot be one.
    """
    if not model_id or model_id.startswith("-") or any(ch.isspace() for ch in model_id):
        raise ValueError(f"not a Bedrock model id: {model_id!r}")
    if region is not None and not _REGION.match(region):
        raise ValueError(f"not an AWS region: {region!r}")
    return ["--api", BEDROCK_API, "--model", model_id, "--url", f"bedrock://{region or ''}"]


def token_source(output_dir: str | Path) -> TokenSource:
    """Where a finished (or partial) run's token counts came from, read from evalscope's outputs.

    ``output_dir`` is any directory above the run's ``benchmark.log`` and level directories (the
    ``--outputs-dir`` given to evalscope will do). Server usage is certain when the run used our
    Bedrock plugin (it counts only from Bedrock's reported usage) or had no tokenizer (evalscope
    fails a request without usage and without a tokenizer). With a tokenizer, evalscope uses it only
    for responses that carry no usage; a run through this module logs ``TOKENIZER_MARKER`` when that
    happens, so its absence means server usage. A plain evalscope run with a tokenizer leaves no such
    record, and counts as ``"tokenizer"``, the answer that cannot overstate what is known.
    """
    root = Path(output_dir)
    args_files = sorted(root.rglob("benchmark_args.json"))
    if not args_files:
        raise FileNotFoundError(f"no benchmark_args.json under {root}")
    args = [json.loads(path.read_text()) for path in args_files]
    if all(a.get("api") == BEDROCK_API or not a.get("tokenizer_path") for a in args):
        return "server"
    logs = "\n".join(path.read_text(errors="replace") for path in root.rglob("benchmark.log"))
    if TOKENIZER_MARKER in logs or ENTRY_MARKER not in logs:
        return "tokenizer"
    return "server"
