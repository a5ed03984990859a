"""A stress test's system prompt and warm-up requests, through the real evalscope: what the target receives
(the simulator's /sim/requests, the local Bedrock server's recorded bodies), what is stored (warm-up never
counted), and the phases the worker reports on the way (evalscope starting, warm-up, pause between levels)."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.stress.evalscope_args import SYSTEM_FILE_FLAG, WARMUP_PER_SLOT_FLAG, bedrock_args
from backend.stress.evalscope_entry import SystemPromptError, take_entry_options, with_system
from tests.support.bedrock_server import BedrockServer
from tests.support.simulator import PROJECT_ROOT, SimulatorProcess
from tests.support.stress import SLOW_SIM_ARGS, ThreadWorker, job_of, make_app, wait_for

CHARS_PER_TOKEN = 4  # the simulator counts ceil(characters of every message / 4) input tokens


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(seed=3, extra_args=SLOW_SIM_ARGS) as sim:
        yield sim


def test_system_prompt_and_warmup_per_slot_reach_the_target_and_stay_out_of_the_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_sim: SimulatorProcess) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    app = make_app(tmp_path, slow_sim.port, poll_interval_s=0.1)
    worker = ThreadWorker(app)
    client = app.test_client()
    prompt = f"Describe a harbour at dawn ({time.time()})."
    system = "You are a terse assistant. Answer in one line."
    try:
        created = client.post("/api/v1/stress-tests", json={
            "model": "sim-fast", "concurrency": [1, 2], "requests": [2, 3], "prompt": prompt, "system": system,
            "warmup": "concurrency", "output_tokens": 20})
        assert created.status_code == 201, created.json
        job_id = created.json["id"]
        phases: list[str] = []

        def ended() -> dict | None:
            job = job_of(client, job_id)
            phase = job["progress"].get("phase")
            if phase and (not phases or phases[-1] != phase):
                phases.append(phase)
            return job if job["is_finished"] else None

        job = wait_for(ended, 90, "the job to end", interval=0.05)
    finally:
        worker.close()
    assert job["status"] == "completed", job
    assert job["params"]["system"] == system and job["params"]["warmup"] == "concurrency"

    # Every request the target saw: measured ones and one warm-up per slot at each level (1 + 2).
    seen = [r for r in slow_sim.requests() if r["prompt"] == prompt]
    assert len(seen) == 2 + 3 + 1 + 2
    # The system prompt went as its own message: the user message is the prompt alone, and the input
    # counts both texts.
    expected_tokens = math.ceil((len(system) + len(prompt)) / CHARS_PER_TOKEN)
    assert {r["input_tokens"] for r in seen} == {expected_tokens}
    assert expected_tokens > math.ceil(len(prompt) / CHARS_PER_TOKEN)

    # Warm-up requests are in no result: not in the per-level counts, not in evalscope's per-request file.
    assert [(lv["concurrency"], lv["requests"], lv["succeeded"]) for lv in job["levels"]] == [(1, 2, 2), (2, 3, 3)]
    assert [lv["avg_input_tokens"] for lv in job["levels"]] == [expected_tokens, expected_tokens]
    run_dir = Path(app.config["PEP"]["stress"]["outputs_dir"]) / job_id / job_id
    for level, count in ((1, 2), (2, 3)):
        with sqlite3.connect(run_dir / f"parallel_{level}_number_{count}" / "benchmark_data.db") as db:
            assert db.execute("SELECT count(*) FROM result").fetchone()[0] == count
    assert job["progress"]["processed"] == 5

    # What the page was told on the way, in order: a phase may pass too fast to be seen, never out of turn.
    order = iter(["starting", "warmup", "running", "pause", "warmup", "running", "finishing"])
    assert all(phase in order for phase in phases), phases  # a subsequence (``in`` consumes the iterator)
    assert phases[0] == "starting" and phases.count("warmup") == 2 and "pause" in phases, phases


@pytest.fixture
def bedrock(tmp_path: Path) -> Iterator[tuple[BedrockServer, dict[str, str]]]:
    with BedrockServer() as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({"AWS_ENDPOINT_URL_BEDROCK_RUNTIME": server.url, "AWS_ACCESS_KEY_ID": "AKIDTESTTESTTEST",
                    "AWS_SECRET_ACCESS_KEY": "test-secret-key", "AWS_EC2_METADATA_DISABLED": "true",
                    "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")})
        yield server, env


def test_bedrock_gets_the_system_prompt_in_converses_system_field(bedrock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, env = bedrock
    system = tmp_path / "system.txt"
    system.write_text("Answer like a pirate.", encoding="utf-8")
    outputs = tmp_path / "out"
    command = [sys.executable, "-m", "backend.stress.evalscope_entry", "perf", *bedrock_args("test.ok", "us-east-1"),
               "--prompt", "pangram please", "--number", "3", "--parallel", "2", "--max-tokens", "20",
               "--outputs-dir", str(outputs), "--no-timestamp", f"{SYSTEM_FILE_FLAG}={system}", WARMUP_PER_SLOT_FLAG]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=90,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # evalscope's own connection test sends "hello"; the benchmark's requests carry the prompt.
    bodies = [r.body for r in server.requests if r.model_id == "test.ok" and "pangram" in json.dumps(r.body)]
    assert len(bodies) == 3 + 2  # two warm-up requests at concurrency 2
    for body in bodies:
        assert body["system"] == [{"text": "Answer like a pirate."}]
        assert [(m["role"], m["content"]) for m in body["messages"]] == [("user", [{"text": "pangram please"}])]
    summary = json.loads((outputs / "test.ok" / "parallel_2_number_3" / "benchmark_summary.json").read_text())
    assert summary["Total Requests"] == 3 and summary["Success Requests"] == 3


def test_with_system_puts_a_system_message_first() -> None:
    chat = [{"role": "user", "content": "hi"}]
    assert with_system(chat, "be brief", chat_only=True) == [{"role": "system", "content": "be brief"}, *chat]
    assert chat == [{"role": "user", "content": "hi"}]  # not changed in place: evalscope reuses it
    assert with_system("hi", "be brief", chat_only=False) == [{"role": "system", "content": "be brief"},
                                                             {"role": "user", "content": "hi"}]
    with pytest.raises(SystemPromptError, match="chat completions endpoint"):
        with_system("hi", "be brief", chat_only=True)  # an OpenAI completions prompt has no roles


def test_entry_options_leave_evalscopes_own_arguments(tmp_path: Path) -> None:
    system = tmp_path / "system.txt"
    system.write_text("line one\nline two", encoding="utf-8")
    argv = ["perf", "--model=m", f"{SYSTEM_FILE_FLAG}={system}", WARMUP_PER_SLOT_FLAG, "--parallel", "1", "4"]
    rest, options = take_entry_options(argv)
    assert rest == ["perf", "--model=m", "--parallel", "1", "4"]
    assert options.system == "line one\nline two" and options.warmup_per_slot is True
    rest, options = take_entry_options(["perf", "--warmup-num=3"])
    assert rest == ["perf", "--warmup-num=3"] and options.system is None and options.warmup_per_slot is False
