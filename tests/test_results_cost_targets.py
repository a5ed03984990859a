"""Where a job's instance type comes from (the catalogue entry, or its EMD stack's InstanceType), and the
cost its results then carry, worked out by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from backend.app import create_app
from backend.db import db
from backend.stress.models import StressJob, StressLevel
from tests.support.emd_stacks import ECS_TEMPLATE, create_emd_stack


def finish_with_one_level(app: Any, job_id: str, output_tokens_per_s: float) -> None:
    with app.app_context():
        job = db.session.get(StressJob, job_id)
        job.status = "completed"
        db.session.add(StressLevel(job_id=job_id, position=0, concurrency=1, requests=1, succeeded=1, failed=0,
                                   output_tokens_per_s=output_tokens_per_s, metrics={}, raw_summary={},
                                   raw_percentiles=[]))
        db.session.commit()


def test_an_instance_type_from_the_catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  mine: {name: Mine, provider: openai, model_id: m, base_url: 'http://127.0.0.1:9/v1',"
                      " instance_type: g5.12xlarge, instances: 2}\n")
    app = create_app({"database": {"path": str(tmp_path / "app.db")}, "logging": {"dir": str(tmp_path / "logs")},
                      "catalog": {"models_file": str(models)}})
    client = app.test_client()
    assert client.get("/api/v1/models/mine").json["instance_type"] == "g5.12xlarge"
    created = client.post("/api/v1/stress-tests", json={"model": "mine", "concurrency": [1], "requests": 1,
                                                        "prompt": "x"})
    assert created.status_code == 201, created.json
    assert (created.json["target"]["instance_type"], created.json["target"]["instances"]) == ("g5.12xlarge", 2)
    finish_with_one_level(app, created.json["id"], output_tokens_per_s=1000.0)
    cost = client.get(f"/api/v1/results/{created.json['id']}").json["levels"][0]["cost"]
    # 2 x g5.12xlarge at $5.672/h = $11.344/h; 1,000 tokens/s make 3.6 M tokens an hour: $3.1511 per M.
    assert cost["usd_per_m_output_tokens"] == pytest.approx(11.344 / 3.6)


def test_an_instance_type_from_the_emd_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_CLOUDFORMATION", raising=False)
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  qwen3-8b: {name: Qwen3 8B, provider: emd, model_id: Qwen3-8B, tag: dev}\n")
    with mock_aws():
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        create_emd_stack(cfn, ECS_TEMPLATE, "Qwen3-8B", "dev", InstanceType="g5.2xlarge", EngineType="vllm",
                         ServiceType="ecs", DNSName="emd-router.example.com")
        app = create_app({"database": {"path": str(tmp_path / "app.db")}, "logging": {"dir": str(tmp_path / "logs")},
                          "catalog": {"models_file": str(models)}})
        client = app.test_client()
        created = client.post("/api/v1/stress-tests", json={"model": "qwen3-8b", "concurrency": [1], "requests": 1,
                                                            "prompt": "x"})
    assert created.status_code == 201, created.json
    assert (created.json["target"]["instance_type"], created.json["target"]["instances"]) == ("g5.2xlarge", 1)
    finish_with_one_level(app, created.json["id"], output_tokens_per_s=250.0)
    cost = client.get(f"/api/v1/results/{created.json['id']}").json["levels"][0]["cost"]
    assert cost["usd_per_m_output_tokens"] == pytest.approx(1.212 / (3600 * 250) * 1e6)
