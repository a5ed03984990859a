"""No request field reaches a command line except as a validated argument. Stress tests and evaluations
are created through the API with hostile values (spaces, leading dashes, newlines, shell metacharacters)
in every text field that could: each is refused with a 400 naming the field, or stored; the command the
worker builds from the stored job is then parsed back with evalscope's own argument parser, and each
value comes back whole as the value of its own option, never as an option or a word of its own."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from evalscope.perf.arguments import add_argument
from flask import Flask

from backend.db import db
from backend.evaluations.command import cell_args
from backend.evaluations.command import job_paths as eval_paths
from backend.evaluations.models import EvaluationCell, EvaluationJob
from backend.stress.command import SYSTEM_FILE_FLAG, build_command
from backend.stress.models import StressJob

HOSTILE = ["-x", "--api=evil", "--url=http://evil/", "a b", "a;id", "$(id)", "`id`", "a|b&c>d", "a\nb",
           "a\r\n--parallel 99", "'\"", "*", "~root", "a\x00b", " lead", "--"]
HOSTILE_URLS = ["http://127.0.0.1:9/v1;id", "http://127.0.0.1:9/$(id)/v1", "http://127.0.0.1:9/v1 --x",
                "http://127.0.0.1:9/v1\n--x", "http://127.0.0.1:9/`id`/v1", "-http://x/v1"]


def perf_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_argument(parser)
    return parser


def entry_stripped(command: list[str]) -> list[str]:
    """What the entry hands evalscope: the command after ``perf`` without the entry's own option (the
    system prompt's file, which must be a path and nothing else)."""
    own = [arg for arg in command[4:] if arg.startswith(SYSTEM_FILE_FLAG + "=")]
    assert all(Path(arg.split("=", 1)[1]).name == "system.txt" for arg in own), own
    return [arg for arg in command[4:] if arg not in own]


def refused_naming(response: Any, field: str) -> None:
    assert response.status_code == 400, response.json
    assert response.json["error"]["details"]["field"] == field, response.json


def stress_command(app: Flask, job_id: str) -> list[str]:
    with app.app_context():
        job = db.session.get(StressJob, job_id)
        return build_command(job_id=job.id, target=job.target, params=job.params, settings=app.config["PEP"]["stress"])


def test_hostile_stress_fields_stay_values_of_their_own_options(app: Flask, client: Any, tmp_path: Path) -> None:
    app.config["PEP"]["stress"].update(outputs_dir=str(tmp_path / "o"), logs_dir=str(tmp_path / "l"))
    parser, created = perf_parser(), 0
    for value in HOSTILE:
        for field, body in [
            ("manual_config.model_name", {"manual_config": {"base_url": "http://127.0.0.1:9/v1", "model_name": value}}),
            ("label", {"model": "sim-fast", "label": value}),
            ("prompt", {"model": "sim-fast", "prompt": value}),
            ("system", {"model": "sim-fast", "prompt": "p", "system": value}),
        ]:
            response = client.post("/api/v1/stress-tests", json={"concurrency": [1], "requests": 1, "prompt": "p",
                                                                 **body})
            if response.status_code != 201:
                refused_naming(response, field)
                assert (field == "manual_config.model_name" and value in ("--", " lead")) or not value.isprintable()
                continue
            created += 1
            command = stress_command(app, response.json["id"])
            assert command[2:4] == ["backend.stress.evalscope_entry", "perf"]
            assert all("\n" not in arg and "\r" not in arg and "\x00" not in arg for arg in command), command
            rest = entry_stripped(command)
            parsed = parser.parse_args(rest)  # evalscope's own parser reads exactly what it will run
            assert parsed.parallel == [1] and parsed.number == [1] and parsed.api == "openai", command
            if field == "manual_config.model_name":
                assert parsed.model == value and parsed.url == "http://127.0.0.1:9/v1/chat/completions"
            else:
                # a label, prompt or system prompt is never an argument nor an option's value (files carry them)
                assert parsed.model == "sim-fast" and value not in command
                assert all(arg.split("=", 1)[-1] != value for arg in command[4:]), (value, command)
            if field == "prompt":
                assert parsed.prompt.startswith("@") and Path(parsed.prompt[1:]).name == "prompt.txt"
    assert created >= 3 * len(HOSTILE) - 8  # labels and prompts are text: most are stored, and safe


def test_hostile_stress_urls_are_refused_or_stay_one_value(app: Flask, client: Any) -> None:
    parser = perf_parser()
    for url in HOSTILE_URLS:
        response = client.post("/api/v1/stress-tests", json={"concurrency": [1], "requests": 1, "prompt": "p",
                                                             "manual_config": {
            "base_url": url, "model_name": "m"}})
        if response.status_code != 201:
            refused_naming(response, "manual_config.base_url")
            continue
        assert not any(c.isspace() for c in url) and url.startswith("http://")
        parsed = parser.parse_args(entry_stripped(stress_command(app, response.json["id"])))
        assert parsed.url == url.rstrip("/") + "/chat/completions" and parsed.model == "m"


def test_hostile_evaluation_model_names_are_refused_at_creation(app: Flask, client: Any) -> None:
    """evalscope's eval takes the model by name: anything but a plain identifier is a 400 naming the field
    (before the fix it was accepted and the job failed only when the worker built the command)."""
    dataset = next(row["id"] for row in client.get("/api/v1/datasets").json["datasets"]
                   if row["bundled"] and row["kind"] == "mcq")
    for value in HOSTILE:
        response = client.post("/api/v1/evaluations", json={"datasets": [dataset], "limit": 1, "manual_config": {
            "base_url": "http://127.0.0.1:9/v1", "model_name": value}})
        refused_naming(response, "manual_config.model_name")
    response = client.post("/api/v1/evaluations", json={"datasets": [dataset], "limit": 1, "label": "a;id --x\n`id`",
                                                        "manual_config": {"base_url": "http://127.0.0.1:9/v1",
                                                                          "model_name": "org/model-1.5:v2"}})
    assert response.status_code == 201, response.json
    with app.app_context():
        job = db.session.get(EvaluationJob, response.json["id"])
        [cell] = db.session.scalars(db.select(EvaluationCell).where(EvaluationCell.job_id == job.id))
        settings = app.config["PEP"]["evaluations"]
        args = cell_args(cell={"position": cell.position, "target": cell.target, "benchmark": "general_mcq"},
                         params=dict(job.params), settings=settings, paths=eval_paths(settings, job.id), judge=None)
    assert "--model=org/model-1.5:v2" in args and not any("id" in arg and "`" in arg for arg in args)
    assert all("\n" not in arg for arg in args)
