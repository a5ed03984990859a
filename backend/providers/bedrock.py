"""Amazon Bedrock through the Converse streaming API (boto3 ``bedrock-runtime`` ``converse_stream``).

Credentials, endpoint and region come from boto3's usual chain (environment, shared files, instance
roles); ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` points the client elsewhere, which the tests use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import urllib3.exceptions
from botocore.client import BaseClient
from botocore.eventstream import EventStream
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    ReadTimeoutError,
)

from backend.providers.base import (
    Cancellation,
    ChatRequest,
    Delta,
    Done,
    ErrorCode,
    Message,
    ProviderError,
    Reasoning,
    StreamEvent,
    Target,
    Usage,
    code_for_status,
)

log = logging.getLogger(__name__)

# Error codes as botocore reports them: the modelled exception name for errors before the stream,
# the lower-camel event member name (``modelStreamErrorException``) for exception frames in it.
_ERROR_CODES: dict[str, ErrorCode] = {
    "AccessDeniedException": "auth",
    "UnrecognizedClientException": "auth",
    "ExpiredTokenException": "auth",
    "InvalidSignatureException": "auth",
    "ResourceNotFoundException": "not_found",
    "ThrottlingException": "throttled",
    "ServiceQuotaExceededException": "throttled",
    "TooManyRequestsException": "throttled",
    "ModelTimeoutException": "timeout",
    "ValidationException": "bad_request",
    "InternalServerException": "upstream",
    "ServiceUnavailableException": "upstream",
    "ModelNotReadyException": "upstream",
    "ModelStreamErrorException": "upstream",
}

NO_CREDENTIALS_MESSAGE = "no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"

_clients: dict[tuple[Any, ...], BaseClient] = {}
_clients_lock = threading.Lock()


def stream(target: Target, request: ChatRequest, cancel: Cancellation) -> Iterator[StreamEvent]:
    """Stream one Converse call as ``Delta``/``Reasoning`` events, then ``Usage`` and ``Done``.

    After ``cancel`` the iteration ends quietly, without ``Done``. A cancel that arrives while the
    request itself is in flight (before the response headers) takes effect when they arrive; the
    connect and read timeouts bound that wait.
    """
    if cancel.is_set():
        return
    try:
        client = _client_for(target.region, request.connect_timeout_s, request.read_timeout_s)
        response = client.converse_stream(**converse_params(target, request))
    except Exception as exc:
        if cancel.is_set():
            return
        raise provider_error(exc) from exc

    events: EventStream = response["stream"]
    cancel.on_cancel(lambda: _interrupt(events))
    stop_reason: str | None = None
    try:
        for event in events:
            if cancel.is_set():
                return
            if "contentBlockDelta" in event:
                delta = event["contentBlockDelta"].get("delta", {})
                if delta.get("text"):
                    yield Delta(delta["text"])
                elif delta.get("reasoningContent", {}).get("text"):
                    yield Reasoning(delta["reasoningContent"]["text"])
            elif "messageStop" in event:
                stop_reason = event["messageStop"].get("stopReason")
            elif "metadata" in event and "usage" in event["metadata"]:
                usage = event["metadata"]["usage"]
                yield Usage(usage.get("inputTokens"), usage.get("outputTokens"))
    except Exception as exc:
        if cancel.is_set():
            return  # the read was woken by our own cancel callback
        raise provider_error(exc) from exc
    finally:
        events.close()
    if not cancel.is_set():
        yield Done(stop_reason)


def converse_params(target: Target, request: ChatRequest) -> dict[str, Any]:
    """The keyword arguments of ``converse``/``converse_stream`` for a neutral chat request."""
    inference_config: dict[str, Any] = {"maxTokens": request.max_tokens}
    if request.temperature is not None:
        inference_config["temperature"] = request.temperature
    params: dict[str, Any] = {
        "modelId": target.model_id,
        "messages": [_converse_message(message) for message in request.messages],
        "inferenceConfig": inference_config,
    }
    if request.system:
        params["system"] = [{"text": request.system}]
    return params


def _converse_message(message: Message) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"image": {"format": image.format, "source": {"bytes": image.data}}} for image in message.images
    ]
    if message.text:
        content.append({"text": message.text})
    return {"role": message.role, "content": content}


def provider_error(exc: Exception) -> ProviderError:
    """The ``ProviderError`` for anything boto3, botocore or urllib3 raised around a Converse call."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ClientError):  # modelled errors and, as EventStreamError, exception frames
        return _client_error(exc)
    if isinstance(exc, NoCredentialsError):
        return ProviderError("auth", NO_CREDENTIALS_MESSAGE)
    if isinstance(exc, ReadTimeoutError | urllib3.exceptions.ReadTimeoutError):
        return ProviderError("timeout", "Bedrock did not answer within the read timeout")
    if isinstance(exc, ConnectTimeoutError):
        return ProviderError("timeout", f"connecting to Bedrock timed out ({_endpoint_of(exc)})")
    if isinstance(exc, EndpointConnectionError):
        return ProviderError("upstream", f"cannot reach Bedrock endpoint {_endpoint_of(exc)}")
    if isinstance(exc, NoRegionError):
        return ProviderError("bad_request", "no AWS region configured for this Bedrock model")
    if isinstance(exc, ParamValidationError):
        return ProviderError("bad_request", str(exc))
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return ProviderError("upstream", f"the connection to Bedrock broke: {exc}")
    if isinstance(exc, BotoCoreError):
        return ProviderError("upstream", str(exc))
    return ProviderError("upstream", f"{type(exc).__name__}: {exc}")


def _client_error(exc: ClientError) -> ProviderError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "")
    name = code[:1].upper() + code[1:]
    message = error.get("Message") or f"Bedrock answered {name or 'an error'}"
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if name in _ERROR_CODES:
        category = _ERROR_CODES[name]
    elif name == "ModelErrorException":
        # The model itself failed; it reports the status it answered with, which says whose fault it was.
        original = exc.response.get("originalStatusCode")
        category = code_for_status(original) if isinstance(original, int) else "upstream"
    elif isinstance(status, int) and status >= 400:
        category = code_for_status(status)
    else:
        category = "upstream"
    return ProviderError(category, f"{name}: {message}" if name else message, status=status)


def _endpoint_of(exc: BotoCoreError) -> str:
    return str(getattr(exc, "kwargs", {}).get("endpoint_url", "unknown endpoint"))


def _interrupt(events: EventStream) -> None:
    """Wake a reader blocked on ``events`` in another thread.

    ``EventStream.close()`` does not: it waits for the blocked read (up to the read timeout) before
    closing. Shutting down the socket's read side makes that read return at once; the reader then
    sees the stream end, notices the cancel and closes the stream itself.
    """
    raw = getattr(events, "_raw_stream", None)
    try:
        raw.shutdown()  # urllib3 >= 2.3
        return
    except (AttributeError, ValueError, RuntimeError, OSError):
        pass
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is None:
        log.debug("cannot interrupt a Bedrock stream: no socket to shut down")
        return
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


def _client_for(region: str | None, connect_timeout_s: float, read_timeout_s: float) -> BaseClient:
    # The endpoint variables are part of the key so that pointing them elsewhere gives a new client.
    key = (
        region,
        connect_timeout_s,
        read_timeout_s,
        os.environ.get("AWS_ENDPOINT_URL_BEDROCK_RUNTIME"),
        os.environ.get("AWS_ENDPOINT_URL"),
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            config = botocore.config.Config(
                retries={"total_max_attempts": 1},
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                max_pool_connections=64,
            )
            # A session of its own: boto3's default session caches the first credentials it resolves
            # and is not safe to share between threads.
            client = boto3.session.Session().client("bedrock-runtime", region_name=region, config=config)
            _clients[key] = client
    return client


def reset_clients() -> None:
    """Forget cached clients (closing their connections), so new ones see a changed environment."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()
