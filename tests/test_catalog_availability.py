"""What the catalogue says of availability (issue 9, items 13 and 15): one reason said once for the models
it concerns, and simulator profiles that fail by design described as what they do, not as "available"."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from flask import Flask

from backend.app import create_app
from backend.simulator.profiles import Behavior, builtin_profiles
from tests.support.simulator import SimulatorProcess, free_port

MODELS = """\
models:
  claude35: {name: Claude 3.5 Sonnet v2, provider: bedrock, model_id: test.ok}
  nova-pro: {name: Amazon Nova Pro, provider: bedrock, model_id: test.ok}
  qwen3-8b: {name: Qwen3 8B (EMD), provider: emd, model_id: Qwen3-8B, tag: dev}
  gone-vllm: {name: vLLM nowhere, provider: openai, model_id: m, base_url: "http://127.0.0.1:%(dead)d/v1"}
  sim-fast: {name: Simulator (fast), provider: simulator, model_id: sim-fast}
  sim-error: {name: Simulator (always fails), provider: simulator, model_id: sim-error}
  sim-hang: {name: Simulator (never answers), provider: simulator, model_id: sim-hang}
  sim-midstream-error: {name: Simulator (mid-stream error), provider: simulator, model_id: sim-midstream-error}
"""


@pytest.fixture
def no_aws_app(tmp_path: Path, simulator: SimulatorProcess, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """Bedrock, EMD, an unreachable endpoint and the simulator, with no AWS credentials at all."""
    monkeypatch.setenv("ENVIRONMENT", "test")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    models = tmp_path / "models.yaml"
    models.write_text(MODELS % {"dead": free_port()})
    return create_app({"database": {"path": str(tmp_path / "app.db")}, "logging": {"dir": str(tmp_path / "logs")},
                       "catalog": {"models_file": str(models)}, "simulator": {"port": simulator.port}})


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment))).strip()


def test_the_behaviour_table_covers_every_failing_simulator_profile() -> None:
    from backend.catalog.service import SIMULATOR_BEHAVIORS

    failing = {name for name, profile in builtin_profiles().items()
               if profile.behavior not in (Behavior.NORMAL, Behavior.ECHO, Behavior.ANSWER, Behavior.JUDGE)
               or profile.error_rate > 0}
    assert set(SIMULATOR_BEHAVIORS) == failing


def test_the_api_says_what_a_failing_profile_does(no_aws_app: Flask) -> None:
    models = {m["key"]: m for m in no_aws_app.test_client().get("/api/v1/models").json["models"]}
    # Available still means "the endpoint answers"; the behaviour says the rest.
    for key, label in (("sim-error", "always fails"), ("sim-hang", "never answers"),
                       ("sim-midstream-error", "fails mid-answer")):
        assert models[key]["available"] is True and models[key]["behavior"] == label, key
        assert models[key]["behavior_detail"], key
    assert models["sim-fast"]["available"] is True and models["sim-fast"]["behavior"] is None
    # Bedrock and EMD read one credential chain, and say so in the same words.
    assert models["claude35"]["reason"] == models["qwen3-8b"]["reason"]
    assert "no AWS credentials" in models["qwen3-8b"]["reason"]


def badge_of(page: str, key: str) -> str:
    """The availability badge of ``key``'s row (a picker item or a Models table row)."""
    start = page.index(f'data-key="{key}"')
    match = re.search(r'<span class="badge (\w+) availability-badge"[^>]*>([^<]*)</span>', page[start:])
    assert match, key
    return f"{match.group(1)}:{match.group(2)}"


@pytest.mark.parametrize("path", ["/playground", "/models"])
def test_both_pages_say_what_a_failing_profile_does(no_aws_app: Flask, path: str) -> None:
    page = no_aws_app.test_client().get(path).text
    assert badge_of(page, "sim-fast") == "ok:available"
    assert badge_of(page, "sim-error") == "warn:always fails"
    assert badge_of(page, "sim-hang") == "warn:never answers"
    assert badge_of(page, "sim-midstream-error") == "warn:fails mid-answer"
    assert badge_of(page, "claude35") == "bad:unavailable"
    assert "HTTP 500" in page and "until the client gives up" in page


def test_the_picker_lists_available_models_first_and_each_reason_once(no_aws_app: Flask) -> None:
    page = no_aws_app.test_client().get("/playground").text
    keys = re.findall(r'<li class="pg-model[^"]*" data-key="([^"]+)"', page)
    assert keys[:4] == ["sim-fast", "sim-error", "sim-hang", "sim-midstream-error"]  # ordinary ones first
    assert set(keys[4:]) == {"claude35", "nova-pro", "qwen3-8b", "gone-vllm"}
    reasons = [text_of(r) for r in re.findall(r'<p class="pg-group-reason[^>]*>(.*?)</p>', page, re.S)]
    dead_url = no_aws_app.extensions["catalog"].models["gone-vllm"].base_url
    assert reasons == [
        "No AWS credentials: Bedrock and EMD models are unavailable (set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or a profile); the sim-* models work without a cloud account.",
        f"vLLM nowhere is unavailable: endpoint unreachable: cannot connect to {dead_url}.",
    ]
    # Each group's rows follow its sentence; no row repeats the reason as text.
    credentials_group = page[page.index("No AWS credentials"):page.index("vLLM nowhere is unavailable")]
    assert re.findall(r'data-key="([^"]+)"', credentials_group) == ["claude35", "nova-pro", "qwen3-8b"]
    assert text_of(page).count("no AWS credentials") == 0  # said once, as "No AWS credentials: ..."
    assert 'id="pg-model-search"' in page and 'id="pg-available-only"' in page and 'id="pg-selected-list"' in page


def test_the_models_page_says_a_shared_reason_once_above_the_table(no_aws_app: Flask) -> None:
    page = no_aws_app.test_client().get("/models").text
    banners = [text_of(b) for b in re.findall(r'<p class="[^"]*availability-group[^"]*">(.*?)</p>', page, re.S)]
    assert banners == ["No AWS credentials: Bedrock and EMD models are unavailable (set AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY, or a profile); the sim-* models work without a cloud account."]
