"""A Bedrock-target stress test: the real evalscope, through our entry module and plugin, against real boto3
talking to a local server that speaks Bedrock's event-stream protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.stress.evalscope_entry import bedrock_args, token_source
from tests.support.bedrock_server import BedrockServer
from tests.support.simulator import PROJECT_ROOT

NUMBER, PARALLEL = 4, 2


@pytest.fixture
def bedrock(tmp_path: Path) -> Iterator[tuple[BedrockServer, dict[str, str]]]:
    with BedrockServer(slow_delay_s=0.05) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            {
                "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": server.url,
                "AWS_ACCESS_KEY_ID": "AKIDTESTTESTTEST",
                "AWS_SECRET_ACCESS_KEY": "test-secret-key",
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
                "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        yield server, env


def _run(env: dict[str, str], outputs: Path, model_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "backend.stress.evalscope_entry", "perf", *bedrock_args(model_id, "us-east-1"),
        "--prompt", "hello there", "--number", str(NUMBER), "--parallel", str(PARALLEL),
        "--outputs-dir", str(outputs), "--no-timestamp", *extra,
    ]  # fmt: skip
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def _summary(outputs: Path, model_id: str) -> dict:
    path = outputs / model_id / f"parallel_{PARALLEL}_number_{NUMBER}" / "benchmark_summary.json"
    return json.loads(path.read_text())


def test_a_bedrock_model_is_stress_tested_with_the_reported_usage(bedrock, tmp_path: Path) -> None:
    server, env = bedrock
    outputs = tmp_path / "out"
    result = _run(env, outputs, "test.ok", "--max-tokens", "50")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = _summary(outputs, "test.ok")
    assert summary["Success Requests"] == NUMBER and summary["Failed Requests"] == 0
    assert summary["Avg TTFT (ms)"] > 0
    assert summary["Avg Output Tokens"] == 9  # the server's usage: one token per delta, 9 deltas
    assert summary["Avg Input Tokens"] == 2  # "hello there", counted by the server
    assert summary["Avg TPOT (ms)"] > 5  # deltas are 10 ms apart
    calls = [r for r in server.requests if r.model_id == "test.ok"]
    assert len(calls) == NUMBER + 1  # and the connection test
    assert all(r.body["inferenceConfig"]["maxTokens"] == 50 for r in calls[1:])
    assert token_source(outputs) == "server"


def test_max_tokens_reaches_bedrock_and_counts_follow_its_usage(bedrock, tmp_path: Path) -> None:
    _server, env = bedrock
    outputs = tmp_path / "out"
    result = _run(env, outputs, "test.slow", "--max-tokens", "3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = _summary(outputs, "test.slow")
    assert summary["Success Requests"] == NUMBER
    assert summary["Avg Output Tokens"] == 3
    assert summary["Avg TPOT (ms)"] >= 40  # deltas are slow_delay_s (50 ms) apart


def test_a_throttled_model_gives_failed_requests_with_the_reason(bedrock, tmp_path: Path) -> None:
    _, env = bedrock
    outputs = tmp_path / "out"
    result = _run(env, outputs, "test.throttle", "--no-test-connection")
    assert result.returncode == 0  # evalscope's own convention when every request failed

    summary = _summary(outputs, "test.throttle")
    assert summary["Success Requests"] == 0 and summary["Failed Requests"] == NUMBER
    log = (outputs / "test.throttle" / "benchmark.log").read_text()
    assert "Bedrock request failed: throttled: ThrottlingException: Too many requests" in log


def test_a_denied_model_fails_the_connection_test_with_the_reason(bedrock, tmp_path: Path) -> None:
    _, env = bedrock
    outputs = tmp_path / "out"
    result = _run(env, outputs, "test.denied")
    assert result.returncode != 0
    log = (outputs / "test.denied" / "benchmark.log").read_text()
    assert "Non-retryable error (HTTP 403): auth: AccessDeniedException: You don't have access" in log
