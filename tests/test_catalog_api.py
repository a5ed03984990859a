from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from backend.app import create_app
from tests.support.emd_stacks import ECS_TEMPLATE, create_emd_stack
from tests.support.simulator import SimulatorProcess, free_port


def _by_key(response) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.json
    return {model["key"]: model for model in response.json["models"]}


def test_lists_models_with_availability_and_reason(client) -> None:  # type: ignore[no-untyped-def]
    models = _by_key(client.get("/api/v1/models"))
    assert models["sim-fast"]["available"] is True
    assert models["sim-fast"]["reason"] is None
    # The fixture removes every AWS credential: Bedrock models say why they cannot be used.
    assert models["claude35"]["available"] is False
    assert "no AWS credentials" in models["claude35"]["reason"]
    assert models["claude35"]["provider"] == "bedrock"
    assert models["claude35"]["region"] == "us-east-1"
    assert "images" in models["sim-vision"]["capabilities"]
    assert "video" in models["sim-vision"]["capabilities"]  # frames of a video go to image models


def test_filters_by_provider_and_capability(client) -> None:  # type: ignore[no-untyped-def]
    simulator = _by_key(client.get("/api/v1/models?provider=simulator"))
    assert simulator and all(m["provider"] == "simulator" for m in simulator.values())
    assert "claude35" not in simulator
    images = _by_key(client.get("/api/v1/models?capability=images"))
    assert {"sim-vision", "sim-echo", "claude35"} <= set(images)
    assert "sim-fast" not in images
    both = _by_key(client.get("/api/v1/models?provider=simulator&capability=reasoning"))
    assert set(both) == {"sim-reasoning"}


@pytest.mark.parametrize(("query", "field"), [("provider=azure", "provider"), ("capability=audio", "capability")])
def test_bad_filters_name_the_field(client, query: str, field: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"/api/v1/models?{query}")
    assert response.status_code == 400
    assert response.json["error"]["details"]["field"] == field


def test_one_model_and_unknown_key(client) -> None:  # type: ignore[no-untyped-def]
    model = client.get("/api/v1/models/sim-echo").json
    assert model["key"] == "sim-echo" and model["available"] is True
    missing = client.get("/api/v1/models/gpt-17")
    assert missing.status_code == 404
    assert missing.json["error"]["code"] == "not_found"
    assert "sim-fast" in missing.json["error"]["details"]["known"]


def test_unreachable_endpoint_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    app = create_app({
        "database": {"path": str(tmp_path / "app.db")},
        "logging": {"dir": str(tmp_path / "logs")},
        "simulator": {"port": free_port()},  # nothing listens there
    })
    model = app.test_client().get("/api/v1/models/sim-fast").json
    assert model["available"] is False
    assert model["reason"].startswith("endpoint unreachable")


def test_simulator_that_wants_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    models = tmp_path / "models.yaml"
    with SimulatorProcess(extra_args=["--api-key", "s3cret-value"]) as sim:
        models.write_text(
            "models:\n"
            f"  keyed: {{name: Keyed, provider: openai, model_id: sim-fast, base_url: '{sim.base_url}',"
            " api_key_env: TEST_KEYED_API_KEY}\n")
        app = create_app({"database": {"path": str(tmp_path / "app.db")},
                          "logging": {"dir": str(tmp_path / "logs")},
                          "catalog": {"models_file": str(models)}})
        monkeypatch.delenv("TEST_KEYED_API_KEY", raising=False)
        refused = app.test_client().get("/api/v1/models/keyed").json
        assert refused["available"] is False
        assert "API key" in refused["reason"] and "TEST_KEYED_API_KEY" in refused["reason"]
        monkeypatch.setenv("TEST_KEYED_API_KEY", "s3cret-value")
        assert app.test_client().get("/api/v1/models/keyed").json["available"] is True


def test_emd_deployments_from_cloudformation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_CLOUDFORMATION", raising=False)
    models = tmp_path / "models.yaml"
    models.write_text(
        "models:\n"
        "  qwen3-8b: {name: Qwen3 8B, provider: emd, model_id: Qwen3-8B, tag: dev}\n"
        "  llama-gone: {name: Llama gone, provider: emd, model_id: Llama-3.1-8B, tag: prod}\n")
    with mock_aws():
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        create_emd_stack(cfn, ECS_TEMPLATE, "Qwen3-8B", "dev", InstanceType="g5.2xlarge",
                         EngineType="vllm", ServiceType="ecs", DNSName="emd-router.example.com")
        create_emd_stack(cfn, ECS_TEMPLATE, "Mistral-7B", "v2", InstanceType="g5.xlarge",
                         EngineType="sglang", ServiceType="ecs", DNSName="emd-router.example.com")
        app = create_app({"database": {"path": str(tmp_path / "app.db")},
                          "logging": {"dir": str(tmp_path / "logs")},
                          "catalog": {"models_file": str(models)}})
        listed = _by_key(app.test_client().get("/api/v1/models?provider=emd"))
        with app.app_context():
            from backend.catalog.service import get_catalog

            target = get_catalog().target(get_catalog().get("qwen3-8b"))

    qwen = listed["qwen3-8b"]
    assert qwen["available"] is True
    assert qwen["model_id"] == "Qwen3-8B/dev"
    assert qwen["deployment"]["instance_type"] == "g5.2xlarge"
    assert qwen["deployment"]["engine_type"] == "vllm"
    assert qwen["deployment"]["status"] == "CREATE_COMPLETE"
    assert listed["llama-gone"]["available"] is False
    assert "not deployed" in listed["llama-gone"]["reason"]
    discovered = [m for m in listed.values() if m.get("discovered")]
    assert [m["model_id"] for m in discovered] == ["Mistral-7B/v2"]
    assert discovered[0]["available"] is True
    # Requests go to EMD's OpenAI-compatible router, naming the deployment as model_id/tag.
    assert target.chat_url == "http://emd-router.example.com/v1/chat/completions"
    assert target.model_id == "Qwen3-8B/dev"


def test_emd_without_credentials_says_why(client) -> None:  # type: ignore[no-untyped-def]
    # The test catalogue has no EMD entries; ask the real one through a configured EMD model.
    from backend.catalog.registry import ModelSpec

    with client.application.app_context():
        from backend.catalog.service import get_catalog

        availability = get_catalog().availability(
            ModelSpec(key="q", name="q", provider="emd", model_id="Qwen3-8B", tag="dev"))
    assert availability.available is False
    assert "credentials" in availability.reason
