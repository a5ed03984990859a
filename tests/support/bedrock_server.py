"""A local HTTP server that speaks Amazon Bedrock Runtime's Converse wire protocol, for tests.

Real boto3 talks to it when ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` points at ``server.url`` (any dummy
credentials and region will do; the server does not check signatures)::

    with BedrockServer() as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", server.url)
        ...
        assert server.requests[0].model_id == "test.ok"

Routes:

``POST /model/{modelId}/converse-stream``
    The streaming Converse API. The response is HTTP/1.1 chunked, ``Content-Type:
    application/vnd.amazon.eventstream``, one AWS event-stream frame per chunk, flushed as written.
    Events are ``messageStart``, ``contentBlockDelta`` (text or ``reasoningContent``),
    ``contentBlockStop``, ``messageStop`` and ``metadata`` (usage, then metrics), with the payloads and
    the ``"p"`` padding field the real service sends. A failure mid-stream is a frame whose
    ``:message-type`` is ``exception`` (botocore raises ``EventStreamError``).
``POST /model/{modelId}/converse``
    The non-streaming Converse API: the same scenarios answered as one JSON document.

Errors before the stream are an HTTP status, a JSON body ``{"message": ...}`` and the header
``x-amzn-ErrorType: <Code>:<namespace>``, which botocore's rest-json parser turns into the modelled
exception class (``client.exceptions.ValidationException`` and so on).

Behaviour is chosen by the model id (exact match):

==================================  ===============================================================
``test.ok``                         "The quick brown fox jumps over the lazy dog." in 9 word deltas,
                                    ``delta_delay_s`` (default 10 ms) apart; stopReason ``end_turn``.
``test.reasoning``                  3 reasoning deltas and a signature delta (block 0), then the
                                    ``test.ok`` answer as text (block 1).
``test.echo``                       Answers, in one delta, with the blocks of the last user message
                                    joined by spaces in their order: text as is, each image as
                                    ``[image:<format>:<n> bytes]`` (``n`` = decoded byte count).
``test.slow``                       50 deltas ``"tick 1 "`` ... ``"tick 50 "``, ``slow_delay_s``
                                    (default 200 ms) apart.
``test.hang``                       Headers and ``messageStart``, then nothing until the client goes
                                    away or the server stops.
``test.midstream``                  2 deltas, then a ``modelStreamErrorException`` exception frame.
``test.midstream.<exceptionType>``  The same with another stream exception, e.g.
                                    ``test.midstream.throttlingException``.
``test.validation``                 400 ``ValidationException``.
``test.denied``                     403 ``AccessDeniedException``.
``test.throttle``                   429 ``ThrottlingException``.
``test.notfound``                   404 ``ResourceNotFoundException``.
``test.error.<Code>``               That error with its real status, e.g.
                                    ``test.error.ServiceUnavailableException`` (see ``ERROR_STATUS``).
``test.broken-frame``               2 deltas, then a frame with one payload byte flipped (its CRC fails).
``test.trickle``                    ``messageStart``, then the ``test.ok`` answer one byte a second.
``test.huge``                       ``HUGE_CHARS`` (10 million) "x" in 100 deltas, then ``end_turn``.
anything else                       400 ``ValidationException`` "The provided model identifier is
                                    invalid.", as the real service says.
==================================  ===============================================================

``inferenceConfig.maxTokens`` caps the number of deltas of ``test.ok``, ``test.reasoning`` (text part)
and ``test.slow``; when it cuts the answer short the stopReason is ``max_tokens``. Usage is counted
the simple way: ``inputTokens`` is the number of whitespace-separated words in the system prompt and
messages, ``outputTokens`` the number of deltas sent.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import socket
import string
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

EVENTSTREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
HUGE_CHARS = 10_000_000  # the answer of test.huge
ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"

# The HTTP status Bedrock Runtime answers each modelled (and a few unmodelled) error codes with.
ERROR_STATUS: dict[str, int] = {
    "ValidationException": 400,
    "ServiceQuotaExceededException": 400,
    "UnrecognizedClientException": 403,
    "ExpiredTokenException": 403,
    "InvalidSignatureException": 403,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ModelNotReadyException": 429,
    "ThrottlingException": 429,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}

_SHORTCUT_ERRORS: dict[str, tuple[str, str]] = {
    "test.validation": ("ValidationException", "The provided request is not valid (test.validation)."),
    "test.denied": (
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID (test.denied).",
    ),
    "test.throttle": ("ThrottlingException", "Too many requests, please wait before trying again."),
    "test.notfound": ("ResourceNotFoundException", "The requested model was not found (test.notfound)."),
}

OK_ANSWER = "The quick brown fox jumps over the lazy dog."
REASONING = ("Let me think. ", "The user wants the classic pangram. ", "I will answer with it.")
SLOW_DELTAS = 50
STREAM_ERROR_MESSAGE = "The model stream was interrupted (test.midstream)."

_STRING_HEADER = 7


# --- event-stream frames ---------------------------------------------------------------------------


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude, prelude CRC, string headers, payload, message CRC."""
    encoded_headers = b"".join(_encode_header(name, value) for name, value in headers.items())
    total_length = 12 + len(encoded_headers) + len(payload) + 4
    prelude = struct.pack(">II", total_length, len(encoded_headers))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + encoded_headers + payload
    return message + struct.pack(">I", binascii.crc32(message))


def _encode_header(name: str, value: str) -> bytes:
    name_bytes, value_bytes = name.encode(), value.encode()
    return (
        struct.pack(">B", len(name_bytes))
        + name_bytes
        + struct.pack(">BH", _STRING_HEADER, len(value_bytes))
        + value_bytes
    )


def event_frame(event_type: str, payload: dict[str, Any]) -> bytes:
    """A ``:message-type: event`` frame with a JSON payload, padded with ``"p"`` like the service does."""
    body = {**payload, "p": _padding()}
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_frame(headers, json.dumps(body, separators=(",", ":")).encode())


def exception_frame(exception_type: str, message: str) -> bytes:
    """A ``:message-type: exception`` frame; ``exception_type`` is the lower-camel member name."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_frame(headers, json.dumps({"message": message}).encode())


def _padding() -> str:
    return string.ascii_letters[: random.randint(1, 30)]


# --- what the server answers -----------------------------------------------------------------------


@dataclass
class RecordedRequest:
    path: str
    model_id: str  # URL-decoded
    body: dict[str, Any]  # the parsed JSON body; image bytes are still base64 text here
    headers: dict[str, str]


@dataclass
class _Plan:
    """What to answer to one request, independent of streaming or not."""

    http_error: tuple[str, str] | None = None  # (code, message)
    reasoning: list[str] = field(default_factory=list)
    deltas: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    stream_error: tuple[str, str] | None = None  # (exceptionType, message) after the deltas
    hang: bool = False
    broken_frame: bool = False  # the frame after the deltas has a flipped byte
    trickle_s: float = 0.0  # each byte after messageStart waits this long
    stop_reason: str = "end_turn"
    input_tokens: int = 0


def _plan_for(model_id: str, body: dict[str, Any], server: BedrockServer) -> _Plan:
    if model_id in _SHORTCUT_ERRORS:
        return _Plan(http_error=_SHORTCUT_ERRORS[model_id])
    if model_id.startswith("test.error."):
        code = model_id.removeprefix("test.error.")
        return _Plan(http_error=(code, f"{code} raised on request ({model_id})."))
    if not body.get("messages"):
        return _Plan(http_error=("ValidationException", "A conversation must start with a user message."))

    plan = _Plan(input_tokens=_count_input_words(body))
    if model_id == "test.ok":
        plan.deltas, plan.delay_s = _words(OK_ANSWER), server.delta_delay_s
    elif model_id == "test.reasoning":
        plan.reasoning, plan.deltas, plan.delay_s = list(REASONING), _words(OK_ANSWER), server.delta_delay_s
    elif model_id == "test.echo":
        plan.deltas = [_echo(body)]
    elif model_id == "test.slow":
        plan.deltas = [f"tick {n} " for n in range(1, SLOW_DELTAS + 1)]
        plan.delay_s = server.slow_delay_s
    elif model_id == "test.hang":
        plan.hang = True
    elif model_id == "test.broken-frame":
        plan.deltas, plan.broken_frame = _words(OK_ANSWER)[:2], True
    elif model_id == "test.trickle":
        plan.deltas, plan.trickle_s = _words(OK_ANSWER), 1.0
    elif model_id == "test.huge":
        plan.deltas = ["x" * (HUGE_CHARS // 100)] * 100
    elif model_id == "test.midstream" or model_id.startswith("test.midstream."):
        exception_type = model_id.removeprefix("test.midstream").lstrip(".") or "modelStreamErrorException"
        plan.deltas, plan.delay_s = _words(OK_ANSWER)[:2], server.delta_delay_s
        plan.stream_error = (exception_type, STREAM_ERROR_MESSAGE)
    else:
        return _Plan(http_error=("ValidationException", "The provided model identifier is invalid."))

    max_tokens = body.get("inferenceConfig", {}).get("maxTokens")
    capped = model_id in ("test.ok", "test.reasoning", "test.slow")
    if capped and max_tokens is not None and max_tokens < len(plan.deltas):
        plan.deltas, plan.stop_reason = plan.deltas[:max_tokens], "max_tokens"
    return plan


def _words(text: str) -> list[str]:
    first, *rest = text.split(" ")
    return [first, *(" " + word for word in rest)]


def _count_input_words(body: dict[str, Any]) -> int:
    texts = [block.get("text", "") for block in body.get("system", [])]
    for message in body.get("messages", []):
        texts.extend(block.get("text", "") for block in message.get("content", []))
    return sum(len(text.split()) for text in texts)


def _echo(body: dict[str, Any]) -> str:
    user_turns = [message for message in body["messages"] if message.get("role") == "user"]
    if not user_turns:
        return ""
    parts: list[str] = []
    for block in user_turns[-1].get("content", []):
        if "text" in block:
            parts.append(block["text"])
        elif "image" in block:
            image = block["image"]
            size = len(base64.b64decode(image.get("source", {}).get("bytes", "")))
            parts.append(f"[image:{image.get('format')}:{size} bytes]")
    return " ".join(parts)


# --- HTTP ------------------------------------------------------------------------------------------


class _ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        parts = self.path.split("?", 1)[0].split("/")
        if len(parts) != 4 or parts[1] != "model" or parts[3] not in ("converse-stream", "converse"):
            self._send_error("UnknownOperationException", "No such operation.", status=404)
            return
        model_id = unquote(parts[2])
        try:
            body = json.loads(raw_body or b"{}")
        except ValueError:
            self._send_error("SerializationException", "The request body is not valid JSON.", status=400)
            return
        owner = self.server.owner
        owner.record(RecordedRequest(self.path, model_id, body, dict(self.headers.items())))

        plan = _plan_for(model_id, body, owner)
        if plan.http_error:
            self._send_error(*plan.http_error)
        elif parts[3] == "converse":
            self._send_converse(plan)
        else:
            try:
                self._send_stream(plan)
            except (_ClientGone, ConnectionError):
                self.close_connection = True

    # -- responses

    def _send_error(self, code: str, message: str, *, status: int | None = None) -> None:
        payload = json.dumps({"message": message}).encode()
        self.send_response(status or ERROR_STATUS.get(code, 400))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("x-amzn-ErrorType", f"{code}:{ERROR_NAMESPACE}")
        self.end_headers()
        self.wfile.write(payload)

    def _send_converse(self, plan: _Plan) -> None:
        if plan.hang:
            self._wait_until_gone()
            return
        if plan.stream_error:
            code = plan.stream_error[0][:1].upper() + plan.stream_error[0][1:]
            self._send_error(code, plan.stream_error[1], status=ERROR_STATUS.get(code, 424))
            return
        content: list[dict[str, Any]] = []
        if plan.reasoning:
            content.append({"reasoningContent": {"reasoningText": {"text": "".join(plan.reasoning)}}})
        content.append({"text": "".join(plan.deltas)})
        document = {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": plan.stop_reason,
            "usage": _usage(plan.input_tokens, len(plan.deltas)),
            "metrics": {"latencyMs": 1},
        }
        payload = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(payload)

    def _send_stream(self, plan: _Plan) -> None:
        started = time.monotonic()
        self.send_response(200)
        self.send_header("Content-Type", EVENTSTREAM_CONTENT_TYPE)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()

        self._write_chunk(event_frame("messageStart", {"role": "assistant"}))
        if plan.hang:
            self._wait_until_gone()
            return
        for index, frame in enumerate(self._content_frames(plan)):
            if index and plan.delay_s:
                self._pause(plan.delay_s)
            if plan.trickle_s:
                for byte in range(len(frame)):
                    self._pause(plan.trickle_s)
                    self._write_chunk(frame[byte:byte + 1])
                continue
            self._write_chunk(frame)
        if plan.broken_frame:
            frame = bytearray(event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " z"}}))
            frame[-8] ^= 0xFF  # inside the payload: the message CRC no longer matches
            self._write_chunk(bytes(frame))
            self.wfile.write(b"0\r\n\r\n")
            return
        if plan.stream_error:
            self._write_chunk(exception_frame(*plan.stream_error))
        else:
            latency_ms = int((time.monotonic() - started) * 1000)
            self._write_chunk(event_frame("messageStop", {"stopReason": plan.stop_reason}))
            usage = _usage(plan.input_tokens, len(plan.deltas))
            self._write_chunk(event_frame("metadata", {"usage": usage, "metrics": {"latencyMs": latency_ms}}))
        self.wfile.write(b"0\r\n\r\n")

    @staticmethod
    def _content_frames(plan: _Plan) -> Iterator[bytes]:
        index = 0
        if plan.reasoning:
            for text in plan.reasoning:
                delta = {"reasoningContent": {"text": text}}
                yield event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": delta})
            signature = {"reasoningContent": {"signature": "c2lnbmF0dXJl"}}
            yield event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": signature})
            yield event_frame("contentBlockStop", {"contentBlockIndex": index})
            index += 1
        for text in plan.deltas:
            yield event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": text}})
        if not plan.stream_error:
            yield event_frame("contentBlockStop", {"contentBlockIndex": index})

    def _write_chunk(self, data: bytes) -> None:
        if self.server.owner.stopping.is_set():
            raise _ClientGone
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _pause(self, seconds: float) -> None:
        if self.server.owner.stopping.wait(seconds):
            raise _ClientGone

    def _wait_until_gone(self) -> None:
        """Block until the client closes its end (a readable socket that reads EOF) or the server stops."""
        self.close_connection = True
        self.connection.settimeout(0.05)
        while not self.server.owner.stopping.is_set():
            try:
                if not self.connection.recv(1, socket.MSG_PEEK):
                    return
            except TimeoutError:
                continue
            except OSError:
                return
            # The client sent more bytes on a connection we are still answering; keep waiting.
            self.server.owner.stopping.wait(0.05)


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens,
    }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: BedrockServer

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address


class BedrockServer:
    """A threaded Bedrock Runtime look-alike on a free loopback port; use it as a context manager."""

    HUGE_CHARS = HUGE_CHARS

    def __init__(self, *, delta_delay_s: float = 0.01, slow_delay_s: float = 0.2) -> None:
        self.delta_delay_s = delta_delay_s
        self.slow_delay_s = slow_delay_s
        self.requests: list[RecordedRequest] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("BedrockServer is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def start(self) -> BedrockServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, end streams in progress (hung ones included) and close the listening socket."""
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> BedrockServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
