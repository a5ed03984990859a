"""Stress-test requests that must be refused, each with a 400 naming the field; presets; dataset uploads."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from backend.app import create_app
from tests.conftest import TEST_MODELS

BASE: dict[str, Any] = {"model": "sim-fast", "concurrency": [1, 2], "requests": [2, 4], "prompt": "hi"}


@pytest.fixture
def stress_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ENVIRONMENT", "test")
    app: Flask = create_app({
        "database": {"path": str(tmp_path / "app.db")},
        "logging": {"dir": str(tmp_path / "logs")},
        "catalog": {"models_file": TEST_MODELS},
        "stress": {"outputs_dir": str(tmp_path / "out"), "logs_dir": str(tmp_path / "slogs"),
                   "datasets_dir": str(tmp_path / "datasets"), "max_parallel": 64, "max_requests": 100,
                   "max_levels": 4, "max_dataset_bytes": 2000},
    })
    return app.test_client()


def _with(**changes: Any) -> dict[str, Any]:
    body = {**BASE, **changes}
    return {key: value for key, value in body.items() if value is not None}


INVALID = [
    ("no target", _with(model=None), "body"),
    ("both targets", _with(manual_config={"base_url": "http://x/v1", "model_name": "m"}), "body"),
    ("unknown model", _with(model="nope"), "model"),
    ("manual without url", _with(model=None, manual_config={"model_name": "m"}), "manual_config"),
    ("manual ftp url", _with(model=None, manual_config={"base_url": "ftp://x/v1", "model_name": "m"}),
     "manual_config.base_url"),
    ("manual no model name", _with(model=None, manual_config={"api_url": "http://x/v1/chat/completions"}),
     "manual_config.model_name"),
    ("manual extra field", _with(model=None, manual_config={"base_url": "http://x", "model_name": "m", "x": 1}),
     "manual_config.x"),
    ("empty concurrency", _with(concurrency=[]), "concurrency"),
    ("zero concurrency", _with(concurrency=[0, 2]), "concurrency"),
    ("concurrency too high", _with(concurrency=[1, 65]), "concurrency[1]"),
    ("too many levels", _with(concurrency=[1, 2, 3, 4, 5], requests=5), "concurrency"),
    ("repeated level", _with(concurrency=[2, 2]), "concurrency"),
    ("concurrency not ints", _with(concurrency=["a"]), "concurrency[0]"),
    ("requests length", _with(requests=[2, 4, 8]), "requests"),
    ("requests zero", _with(requests=0), "requests"),
    ("requests too many", _with(requests=[2, 101]), "requests[1]"),
    ("output tokens zero", _with(output_tokens=0), "output_tokens"),
    ("output tokens too many", _with(output_tokens=10**6), "output_tokens"),
    ("input tokens too many", _with(input_tokens=10**6), "input_tokens"),
    ("unknown dataset", _with(dataset="sharegpt"), "dataset"),
    ("prompt missing", _with(prompt=None), "prompt"),
    ("prompt blank", _with(prompt="  "), "prompt"),
    ("prompt with a file dataset", _with(dataset="line_by_line", dataset_file="0123456789ab"), "prompt"),
    ("file dataset without file", _with(dataset="openqa", prompt=None), "dataset_file"),
    ("dataset file bad id", _with(dataset="openqa", prompt=None, dataset_file="../etc/passwd"), "dataset_file"),
    ("dataset file unknown", _with(dataset="openqa", prompt=None, dataset_file="0123456789ab"), "dataset_file"),
    ("random without tokenizer", _with(dataset="random", prompt=None), "tokenizer"),
    ("tokenizer path", _with(tokenizer="/etc"), "tokenizer"),
    ("tokenizer unknown", _with(tokenizer="qwen"), "tokenizer"),
    ("temperature", _with(temperature=3), "temperature"),
    ("stream not bool", _with(stream="sometimes"), "stream"),
    ("connect timeout", _with(connect_timeout_s=0), "connect_timeout_s"),
    ("read timeout", _with(read_timeout_s=10**6), "read_timeout_s"),
    ("total timeout", _with(total_timeout_s=-1), "total_timeout_s"),
    ("image count", _with(image_count=100), "image_count"),
    ("output over the model limit", _with(model="sim-text-only", output_tokens=65), "output_tokens"),
    ("unknown field", _with(concurrency_levels=[1]), "concurrency_levels"),
    ("warmup negative", _with(warmup=-1), "warmup"),
    ("warmup a word", _with(warmup="lots"), "warmup"),
    ("warmup a bool", _with(warmup=True), "warmup"),
    ("warmup a float", _with(warmup=2.0), "warmup"),
    ("warmup too many", _with(warmup=101), "warmup"),
    ("system with a random dataset", _with(dataset="random", prompt=None, system="be brief"), "system"),
    ("system not text", _with(system=3), "system"),
    ("system too long", _with(system="x" * 200_001), "system"),
    ("system to a completions endpoint", _with(model=None, system="be brief",
                                               manual_config={"api_url": "http://x/v1/completions",
                                                              "model_name": "m"}), "system"),
]


@pytest.mark.parametrize(("body", "field"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_parameters_name_the_field(stress_client, body: dict[str, Any], field: str) -> None:  # type: ignore[no-untyped-def]
    response = stress_client.post("/api/v1/stress-tests", json=body)
    assert response.status_code == 400, response.json
    assert response.json["error"]["details"]["field"] == field, response.json


def test_random_vl_needs_an_image_model(stress_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A tokenizer is configured here so that only the model is wrong.
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    (tokenizer / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    stress_client.application.config["PEP"]["stress"]["tokenizer_path"] = str(tokenizer)
    response = stress_client.post("/api/v1/stress-tests", json=_with(dataset="random_vl", prompt=None))
    assert response.status_code == 400
    assert response.json["error"]["details"]["field"] == "dataset"
    ok = stress_client.post("/api/v1/stress-tests", json=_with(model="sim-vision", dataset="random_vl", prompt=None))
    assert ok.status_code == 201, ok.json
    assert ok.json["params"]["tokenizer"] == "default"
    assert ok.json["estimated_requests"] == 6


def test_not_json_body(stress_client) -> None:  # type: ignore[no-untyped-def]
    response = stress_client.post("/api/v1/stress-tests", data="x", content_type="text/plain")
    assert response.status_code == 400
    assert response.json["error"]["details"]["field"] == "body"


def test_presets_are_valid_requests(stress_client) -> None:  # type: ignore[no-untyped-def]
    presets = stress_client.get("/api/v1/stress-tests/presets").json["presets"]
    assert [p["key"] for p in presets] == ["quick", "standard", "saturation"]
    stress_client.application.config["PEP"]["stress"].update(max_parallel=512, max_requests=10000, max_levels=10)
    for preset in presets:
        response = stress_client.post("/api/v1/stress-tests", json={"model": "sim-fast", **preset["params"]})
        assert response.status_code == 201, (preset["key"], response.json)
        assert response.json["status"] == "queued"


def _upload(client, content: bytes, fmt: str, name: str = "prompts.txt"):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/stress-tests/datasets", data={"format": fmt, "file": (io.BytesIO(content), name)},
                       content_type="multipart/form-data")


@pytest.mark.parametrize(("fmt", "content", "ok"), [
    ("line_by_line", b"first prompt\n\nsecond prompt\n", True),
    ("line_by_line", b'[{"role": "user", "content": "hi"}]\n', True),
    ("line_by_line", b'{"no_messages": 1}\n', False),
    ("line_by_line", b"\n  \n", False),
    ("line_by_line", b"\xff\xfe binary", False),
    ("openqa", b'{"question": "why?"}\n\n{"question": "how?"}\n', True),
    ("openqa", b'{"prompt": "why?"}\n', False),
    ("openqa", b"not json\n", False),
    ("custom", b"a prompt per line\nanother\n", True),
    ("custom", b"x" * 3000, False),
    ("sharegpt", b"x\n", False),
])
def test_dataset_upload_is_validated(stress_client, fmt: str, content: bytes, ok: bool) -> None:  # type: ignore[no-untyped-def]
    response = _upload(stress_client, content, fmt)
    if not ok:
        assert response.status_code in (400, 413), response.json
        assert response.json["error"]["details"]["field"] in ("file", "format")
        return
    assert response.status_code == 201, response.json
    dataset = response.json
    root = Path(stress_client.application.config["PEP"]["stress"]["datasets_dir"])
    stored = list(root.iterdir())
    assert [p.name for p in stored] == [f"{dataset['id']}.{'jsonl' if fmt == 'openqa' else 'txt'}"]
    assert dataset["records"] == 2 or fmt == "line_by_line"
    listed = stress_client.get("/api/v1/stress-tests/datasets").json["datasets"]
    assert [d["id"] for d in listed] == [dataset["id"]]
    # The uploaded file can be used by a job of the same format, not of another.
    body = _with(prompt=None, dataset=fmt, dataset_file=dataset["id"])
    assert stress_client.post("/api/v1/stress-tests", json=body).status_code == 201
    other = "openqa" if fmt != "openqa" else "custom"
    wrong = stress_client.post("/api/v1/stress-tests", json={**body, "dataset": other})
    assert wrong.status_code == 400 and wrong.json["error"]["details"]["field"] == "dataset_file"


def test_client_file_name_never_becomes_a_path(stress_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    response = _upload(stress_client, b"hello\n", "custom", name="../../evil.sh")
    assert response.status_code == 201
    assert response.json["filename"] == "evil.sh"
    assert not (tmp_path / "evil.sh").exists()
    assert [p.suffix for p in Path(stress_client.application.config["PEP"]["stress"]["datasets_dir"]).iterdir()] \
        == [".txt"]


def test_queued_job_cancel_and_delete(stress_client) -> None:  # type: ignore[no-untyped-def]
    job = stress_client.post("/api/v1/stress-tests", json=BASE).json
    assert job["status"] == "queued" and job["worker_alive"] is False
    listed = stress_client.get("/api/v1/stress-tests?status=queued&model=sim-fast").json
    assert [j["id"] for j in listed["jobs"]] == [job["id"]] and listed["worker"]["alive"] is False
    assert stress_client.delete(f"/api/v1/stress-tests/{job['id']}").status_code == 409
    cancelled = stress_client.post(f"/api/v1/stress-tests/{job['id']}/cancel")
    assert cancelled.json["status"] == "cancelled"
    assert stress_client.delete(f"/api/v1/stress-tests/{job['id']}").status_code == 204
    assert stress_client.get(f"/api/v1/stress-tests/{job['id']}").status_code == 404
    assert stress_client.get("/api/v1/stress-tests?status=bogus").status_code == 400


def test_command_is_an_argument_list_without_secrets(tmp_path: Path) -> None:
    from backend.stress.command import build_command, job_paths

    settings = {"outputs_dir": str(tmp_path / "out"), "logs_dir": str(tmp_path / "logs"), "level_pause_s": 5}
    params = {"concurrency": [1, 4], "requests": [2, 8], "output_tokens": 32, "exact_output_tokens": True,
              "dataset": "prompt", "prompt": "@/etc/passwd", "stream": False, "temperature": 0.5,
              "connect_timeout_s": 3, "read_timeout_s": 30, "total_timeout_s": 60, "input_tokens": 10}
    target = {"provider": "openai", "model_id": "-m", "chat_url": "http://127.0.0.1:1/v1/chat/completions"}
    args = build_command(job_id="abc123", target=target, params=params, settings=settings)
    paths = job_paths(settings, "abc123")
    assert args[1:4] == ["-m", "backend.stress.evalscope_entry", "perf"]
    assert "--model=-m" in args  # a value that looks like an option stays a value
    assert f"--prompt=@{paths.prompt_path}" in args  # the prompt travels as our own file, never as a path
    assert args[args.index("--parallel"):args.index("--parallel") + 3] == ["--parallel", "1", "4"]
    assert args[args.index("--number"):args.index("--number") + 3] == ["--number", "2", "8"]
    for flag in ("--max-tokens=32", "--min-tokens=32", "--no-stream", "--temperature=0.5", "--connect-timeout=3",
                 "--read-timeout=30", "--total-timeout=60", "--no-test-connection", "--sleep-interval=5",
                 f"--outputs-dir={paths.output_dir}", "--no-timestamp", "--name=abc123",
                 "--enable-progress-tracker", "--db-commit-interval=1", "--api=openai"):
        assert flag in args, flag
    assert not any("api-key" in arg for arg in args)
    bedrock = build_command(job_id="abc123", target={"provider": "bedrock", "model_id": "test.ok",
                                                     "region": "us-east-1"}, params=params, settings=settings)
    assert "--url=http://127.0.0.1:1/v1/chat/completions" not in bedrock
    assert bedrock[bedrock.index("--api") + 1] == "bedrock"


def test_warmup_and_system_prompt_are_stored_and_reach_the_command(stress_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from backend.stress.command import build_command, job_paths
    from backend.stress.evalscope_args import SYSTEM_FILE_FLAG, WARMUP_PER_SLOT_FLAG

    default = stress_client.post("/api/v1/stress-tests", json=BASE).json["params"]
    assert default["warmup"] == 0 and "system" not in default  # the API's defaults are unchanged
    blank = stress_client.post("/api/v1/stress-tests", json=_with(system="  ")).json["params"]
    assert "system" not in blank
    per_slot = stress_client.post("/api/v1/stress-tests", json=_with(warmup="concurrency", system="terse")).json
    assert per_slot["params"]["warmup"] == "concurrency" and per_slot["params"]["system"] == "terse"
    fixed = stress_client.post("/api/v1/stress-tests", json=_with(warmup=4)).json["params"]
    assert fixed["warmup"] == 4

    settings = {"outputs_dir": str(tmp_path / "out"), "logs_dir": str(tmp_path / "logs"), "level_pause_s": 5}
    target = {"provider": "openai", "model_id": "m", "chat_url": "http://127.0.0.1:1/v1/chat/completions"}
    paths = job_paths(settings, "abc123")

    def command(params: dict[str, Any]) -> list[str]:
        return build_command(job_id="abc123", target=target, params=params, settings=settings)

    args = command(per_slot["params"])
    assert WARMUP_PER_SLOT_FLAG in args and not any(a.startswith("--warmup-num") for a in args)
    assert f"{SYSTEM_FILE_FLAG}={paths.system_path}" in args  # the text travels as our own file
    assert not any("terse" in arg for arg in args)
    args = command(fixed)
    assert "--warmup-num=4" in args and WARMUP_PER_SLOT_FLAG not in args
    args = command(default)
    assert not any(a.startswith(("--warmup-num", WARMUP_PER_SLOT_FLAG, SYSTEM_FILE_FLAG)) for a in args)

