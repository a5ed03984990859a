"""The evalscope entry module: a real ``evalscope perf`` run through it, the API key path and the fixes."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.stress import evalscope_entry
from backend.stress.bedrock_plugin import BEDROCK_API, region_from_url
from tests.support.simulator import PROJECT_ROOT, SimulatorProcess

API_KEY = "sk-test-entry-0123456789abcdef"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in evalscope_entry.PROXY_ENV}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _level_dir(outputs: Path, model: str, parallel: int, number: int) -> Path:
    return outputs / model / f"parallel_{parallel}_number_{number}"


def test_entry_runs_evalscope_with_the_key_from_the_environment_only(tmp_path: Path) -> None:
    # sim-fast at 60 ms a step: 10 tokens take ~0.6 s, so the run lasts long enough to look at it.
    profile = "sim-fast:decode_base_ms=60,decode_ms_per_seq=0,min_output_tokens=10,max_output_tokens=10"
    with SimulatorProcess(extra_args=["--api-key", API_KEY, "--profile", profile]) as sim:
        outputs = tmp_path / "out"
        prompt = f"entry test {time.time()}"
        command = [
            sys.executable, "-m", "backend.stress.evalscope_entry", "perf",
            "--url", f"{sim.base_url}/chat/completions", "--model", "sim-fast", "--api", "openai",
            "--prompt", prompt, "--number", "4", "--parallel", "2", "--max-tokens", "10",
            "--outputs-dir", str(outputs), "--no-timestamp",
        ]  # fmt: skip
        log = (tmp_path / "run.log").open("wb")
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
            env=_clean_env(PEP_TARGET_API_KEY=API_KEY),
        )  # fmt: skip
        cmdlines: list[bytes] = []
        while process.poll() is None:
            try:
                cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
            except OSError:
                break
            if cmdline:  # empty once the process has exited and waits to be reaped
                cmdlines.append(cmdline)
            time.sleep(0.05)
        assert process.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()
        log.close()
        records = [r for r in sim.requests() if r["prompt"] == prompt]

    assert len(cmdlines) > 10, "the run ended before its command line could be read while running"
    assert all(API_KEY.encode() not in cmdline for cmdline in cmdlines)
    assert all(b"backend.stress.evalscope_entry" in cmdline for cmdline in cmdlines)
    # The simulator answers 401 without the key: four completed requests prove it arrived.
    assert len(records) == 4 and all(r["status"] == "completed" for r in records)
    level = _level_dir(outputs, "sim-fast", 2, 4)
    summary = json.loads((level / "benchmark_summary.json").read_text())
    assert summary["Success Requests"] == 4
    assert summary["Avg Output Tokens"] == 10
    assert (level / "benchmark_percentile.json").exists()
    written = "".join(
        p.read_text(errors="replace") for p in outputs.rglob("*") if p.suffix in (".json", ".log", ".txt")
    )
    assert API_KEY not in written
    benchmark_log = (outputs / "sim-fast" / "benchmark.log").read_text()
    assert f"{evalscope_entry.ENTRY_MARKER} (aiohttp trust_env=False" in benchmark_log
    assert evalscope_entry.token_source(outputs) == "server"


def test_take_api_key_appends_it_and_removes_the_variable() -> None:
    environ = {"PEP_TARGET_API_KEY": "k-1", "OTHER": "x"}
    assert evalscope_entry.take_api_key(["perf", "--model", "m"], environ) == [
        "perf",
        "--model",
        "m",
        "--api-key",
        "k-1",
    ]
    assert environ == {"OTHER": "x"}
    assert evalscope_entry.take_api_key(["perf"], {}) == ["perf"]


@pytest.fixture
def entry_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc here
    evalscope_entry.install()


def _session_trust_env() -> bool:
    from evalscope.perf.arguments import Arguments
    from evalscope.perf.core.http_client import AioHttpClient
    from evalscope.perf.plugin.api.openai_api import OpenaiPlugin

    args = Arguments(model="m", url="http://127.0.0.1:9/v1/chat/completions", prompt="p")
    args.parallel, args.number = 1, 1

    async def create() -> bool:
        async with AioHttpClient(args, OpenaiPlugin(args)) as client:
            return client.client.trust_env

    return asyncio.run(create())


@pytest.mark.usefixtures("entry_installed")
def test_env_lookups_are_skipped_without_a_proxy_and_gc_is_frozen() -> None:
    gc.unfreeze()
    assert _session_trust_env() is False
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("entry_installed")
@pytest.mark.parametrize("name", ["HTTPS_PROXY", "http_proxy", "ALL_PROXY", "no_proxy"])
def test_a_configured_proxy_keeps_evalscope_session_as_it_is(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "http://proxy.invalid:3128")
    assert _session_trust_env() is True


@pytest.mark.usefixtures("entry_installed")
def test_a_netrc_file_keeps_evalscope_session_as_it_is(tmp_path: Path) -> None:
    (tmp_path / ".netrc").write_text("machine example.com login a password b\n")
    assert _session_trust_env() is True


def test_bedrock_args_select_the_plugin() -> None:
    args = evalscope_entry.bedrock_args("anthropic.claude-3-haiku-20240307-v1:0", "us-west-2")
    assert args == [
        "--api", BEDROCK_API, "--model", "anthropic.claude-3-haiku-20240307-v1:0", "--url", "bedrock://us-west-2",
    ]  # fmt: skip


def test_bedrock_args_without_a_region_leave_it_to_boto3() -> None:
    assert evalscope_entry.bedrock_args("m", None)[-1] == "bedrock://"
    assert region_from_url("bedrock://") is None
    assert region_from_url("bedrock://eu-west-1") == "eu-west-1"


@pytest.mark.parametrize(
    ("model_id", "region"), [("", "us-east-1"), ("--url", "us-east-1"), ("a b", "us-east-1"), ("m", "x; rm"), ("m", "")]
)
def test_bedrock_args_reject_bad_values(model_id: str, region: str) -> None:
    with pytest.raises(ValueError):
        evalscope_entry.bedrock_args(model_id, region)


def _fake_run(root: Path, *, api: str = "openai", tokenizer: str | None = None, log: str = "") -> Path:
    level = root / "m" / "parallel_1_number_1"
    level.mkdir(parents=True)
    (level / "benchmark_args.json").write_text(json.dumps({"api": api, "tokenizer_path": tokenizer}))
    (root / "m" / "benchmark.log").write_text(log)
    return root


@pytest.mark.parametrize(
    ("api", "tokenizer", "log", "expected"),
    [
        ("openai", None, "", "server"),
        (BEDROCK_API, "/tok", "", "server"),
        ("openai", "/tok", evalscope_entry.ENTRY_MARKER, "server"),
        ("openai", "/tok", f"{evalscope_entry.ENTRY_MARKER}\n{evalscope_entry.TOKENIZER_MARKER}", "tokenizer"),
        ("openai", "/tok", "", "tokenizer"),  # plain evalscope with a tokenizer: not known, so not claimed
    ],
)
def test_token_source(tmp_path: Path, api: str, tokenizer: str | None, log: str, expected: str) -> None:
    assert evalscope_entry.token_source(_fake_run(tmp_path, api=api, tokenizer=tokenizer, log=log)) == expected
