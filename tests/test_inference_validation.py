"""Every way a request can be refused: 400 with a JSON error that names the field."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image


def png_base64(size: tuple[int, int] = (8, 8), color: str = "red") -> str:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _error(response) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.is_json
    return response.json["error"]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"models": ["gpt-17"], "text": "hi"}, "models[0]", "unknown model 'gpt-17'"),
        ({"models": ["sim-fast"], "text": "   "}, "text", "empty"),
        ({"models": ["sim-fast"], "prompt": ""}, "prompt", "empty"),
        ({"models": ["sim-fast"]}, "text", "empty"),
        ({"models": [], "text": "hi"}, "models", "at least one"),
        ({"models": ["sim-fast", "sim-fast"], "text": "hi"}, "models", "twice"),
        ({"models": ["sim-fast"], "text": "hi", "prompt": "hi"}, "body", "only one"),
        ({"models": ["sim-fast"], "messages": [{"role": "assistant", "content": "x"}]}, "messages", "last"),
        ({"models": ["sim-fast"], "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", ""),
        ({"models": ["sim-fast"], "text": "hi", "max_tokens": 0}, "max_tokens", ""),
        ({"models": ["sim-fast"], "text": "hi", "max_tokens": 10**6}, "max_tokens", "at most"),
        ({"models": ["sim-fast"], "text": "hi", "temperature": 3}, "temperature", ""),
        ({"models": ["sim-fast"], "text": "hi", "surprise": 1}, "surprise", "not a field"),
        ({"models": "sim-fast", "text": "hi"}, "models", ""),
        ({"models": ["sim-echo"], "text": "hi", "images": ["%%%not base64%%%"]}, "images[0]", "base64"),
        ({"models": ["sim-echo"], "text": "hi", "images": [base64.b64encode(b"plain text").decode()]},
         "images[0]", "not a readable image"),
        ({"models": ["sim-fast"], "text": "hi", "images": [png_base64()]}, "images", "cannot read images"),
        ({"models": ["sim-fast"], "text": "hi", "video": base64.b64encode(b"x" * 64).decode()}, "video", ""),
        ({"models": ["sim-echo"], "text": "hi", "video": base64.b64encode(b"not a video" * 10).decode()},
         "video", "could not be decoded"),
        ({"manual_config": {"base_url": "ftp://host/v1", "model_name": "m"}, "text": "hi"},
         "manual_config.base_url", "http"),
        ({"manual_config": {"api_url": "file:///etc/passwd", "model_name": "m"}, "text": "hi"},
         "manual_config.api_url", "http"),
        ({"manual_config": {"model_name": "m"}, "text": "hi"}, "manual_config", "base_url or api_url"),
        ({"manual_config": {"base_url": "http://h/v1"}, "text": "hi"}, "manual_config.model_name", ""),
    ],
)
def test_multi_inference_refuses(client, body: dict, field: str, words: str) -> None:  # type: ignore[no-untyped-def]
    error = _error(client.post("/api/v1/multi-inference", json=body))
    assert error["details"]["field"] == field
    assert words.lower() in error["message"].lower()


def test_unknown_model_lists_the_known_ones(client) -> None:  # type: ignore[no-untyped-def]
    error = _error(client.post("/api/v1/multi-inference", json={"models": ["nope"], "text": "hi"}))
    assert "sim-fast" in error["message"]
    assert "claude35" in error["details"]["known"]


def test_oversized_image(app, client) -> None:  # type: ignore[no-untyped-def]
    app.config["PEP"]["inference"]["max_image_bytes"] = 1024
    big = png_base64((400, 400), "blue")  # noise-free but still > 1 KiB? make sure of it
    raw = base64.b64decode(big)
    if len(raw) <= 1024:
        big = base64.b64encode(raw + b"\0" * 2048).decode()
    error = _error(client.post("/api/v1/multi-inference",
                               json={"models": ["sim-echo"], "text": "hi", "images": [big]}))
    assert error["details"]["field"] == "images[0]"
    assert "larger than the limit" in error["message"]


def test_body_must_be_json(client) -> None:  # type: ignore[no-untyped-def]
    error = _error(client.post("/api/v1/multi-inference", data="models=sim-fast",
                               content_type="application/x-www-form-urlencoded"))
    assert error["details"]["field"] == "body"
    error = _error(client.post("/api/v1/multi-inference", json=["sim-fast"]))
    assert error["details"]["field"] == "body"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "hi"}, "model"),
        ({"model": "sim-fast", "models": ["sim-echo"], "text": "hi"}, "model"),
        ({"model": "nope", "text": "hi"}, "model"),
    ],
)
def test_single_inference_refuses(client, body: dict, field: str) -> None:  # type: ignore[no-untyped-def]
    assert _error(client.post("/api/v1/inference", json=body))["details"]["field"] == field


def test_refusals_do_not_echo_secrets(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/multi-inference", json={
        "manual_config": {"base_url": "gopher://x", "model_name": "m", "api_key": "sk-very-secret-123"},
        "text": "hi"})
    assert response.status_code == 400
    assert "sk-very-secret-123" not in response.get_data(as_text=True)


def test_runs_listing_validates_paging(client) -> None:  # type: ignore[no-untyped-def]
    assert _error(client.get("/api/v1/inference/runs?limit=abc"))["details"]["field"] == "limit"
    assert client.get("/api/v1/inference/runs/unknown").status_code == 404
