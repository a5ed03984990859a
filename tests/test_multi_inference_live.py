"""The streaming inference API over real HTTP: gunicorn + gevent, the simulator, the Bedrock server."""

from __future__ import annotations

import base64
import io
import time

import av
import requests
from PIL import Image

from tests.conftest import TEST_MODELS
from tests.support.app_server import AppServer
from tests.support.simulator import SimulatorProcess
from tests.support.sse import by_name, iter_events, post_events


def _deltas(events, model: str, name: str = "delta") -> list[str]:  # type: ignore[no-untyped-def]
    return [e.data["text"] for e in events if e.name == name and e.data["model"] == model]


def test_three_models_stream_event_by_event(live_app: AppServer, simulator: SimulatorProcess) -> None:
    prompt = "Compare <b>three</b> answers & keep them apart"
    events = post_events(live_app.url + "/api/v1/multi-inference", {
        "models": ["sim-fast", "sim-reasoning", "sim-echo"], "text": prompt, "max_tokens": 64})

    assert events[0].name == "comment"  # sent at once so headers leave before the first token
    run = events[1]
    assert run.name == "run"
    assert [t["model"] for t in run.data["targets"]] == ["sim-fast", "sim-reasoning", "sim-echo"]
    assert events[-1].name == "done"
    assert events[-1].data == {"run_id": run.data["run_id"], "succeeded": 3, "failed": 0}
    assert not by_name(events, "model_error")

    names = [e.name for e in events[2:-1] if e.name != "comment"]
    assert set(names) <= {"delta", "reasoning", "model_done"}
    done = {d["model"]: d for d in by_name(events, "model_done")}
    assert set(done) == {"sim-fast", "sim-reasoning", "sim-echo"}
    for model, metrics in done.items():
        position_done = next(i for i, e in enumerate(events) if e.name == "model_done" and e.data["model"] == model)
        # no token of a model arrives after its model_done
        assert all(not (e.name in ("delta", "reasoning") and e.data["model"] == model) for e in events[position_done:])
        assert metrics["ttft_ms"] > 0 and metrics["latency_ms"] >= metrics["ttft_ms"]
        assert metrics["token_source"] == "server"
        assert metrics["input_tokens"] > 0

    assert "".join(_deltas(events, "sim-echo")) == prompt  # the answer is the prompt, unchanged
    fast_text = "".join(_deltas(events, "sim-fast"))
    assert done["sim-fast"]["output_tokens"] == len(_deltas(events, "sim-fast")) > 1

    # Reasoning arrives as its own event and before the answer.
    reasoning_positions = [i for i, e in enumerate(events) if e.name == "reasoning"]
    answer_positions = [i for i, e in enumerate(events) if e.name == "delta" and e.data["model"] == "sim-reasoning"]
    assert reasoning_positions and all(r["model"] == "sim-reasoning" for r in by_name(events, "reasoning"))
    if answer_positions:
        assert max(reasoning_positions) < min(answer_positions)

    stored = requests.get(f"{live_app.url}/api/v1/inference/runs/{run.data['run_id']}", timeout=5).json()
    assert stored["prompt"] == prompt and stored["status"] == "completed"
    outputs = {r["model"]: r for r in stored["results"]}
    assert outputs["sim-fast"]["output"] == fast_text
    assert outputs["sim-echo"]["output"] == prompt
    assert outputs["sim-reasoning"]["reasoning"] == "".join(_deltas(events, "sim-reasoning", "reasoning"))
    assert outputs["sim-fast"]["metrics"]["ttft_ms"] == done["sim-fast"]["ttft_ms"]

    listed = requests.get(f"{live_app.url}/api/v1/inference/runs", params={"model": "sim-echo"}, timeout=5).json()
    assert run.data["run_id"] in [r["id"] for r in listed["runs"]]


def test_failing_models_do_not_stop_the_others(live_app: AppServer) -> None:
    events = post_events(live_app.url + "/api/v1/multi-inference", {
        "models": ["sim-fast", "sim-error", "sim-midstream-error", "sim-echo"], "text": "hello there"})
    errors = {e["model"]: e["error"] for e in by_name(events, "model_error")}
    assert errors["sim-error"]["code"] == "upstream"
    assert "simulated upstream failure" in errors["sim-error"]["message"]
    assert errors["sim-midstream-error"]["code"] == "upstream"
    assert "mid-stream" in errors["sim-midstream-error"]["message"]
    assert len(_deltas(events, "sim-midstream-error")) == 3  # what came before the failure is kept
    assert {d["model"] for d in by_name(events, "model_done")} == {"sim-fast", "sim-echo"}
    assert events[-1].data["succeeded"] == 2 and events[-1].data["failed"] == 2


def test_a_hanging_model_times_out_alone(live_app: AppServer) -> None:
    # The live app's per-model timeout is 4 s (conftest); sim-hang never sends a token.
    events = post_events(live_app.url + "/api/v1/multi-inference",
                         {"models": ["sim-hang", "sim-echo"], "text": "anyone there?"}, timeout=20)
    errors = {e["model"]: e["error"] for e in by_name(events, "model_error")}
    assert errors["sim-hang"]["code"] == "timeout"
    assert [d["model"] for d in by_name(events, "model_done")] == ["sim-echo"]
    assert events[-1].data["failed"] == 1
    assert any(e.name == "comment" and e.data == "ping" for e in events[2:])  # heartbeats while waiting


def test_client_disconnect_closes_upstream(live_app: AppServer, simulator: SimulatorProcess) -> None:
    before = simulator.stats()
    response = requests.post(live_app.url + "/api/v1/multi-inference",
                             json={"models": ["sim-slow"], "text": "take your time"}, stream=True, timeout=10)
    run_id = None
    events = iter_events(response)  # kept: finishing this generator would close the connection early
    for event in events:
        if event.name == "run":
            run_id = event.data["run_id"]
        if event.name == "delta":
            break
    assert simulator.stats()["active_streams"] >= 1
    response.close()  # the client goes away mid-answer

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = simulator.stats()
        if stats["active_streams"] == 0 and stats["disconnected"] > before["disconnected"]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"upstream stream still open after the client left: {simulator.stats()}")

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stored = requests.get(f"{live_app.url}/api/v1/inference/runs/{run_id}", timeout=5).json()
        if stored["status"] == "completed":
            break
        time.sleep(0.1)
    result = stored["results"][0]
    assert result["status"] == "cancelled"
    assert result["output"]  # what arrived before the client left is stored


def test_images_and_video_reach_the_model(live_app: AppServer, simulator: SimulatorProcess) -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 24), "green").save(jpeg, format="JPEG")
    # Declared as PNG, really a JPEG: the type is sniffed from the bytes.
    data_url = "data:image/png;base64," + base64.b64encode(jpeg.getvalue()).decode()
    since = time.time()
    events = post_events(live_app.url + "/api/v1/multi-inference", {
        "models": ["sim-echo"], "text": "what is in the picture?", "images": [data_url],
        "video": base64.b64encode(_tiny_video(frames=30)).decode()})
    assert events[-1].data["succeeded"] == 1
    received = [r for r in simulator.requests(since=since) if r["prompt"] == "what is in the picture?"]
    assert len(received) == 1
    assert received[0]["images"][0] == "image/jpeg"
    assert received[0]["images"][1:] == ["image/jpeg"] * 8  # video.frames default: 8 sampled frames


def test_single_model_json_and_stream(live_app: AppServer) -> None:
    answer = requests.post(live_app.url + "/api/v1/inference",
                           json={"model": "sim-echo", "prompt": "just me"}, timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert body["output"] == "just me" and body["status"] == "completed"
    assert body["metrics"]["output_tokens"] >= 1 and body["run_id"]

    failed = requests.post(live_app.url + "/api/v1/inference", json={"model": "sim-error", "text": "x"}, timeout=10)
    assert failed.status_code == 502
    assert failed.json()["error"]["code"] == "upstream"

    events = post_events(live_app.url + "/api/v1/inference", {"model": "sim-echo", "text": "a b", "stream": True})
    assert "".join(_deltas(events, "sim-echo")) == "a b"


def test_manual_endpoint_key_is_used_but_never_kept(simulator: SimulatorProcess) -> None:
    secret = "sk-manual-SECRET-4242"
    with SimulatorProcess(extra_args=["--api-key", secret]) as keyed, AppServer(
        env={"SIMULATOR_PORT": str(simulator.port)}
    ) as app:
        events = post_events(app.url + "/api/v1/multi-inference", {
            "text": "hello manual", "manual_config": {"base_url": keyed.base_url, "model_name": "sim-echo",
                                                      "api_key": secret}})
        assert events[-1].data["succeeded"] == 1
        assert "".join(_deltas(events, "manual:sim-echo")) == "hello manual"
        wrong = post_events(app.url + "/api/v1/multi-inference", {
            "text": "x", "manual_config": {"base_url": keyed.base_url, "model_name": "sim-echo",
                                           "api_key": "wrong"}})
        assert by_name(wrong, "model_error")[0]["error"]["code"] == "auth"
        run = requests.get(f"{app.url}/api/v1/inference/runs/{events[1].data['run_id']}", timeout=5).json()
        assert run["params"]["manual_config"]["api_key_given"] is True
        time.sleep(0.2)
        stored = b"".join(p.read_bytes() for p in app.root.glob("app.db*"))
        logged = app.log_text() + app.output()
    assert secret.encode() not in stored
    assert secret not in logged
    assert secret not in str(run)


def test_bedrock_models_through_the_api(live_app: AppServer, bedrock_server) -> None:  # type: ignore[no-untyped-def]
    # The seed's example, against the local Bedrock event-stream server (claude35 -> test.ok there).
    events = post_events(live_app.url + "/api/v1/multi-inference", {"models": ["claude35"], "text": "hello"})
    assert "".join(_deltas(events, "claude35")) == "The quick brown fox jumps over the lazy dog."
    done = by_name(events, "model_done")[0]
    assert done["token_source"] == "server" and done["output_tokens"] == 9

    events = post_events(live_app.url + "/api/v1/multi-inference", {
        "models": ["bedrock-reasoning", "bedrock-validation", "bedrock-denied", "bedrock-throttle",
                   "bedrock-midstream"], "text": "hello"})
    errors = {e["model"]: e["error"]["code"] for e in by_name(events, "model_error")}
    assert errors == {"bedrock-validation": "bad_request", "bedrock-denied": "auth",
                      "bedrock-throttle": "throttled", "bedrock-midstream": "upstream"}
    assert _deltas(events, "bedrock-reasoning", "reasoning")
    assert len(_deltas(events, "bedrock-midstream")) == 2
    assert events[-1].data == {"run_id": events[1].data["run_id"], "succeeded": 1, "failed": 4}

    png = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(png, format="PNG")
    events = post_events(live_app.url + "/api/v1/multi-inference", {
        "models": ["bedrock-echo"], "text": "describe", "images": [base64.b64encode(png.getvalue()).decode()]})
    assert f"[image:png:{len(png.getvalue())} bytes]" in "".join(_deltas(events, "bedrock-echo"))


def _tiny_video(frames: int) -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_image(Image.new("RGB", (64, 48), (i * 8 % 256, 0, 0)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def test_streams_share_a_keep_alive_connection(live_app: AppServer) -> None:
    # The departure watcher must be off the client socket before the next request is read from it.
    with requests.Session() as session:
        for attempt in range(4):
            with session.post(live_app.url + "/api/v1/multi-inference",
                              json={"models": ["sim-echo", "sim-fast"], "text": f"again {attempt}"},
                              stream=True, timeout=10) as response:
                events = list(iter_events(response))
            assert events[-1].name == "done" and events[-1].data["succeeded"] == 2
    assert "already used by another greenlet" not in live_app.output()
    assert "Error handling request" not in live_app.output()


def test_departure_noticed_before_any_token(simulator: SimulatorProcess) -> None:
    # Heartbeats every 30 s: only the watcher on the client socket can notice the client leaving.
    env = {"SIMULATOR_PORT": str(simulator.port), "PEP_CATALOG__MODELS_FILE": TEST_MODELS,
           "PEP_INFERENCE__HEARTBEAT_S": "30", "PEP_INFERENCE__MODEL_TIMEOUT_S": "60"}
    with AppServer(env=env) as app:
        before = simulator.stats()["disconnected"]
        response = requests.post(app.url + "/api/v1/multi-inference",
                                 json={"models": ["sim-hang"], "text": "wait for me"}, stream=True, timeout=10)
        events = iter_events(response)
        assert next(events).name == "comment"
        assert next(events).name == "run"
        deadline = time.monotonic() + 5
        while simulator.stats()["active_streams"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        response.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if simulator.stats()["disconnected"] > before and simulator.stats()["active_streams"] == 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the hung upstream call outlived its client: {simulator.stats()}")
