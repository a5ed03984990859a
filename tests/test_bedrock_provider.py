"""The Bedrock provider through real boto3 against a local server speaking Bedrock's event-stream."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Iterator

import boto3
import botocore.config
import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from PIL import Image as PILImage

from backend.providers import bedrock
from backend.providers.base import (
    Cancellation,
    ChatRequest,
    Delta,
    Done,
    Image,
    Message,
    ProviderError,
    Reasoning,
    StreamEvent,
    Target,
    Usage,
)
from tests.support.bedrock_server import (
    OK_ANSWER,
    REASONING,
    STREAM_ERROR_MESSAGE,
    BedrockServer,
    encode_frame,
    event_frame,
    exception_frame,
)

REGION = "us-east-1"
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL",
)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[BedrockServer]:
    with BedrockServer() as running:
        for name in CREDENTIAL_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        # Nothing from the machine running the tests: no shared files, no instance metadata.
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", running.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTEST")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
        monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
        bedrock.reset_clients()
        yield running
        bedrock.reset_clients()


def target(model_id: str) -> Target:
    return Target(key=f"bedrock:{model_id}", provider="bedrock", model_id=model_id, region=REGION)


def ask(text: str = "Say the pangram.", **options) -> ChatRequest:
    return ChatRequest(messages=(Message("user", text),), **options)


def collect(model_id: str, request: ChatRequest | None = None) -> list[StreamEvent]:
    return list(bedrock.stream(target(model_id), request or ask(), Cancellation()))


def collect_until_error(model_id: str, request: ChatRequest | None = None):
    events: list[StreamEvent] = []
    with pytest.raises(ProviderError) as raised:
        for event in bedrock.stream(target(model_id), request or ask(), Cancellation()):
            events.append(event)
    return events, raised.value


def words(text: str) -> list[str]:
    first, *rest = text.split(" ")
    return [first, *(" " + word for word in rest)]


def image_bytes(fmt: str, color: str) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (16, 12), color).save(buffer, format=fmt)
    return buffer.getvalue()


# --- streaming ---------------------------------------------------------------------------------------


def test_streams_answer_then_usage_then_done(server: BedrockServer) -> None:
    events = collect("test.ok")

    deltas = [event.text for event in events if isinstance(event, Delta)]
    assert deltas == words(OK_ANSWER)
    assert "".join(deltas) == OK_ANSWER
    assert events[-2:] == [Usage(input_tokens=3, output_tokens=9), Done("end_turn")]
    assert all(isinstance(event, Delta) for event in events[:-2])


def test_max_tokens_cuts_the_answer_short(server: BedrockServer) -> None:
    events = collect("test.ok", ask(max_tokens=3))

    assert [event.text for event in events if isinstance(event, Delta)] == words(OK_ANSWER)[:3]
    assert events[-2:] == [Usage(input_tokens=3, output_tokens=3), Done("max_tokens")]


def test_reasoning_comes_before_the_answer(server: BedrockServer) -> None:
    events = collect("test.reasoning")

    reasoning = [event.text for event in events if isinstance(event, Reasoning)]
    assert reasoning == list(REASONING)  # the signature delta carries no text and is dropped
    first_delta = next(i for i, event in enumerate(events) if isinstance(event, Delta))
    assert all(isinstance(event, Reasoning) for event in events[:first_delta])
    assert "".join(event.text for event in events if isinstance(event, Delta)) == OK_ANSWER
    assert events[-1] == Done("end_turn")


def test_images_arrive_with_their_format_and_exact_bytes(server: BedrockServer) -> None:
    png, jpeg = image_bytes("PNG", "red"), image_bytes("JPEG", "blue")
    message = Message("user", "What is in these?", images=(Image("image/png", png), Image("image/jpeg", jpeg)))

    events = collect("test.echo", ChatRequest(messages=(message,)))

    answer = "".join(event.text for event in events if isinstance(event, Delta))
    assert answer == f"[image:png:{len(png)} bytes] [image:jpeg:{len(jpeg)} bytes] What is in these?"
    content = server.requests[-1].body["messages"][0]["content"]
    assert [block["image"]["format"] for block in content[:2]] == ["png", "jpeg"]
    # On the wire the bytes travel base64-encoded inside the JSON body.
    assert base64.b64decode(content[0]["image"]["source"]["bytes"]) == png
    assert base64.b64decode(content[1]["image"]["source"]["bytes"]) == jpeg
    assert content[2] == {"text": "What is in these?"}


def test_system_prompt_and_inference_config_arrive(server: BedrockServer) -> None:
    request = ChatRequest(
        messages=(Message("user", "Hello"), Message("assistant", "Hi."), Message("user", "Again")),
        system="You are terse.",
        max_tokens=100,
        temperature=0.3,
    )

    events = collect("test.echo", request)

    assert "".join(event.text for event in events if isinstance(event, Delta)) == "Again"
    recorded = server.requests[-1]
    assert recorded.path == "/model/test.echo/converse-stream"
    assert recorded.model_id == "test.echo"
    assert recorded.body["system"] == [{"text": "You are terse."}]
    assert recorded.body["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.3}
    assert [message["role"] for message in recorded.body["messages"]] == ["user", "assistant", "user"]
    assert recorded.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTESTTESTTEST/")


def test_unset_temperature_and_system_and_empty_text_are_left_out(server: BedrockServer) -> None:
    png = image_bytes("PNG", "green")
    collect("test.echo", ChatRequest(messages=(Message("user", "", images=(Image("image/png", png),)),)))

    body = server.requests[-1].body
    assert body["inferenceConfig"] == {"maxTokens": 1024}
    assert "system" not in body
    assert [list(block) for block in body["messages"][0]["content"]] == [["image"]]


def test_model_id_is_url_decoded_by_the_server(server: BedrockServer) -> None:
    arn = "arn:aws:bedrock:us-east-1::foundation-model/vendor.model-v1:0"

    _, error = collect_until_error(arn)

    assert server.requests[-1].model_id == arn
    assert error.code == "bad_request"
    assert "The provided model identifier is invalid." in error.message


def test_concurrent_streams_share_one_client(server: BedrockServer) -> None:
    results: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        text = "".join(event.text for event in collect("test.ok") if isinstance(event, Delta))
        with lock:
            results.append(text)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == [OK_ANSWER] * 8
    assert len(bedrock._clients) == 1


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "exception", "code", "status"),
    [
        ("test.validation", "ValidationException", "bad_request", 400),
        ("test.denied", "AccessDeniedException", "auth", 403),
        ("test.throttle", "ThrottlingException", "throttled", 429),
        ("test.notfound", "ResourceNotFoundException", "not_found", 404),
        ("test.error.ServiceQuotaExceededException", "ServiceQuotaExceededException", "throttled", 400),
        ("test.error.ModelTimeoutException", "ModelTimeoutException", "timeout", 408),
        ("test.error.ExpiredTokenException", "ExpiredTokenException", "auth", 403),
        ("test.error.ServiceUnavailableException", "ServiceUnavailableException", "upstream", 503),
        ("test.error.InternalServerException", "InternalServerException", "upstream", 500),
        ("test.error.ModelNotReadyException", "ModelNotReadyException", "upstream", 429),
        ("test.error.ModelErrorException", "ModelErrorException", "upstream", 424),
    ],
)
def test_http_errors_become_provider_errors(
    server: BedrockServer, model_id: str, exception: str, code: str, status: int
) -> None:
    events, error = collect_until_error(model_id)

    assert events == []
    assert (error.code, error.status) == (code, status)
    assert error.message.startswith(f"{exception}: ")


def test_http_error_keeps_the_upstream_message(server: BedrockServer) -> None:
    _, error = collect_until_error("test.denied")

    assert error.message == (
        "AccessDeniedException: You don't have access to the model with the specified model ID (test.denied)."
    )


@pytest.mark.parametrize(
    ("model_id", "code"),
    [("test.midstream", "upstream"), ("test.midstream.throttlingException", "throttled")],
)
def test_midstream_exception_after_deltas(server: BedrockServer, model_id: str, code: str) -> None:
    events, error = collect_until_error(model_id)

    assert events == [Delta(text) for text in words(OK_ANSWER)[:2]]
    assert error.code == code
    assert error.message.endswith(STREAM_ERROR_MESSAGE)


def test_no_credentials_is_an_auth_error(server: BedrockServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    bedrock.reset_clients()

    _, error = collect_until_error("test.ok")

    assert error.code == "auth"
    assert error.message == bedrock.NO_CREDENTIALS_MESSAGE
    assert server.requests == []


def test_read_timeout_mid_stream(server: BedrockServer) -> None:
    _, error = collect_until_error("test.hang", ask(read_timeout_s=0.3))

    assert error.code == "timeout"


def test_unreachable_endpoint(server: BedrockServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", f"http://127.0.0.1:{port}")

    _, error = collect_until_error("test.ok", ask(connect_timeout_s=1))

    assert error.code == "upstream"
    assert error.message.startswith("cannot reach Bedrock endpoint http://127.0.0.1:")


# --- cancellation ----------------------------------------------------------------------------------


def test_cancel_from_another_thread_wakes_a_blocked_read(server: BedrockServer) -> None:
    cancel = Cancellation()
    events: list[StreamEvent] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            events.extend(bedrock.stream(target("test.hang"), ask(read_timeout_s=60), cancel))
        except BaseException as exc:  # reported by the assertions below
            errors.append(exc)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    deadline = time.monotonic() + 5
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.requests, "the request never reached the server"
    time.sleep(0.1)  # let the consumer block in its read; any earlier cancel must end it too

    # Cancel from a third thread, as a request handler or a timer would: a callback that blocks
    # (closing the stream does, until the read ends) must not hide behind a blocked cancel() here.
    canceller = threading.Thread(target=cancel.cancel, daemon=True)
    canceller.start()
    consumer.join(timeout=2)
    canceller.join(timeout=2)

    assert not consumer.is_alive(), "cancel did not wake the blocked read"
    assert not canceller.is_alive(), "cancel() blocked"
    assert errors == []
    assert events == []


def test_cancel_between_events_stops_quietly(server: BedrockServer) -> None:
    cancel = Cancellation()
    events: list[StreamEvent] = []

    for event in bedrock.stream(target("test.slow"), ask(), cancel):
        events.append(event)
        if len(events) == 2:
            cancel.cancel()

    assert events == [Delta("tick 1 "), Delta("tick 2 ")]


def test_cancelled_before_start_sends_nothing(server: BedrockServer) -> None:
    cancel = Cancellation()
    cancel.cancel()

    assert list(bedrock.stream(target("test.ok"), ask(), cancel)) == []
    assert server.requests == []


def test_abandoned_stream_leaves_the_client_usable(server: BedrockServer) -> None:
    events = bedrock.stream(target("test.slow"), ask(), Cancellation())
    assert next(events) == Delta("tick 1 ")
    events.close()

    assert collect("test.ok")[-1] == Done("end_turn")


def test_late_cancel_does_not_touch_a_reused_connection(server: BedrockServer) -> None:
    finished = Cancellation()
    assert list(bedrock.stream(target("test.ok"), ask(), finished))[-1] == Done("end_turn")

    events = []
    for event in bedrock.stream(target("test.ok"), ask(), Cancellation()):
        events.append(event)
        if len(events) == 1:
            finished.cancel()  # the pool may have handed the first stream's connection to this one

    assert events[-1] == Done("end_turn")
    assert "".join(event.text for event in events if isinstance(event, Delta)) == OK_ANSWER


# --- the test server itself ------------------------------------------------------------------------


def test_frames_decode_with_botocores_own_parser() -> None:
    frames = [
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "héllo"}}),
        exception_frame("throttlingException", "slow down"),
        encode_frame({":event-type": "custom"}, b""),
    ]
    buffer = EventStreamBuffer()
    buffer.add_data(b"".join(frames))

    delta, exception, empty = list(buffer)

    assert delta.headers == {
        ":event-type": "contentBlockDelta",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert delta.to_response_dict()["status_code"] == 200
    assert b'"delta":{"text":"h\\u00e9llo"}' in delta.payload
    assert exception.headers[":exception-type"] == "throttlingException"
    assert exception.to_response_dict()["status_code"] == 400
    assert exception.payload == b'{"message": "slow down"}'
    assert (empty.headers, empty.payload) == ({":event-type": "custom"}, b"")


@pytest.mark.parametrize("position", [9, -1])  # inside the prelude CRC, inside the message CRC
def test_corrupted_frames_fail_botocores_checksums(position: int) -> None:
    frame = bytearray(event_frame("messageStart", {"role": "assistant"}))
    frame[position] ^= 0xFF
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(frame))

    with pytest.raises(ChecksumMismatch):
        next(buffer)


def test_non_streaming_converse_for_other_clients(server: BedrockServer) -> None:
    config = botocore.config.Config(retries={"total_max_attempts": 1})
    client = boto3.session.Session().client("bedrock-runtime", region_name=REGION, config=config)
    try:
        response = client.converse(modelId="test.ok", messages=[{"role": "user", "content": [{"text": "hi"}]}])
        with pytest.raises(client.exceptions.ValidationException):
            client.converse(modelId="test.validation", messages=[{"role": "user", "content": [{"text": "x"}]}])
    finally:
        client.close()

    assert response["output"]["message"]["content"] == [{"text": OK_ANSWER}]
    assert response["stopReason"] == "end_turn"
    assert response["usage"] == {"inputTokens": 1, "outputTokens": 9, "totalTokens": 10}
