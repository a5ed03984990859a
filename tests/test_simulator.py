"""The model simulator over real HTTP against the real ``python -m backend.simulator`` subprocess."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from backend.simulator.profiles import ProfileOverrideError, apply_override, builtin_profiles
from tests.support.simulator import SimulatorProcess

BUILTIN_MODELS = {
    "sim-fast",
    "sim-vision",
    "sim-reasoning",
    "sim-steady",
    "sim-slow",
    "sim-echo",
    "sim-error",
    "sim-midstream-error",
    "sim-hang",
    "sim-answer-a",
    "sim-answer-b",
    "sim-judge",
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(seed=0) as process:
        yield process


def _chat(model: str, prompt: str | list, **fields: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **fields}


def _post(sim: SimulatorProcess, body: dict, **kwargs: object) -> requests.Response:
    return requests.post(f"{sim.base_url}/chat/completions", json=body, timeout=10, **kwargs)


def _sse_payloads(response: requests.Response) -> Iterator[str]:
    """The ``data:`` payloads of an SSE response, checking every event is ``data: ...\\n\\n``."""
    for line in response.iter_lines(decode_unicode=True):
        if not line:
            continue
        assert line.startswith("data: "), line
        yield line.removeprefix("data: ")


def _stream(sim: SimulatorProcess, body: dict) -> list[str]:
    with _post(sim, {**body, "stream": True}, stream=True) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        return list(_sse_payloads(response))


def _text(sim: SimulatorProcess, body: dict) -> str:
    response = _post(sim, body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def _record_for(sim: SimulatorProcess, prompt: str) -> dict:
    matches = [record for record in sim.requests() if record["prompt"] == prompt]
    assert len(matches) == 1, matches
    return matches[0]


def _poll(condition, deadline_s: float = 3.0) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_models_lists_builtin_profiles(sim: SimulatorProcess) -> None:
    body = requests.get(f"{sim.base_url}/models", timeout=5).json()
    assert body["object"] == "list"
    assert {model["id"] for model in body["data"]} == BUILTIN_MODELS
    assert all(model["object"] == "model" and model["owned_by"] == "simulator" for model in body["data"])


def test_streaming_chunks_in_order(sim: SimulatorProcess) -> None:
    payloads = _stream(sim, _chat("sim-fast", "stream please", stream_options={"include_usage": True}))

    assert payloads[-1] == "[DONE]"
    events = [json.loads(payload) for payload in payloads[:-1]]
    assert len({event["id"] for event in events}) == 1
    role, *tokens, finish, usage_event = events
    assert role["object"] == "chat.completion.chunk"
    assert role["model"] == "sim-fast"
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    assert 20 <= len(tokens) <= 80
    for event in tokens:
        (choice,) = event["choices"]
        assert choice["finish_reason"] is None
        assert set(choice["delta"]) == {"content"}
        assert choice["delta"]["content"].startswith(" ")
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["choices"][0]["delta"] == {}
    assert usage_event["choices"] == []
    usage = usage_event["usage"]
    assert usage["completion_tokens"] == len(tokens)
    assert usage["prompt_tokens"] == math.ceil(len("stream please") / 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_without_usage_and_max_tokens_length(sim: SimulatorProcess) -> None:
    payloads = _stream(sim, _chat("sim-fast", "short one", max_tokens=5))
    events = [json.loads(payload) for payload in payloads[:-1]]
    assert payloads[-1] == "[DONE]"
    assert all("usage" not in event for event in events)
    assert len(events) == 1 + 5 + 1
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_ignore_eos_gives_exactly_max_tokens(sim: SimulatorProcess) -> None:
    response = _post(sim, _chat("sim-fast", "long please", max_tokens=60, ignore_eos=True))
    body = response.json()
    assert body["usage"]["completion_tokens"] == 60
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["message"]["content"].split()) == 60


def test_non_streaming_shape_and_usage(sim: SimulatorProcess) -> None:
    started = time.monotonic()
    response = _post(sim, _chat("sim-fast", "not streaming"))
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "sim-fast"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert "reasoning_content" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    words = choice["message"]["content"].split()
    assert body["usage"]["completion_tokens"] == len(words)
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + len(words)
    # It still takes the simulated decode time: at least 8 ms per token.
    assert elapsed >= len(words) * 0.008


def test_output_is_deterministic_per_seed(sim: SimulatorProcess) -> None:
    body = _chat("sim-fast", "tell me something")
    first = _text(sim, body)
    assert _text(sim, body) == first
    assert _text(sim, _chat("sim-fast", "tell me something else")) != first
    with SimulatorProcess(seed=0) as same_seed, SimulatorProcess(seed=1) as other_seed:
        assert _text(same_seed, body) == first
        assert _text(other_seed, body) != first


def test_reasoning_tokens_come_before_content(sim: SimulatorProcess) -> None:
    payloads = _stream(sim, _chat("sim-reasoning", "think first", stream_options={"include_usage": True}))
    events = [json.loads(payload) for payload in payloads[1:-3]]
    kinds = ["reasoning" if "reasoning_content" in e["choices"][0]["delta"] else "content" for e in events]

    reasoning = kinds.count("reasoning")
    assert 8 <= reasoning <= 16
    assert kinds == ["reasoning"] * reasoning + ["content"] * (len(kinds) - reasoning)
    assert json.loads(payloads[-2])["usage"]["completion_tokens"] == len(events)

    message = _post(sim, _chat("sim-reasoning", "think first")).json()["choices"][0]["message"]
    streamed = [e["choices"][0]["delta"] for e in events]
    assert message["reasoning_content"] == "".join(d["reasoning_content"] for d in streamed[:reasoning])
    assert message["content"] == "".join(d["content"] for d in streamed[reasoning:])


@pytest.mark.parametrize("stream", [False, True])
def test_echo_returns_user_text_exactly(sim: SimulatorProcess, stream: bool) -> None:
    text = 'say  <script>alert(1)</script>\n& "quoted" ünïcode '
    if stream:
        events = [json.loads(payload) for payload in _stream(sim, _chat("sim-echo", text))[1:-2]]
        answer = "".join(event["choices"][0]["delta"]["content"] for event in events)
        assert len(events) > 3
    else:
        answer = _text(sim, _chat("sim-echo", text))
    assert answer == text


def test_sim_error_answers_500_json(sim: SimulatorProcess) -> None:
    response = _post(sim, _chat("sim-error", "fail", stream=True))
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "simulated upstream failure"


def test_midstream_error_after_three_tokens(sim: SimulatorProcess) -> None:
    payloads = _stream(sim, _chat("sim-midstream-error", "fail later"))
    events = [json.loads(payload) for payload in payloads]
    assert "[DONE]" not in payloads
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [set(e["choices"][0]["delta"]) for e in events[1:4]] == [{"content"}] * 3
    assert events[4:] == [
        {"error": {"message": "simulated failure mid-stream", "type": "server_error", "code": 500}}
    ]
    assert _record_for(sim, "fail later")["status"] == "error"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (_chat("no-such-model", "hi"), 404, "model_not_found"),
        ({"model": "sim-fast"}, 400, "bad_request"),
        ({"model": "sim-fast", "messages": [{"role": "user", "content": 5}]}, 400, "bad_request"),
        (_chat("sim-fast", "hi", max_tokens=0), 400, "bad_request"),
    ],
)
def test_bad_requests_get_openai_errors(sim: SimulatorProcess, body: dict, status: int, code: str) -> None:
    response = _post(sim, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["message"]


def test_malformed_json_is_400(sim: SimulatorProcess) -> None:
    response = requests.post(f"{sim.base_url}/chat/completions", data=b"{not json", timeout=5)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_api_key_is_required_when_set() -> None:
    with SimulatorProcess(extra_args=["--api-key", "s3cret"]) as sim:
        assert requests.get(f"{sim.base_url}/models", timeout=5).status_code == 401
        denied = _post(sim, _chat("sim-fast", "hi"), headers={"Authorization": "Bearer wrong"})
        assert denied.status_code == 401
        assert denied.json()["error"]["type"] == "invalid_request_error"
        allowed = _post(sim, _chat("sim-fast", "hi"), headers={"Authorization": "Bearer s3cret"})
        assert allowed.status_code == 200


def test_full_batch_queues_requests() -> None:
    with SimulatorProcess(extra_args=["--profile", "sim-fast:max_batch=2"]) as sim:
        prompts = [f"queue {uuid.uuid4().hex}" for _ in range(4)]
        body = {"max_tokens": 15, "ignore_eos": True, "stream": True}
        with ThreadPoolExecutor(max_workers=4) as pool:
            streams = list(pool.map(lambda p: _stream(sim, _chat("sim-fast", p, **body)), prompts))
        assert all(payloads[-1] == "[DONE]" for payloads in streams)

        records = sorted((_record_for(sim, p) for p in prompts), key=lambda r: r["first_token_at"])
        admitted, queued = records[:2], records[2:]
        first_completion = min(record["last_token_at"] for record in admitted)
        for record in queued:
            assert record["first_token_at"] >= first_completion
            assert record["tokens_emitted"] == 15
        # Queued requests arrived together with the admitted ones, so they waited longer for a token.
        wait = [record["first_token_at"] - record["arrival"] for record in records]
        assert min(wait[2:]) > max(wait[:2])


def test_disconnect_frees_the_stream(sim: SimulatorProcess) -> None:
    before = sim.stats()
    with _post(sim, _chat("sim-slow", "leaving early", stream=True), stream=True) as response:
        payloads = _sse_payloads(response)
        assert json.loads(next(payloads))["choices"][0]["delta"]["role"] == "assistant"
        assert json.loads(next(payloads))["choices"][0]["delta"]["content"]
        assert sim.stats()["active_streams"] == before["active_streams"] + 1

    def freed() -> bool:
        stats = sim.stats()
        return stats["active_streams"] == 0 and stats["disconnected"] == before["disconnected"] + 1

    assert _poll(freed)
    record = _record_for(sim, "leaving early")
    assert record["status"] == "disconnected"
    assert 1 <= record["tokens_emitted"] < 30


def test_hang_sends_role_chunk_then_nothing(sim: SimulatorProcess) -> None:
    body = _chat("sim-hang", "hang on", stream=True)
    with requests.post(
        f"{sim.base_url}/chat/completions", json=body, stream=True, timeout=(5, 0.5)
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines(decode_unicode=True)
        assert json.loads(next(lines).removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
        with pytest.raises(requests.ConnectionError):
            list(lines)
    assert _poll(lambda: _record_for(sim, "hang on")["status"] == "disconnected")


def test_images_are_counted(sim: SimulatorProcess) -> None:
    text = "what is in these pictures?"
    parts = [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
    ]
    response = _post(sim, _chat("sim-vision", parts, max_tokens=3))
    assert response.status_code == 200
    expected_input = math.ceil(len(text) / 4) + 2 * 256
    assert response.json()["usage"]["prompt_tokens"] == expected_input

    record = _record_for(sim, text)
    assert record["images"] == ["image/png", "image/jpeg"]
    assert record["input_tokens"] == expected_input
    assert record["status"] == "completed"
    assert record["tokens_emitted"] == 3
    assert record["arrival"] <= record["first_token_at"] <= record["last_token_at"]


def test_requests_since_filters_by_arrival(sim: SimulatorProcess) -> None:
    marker = time.time()
    _post(sim, _chat("sim-fast", "after the marker", max_tokens=1))
    recent = sim.requests(since=marker)
    assert [record["prompt"] for record in recent] == ["after the marker"]
    assert sim.requests(since=time.time() + 60) == []


def _error_pattern(sim: SimulatorProcess) -> list[int]:
    return [_post(sim, _chat("sim-echo", f"request {i}")).status_code for i in range(24)]


def test_error_injection_is_deterministic_for_a_seed() -> None:
    args = ["--error-rate", "0.5"]
    with (
        SimulatorProcess(seed=3, extra_args=args) as first,
        SimulatorProcess(seed=3, extra_args=args) as again,
    ):
        pattern = _error_pattern(first)
        assert set(pattern) == {200, 500}
        assert _error_pattern(again) == pattern
        assert first.stats()["errors"] == pattern.count(500)


def test_profile_override_changes_and_creates_profiles() -> None:
    profiles = builtin_profiles()
    apply_override(profiles, "sim-fast:max_batch=8,decode_base_ms=5")
    apply_override(profiles, "sim-custom:min_output_tokens=3,max_output_tokens=3,behavior=echo")
    assert (profiles["sim-fast"].max_batch, profiles["sim-fast"].decode_base_ms) == (8, 5.0)
    assert profiles["sim-custom"].max_output_tokens == 3
    assert profiles["sim-custom"].behavior == "echo"


@pytest.mark.parametrize(
    "spec", ["sim-fast", "sim-fast:no_such_field=1", "sim-fast:max_batch=many", "sim-fast:max_batch=0"]
)
def test_bad_profile_override_is_rejected(spec: str) -> None:
    with pytest.raises(ProfileOverrideError):
        apply_override(builtin_profiles(), spec)


def test_the_loop_lag_probe_samples_the_simulators_event_loop_only_when_asked() -> None:
    with SimulatorProcess(extra_args=["--lag-probe"]) as sim:
        since = time.time()
        time.sleep(0.5)
        figures = requests.get(f"{sim.url}/sim/lag", params={"since": repr(since)}, timeout=5).json()
        # a sample every 5 ms plus the callback's wait: well over 20 in half a second on any machine
        assert figures["samples"] > 20
        assert 0 <= figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
        later = requests.get(f"{sim.url}/sim/lag", params={"since": repr(time.time() + 60)}, timeout=5).json()
        assert later["samples"] == 0 and later["avg_ms"] is None  # none in the window: not computed, not 0
    with SimulatorProcess() as sim:
        off = requests.get(f"{sim.url}/sim/lag", timeout=5)
        assert off.status_code == 404 and "--lag-probe" in off.json()["error"]["message"]
