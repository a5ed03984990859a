"""An evalscope ``perf`` API plugin that stress-tests Amazon Bedrock models through boto3 ``converse_stream``.

Selected with ``--api bedrock --model <model id> --url bedrock://<region>`` (see
``backend.stress.evalscope_entry.bedrock_args``); ``backend.stress.evalscope_entry`` registers it.
``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` and boto3's usual credential chain apply, as for the provider.

evalscope's request loop is asyncio and boto3 blocks, so each request runs start to finish in a
thread of a pool sized to the level's concurrency (one plugin instance per level). Timestamps are
``time.perf_counter()`` (evalscope's clock), taken in that thread:

* start: just before botocore writes the request (its ``before-send`` event, after signing), so
  neither the hop into the pool nor signing counts as time to first token;
* first token: the first event carrying text or reasoning text; each later such event adds an
  inter-token latency, as evalscope's OpenAI plugin does with SSE chunks;
* completion: the last event of the stream (the ``metadata`` event with usage);
* token counts: Bedrock's reported usage (``metadata.usage``), never a tokenizer.

A failure (before or during the stream) is a failed request whose error reads
``<category>: <message>`` as ``backend.providers.bedrock.provider_error`` words it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import boto3
import botocore.config
from botocore.client import BaseClient
from evalscope.perf.arguments import Arguments
from evalscope.perf.multi_turn_args import _sample_int_or_range
from evalscope.perf.plugin.api.base import ApiPluginBase
from evalscope.perf.plugin.registry import register_api
from evalscope.perf.utils.benchmark_util import BenchmarkData
from evalscope.utils.logger import get_logger

from backend.providers.base import ChatRequest, Image, Message, Target
from backend.providers.bedrock import converse_params, provider_error
from backend.stress.evalscope_args import BEDROCK_API

URL_SCHEME = "bedrock"
DEFAULT_MAX_TOKENS = 1024
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 120.0
_IMAGE_FORMATS = {"png", "jpeg", "gif", "webp"}

logger = get_logger()


def region_from_url(url: str) -> str | None:
    """The region of ``bedrock://<region>``; ``None`` (boto3's default region) for anything else."""
    parts = urlsplit(url)
    return (parts.hostname or None) if parts.scheme == URL_SCHEME else None


@register_api(BEDROCK_API)
class BedrockPlugin(ApiPluginBase):
    """Requests are Converse parameter dicts; ``process_request`` sends one through ``converse_stream``."""

    def __init__(self, param: Arguments) -> None:
        super().__init__(param)
        self.region = region_from_url(param.url)
        parallel = param.parallel if isinstance(param.parallel, int) and param.parallel > 0 else 1
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="bedrock")
        weakref.finalize(self, self._pool.shutdown, wait=False)
        # A client of our own, not the provider's cached one: its connection pool must hold one
        # connection per concurrent request, or urllib3 opens and discards extra ones under load.
        config = botocore.config.Config(
            retries={"total_max_attempts": 1},
            connect_timeout=param.connect_timeout or DEFAULT_CONNECT_TIMEOUT_S,
            read_timeout=param.read_timeout or DEFAULT_READ_TIMEOUT_S,
            max_pool_connections=parallel,
        )
        self.client: BaseClient = boto3.session.Session().client(
            "bedrock-runtime", region_name=self.region, config=config
        )
        self._sent = threading.local()
        self._errors_logged: set[str] = set()
        self._errors_lock = threading.Lock()
        self.client.meta.events.register("before-send.bedrock-runtime", self._mark_sent)

    # --- building requests --------------------------------------------------------------------

    def build_request(self, messages: list[dict] | str | dict, param: Arguments | None = None) -> dict:
        param = param or self.param
        if isinstance(messages, dict):  # a whole request body from a line_by_line file
            messages = messages.get("messages") or messages.get("prompt") or ""
        if isinstance(messages, str):
            chat_messages: list[Message] = [Message("user", messages)]
            system = None
        else:
            system = _system_text(messages)
            chat_messages = [_message(m) for m in messages if m.get("role") in ("user", "assistant")]
        max_tokens = _sample_int_or_range(param.max_tokens) if param.max_tokens is not None else None
        request = ChatRequest(
            messages=tuple(chat_messages),
            system=system,
            max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
            temperature=param.temperature,
            stream=param.stream is not False,
        )
        target = Target(key=f"bedrock:{param.model}", provider="bedrock", model_id=param.model, region=self.region)
        body = converse_params(target, request)
        if param.top_p is not None:
            body["inferenceConfig"]["topP"] = param.top_p
        if param.stop:
            body["inferenceConfig"]["stopSequences"] = list(param.stop)
        body["stream"] = request.stream  # for evalscope's bookkeeping; removed before sending
        return body

    def set_request_max_tokens(self, request: dict, max_tokens: int) -> None:
        request["inferenceConfig"]["maxTokens"] = max_tokens

    def parse_responses(self, responses: list[dict], request: str | None = None, **kwargs: Any) -> tuple[int, int]:
        """Token counts of a reply, from the usage Bedrock reported (``process_request`` sets them already)."""
        for response in reversed(responses or []):
            usage = response.get("usage") if isinstance(response, dict) else None
            if usage:
                return usage.get("inputTokens") or 0, usage.get("outputTokens") or 0
        return 0, 0

    # --- sending ------------------------------------------------------------------------------

    async def process_request(
        self, client_session: aiohttp.ClientSession, url: str, headers: dict, body: dict
    ) -> BenchmarkData:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, body)

    def _log_failure(self, error: str) -> None:
        with self._errors_lock:
            if error in self._errors_logged:
                return
            self._errors_logged.add(error)
        logger.error(f"Bedrock request failed: {error}")

    def _mark_sent(self, **_kwargs: Any) -> None:
        self._sent.at = time.perf_counter()

    def _call(self, body: dict) -> BenchmarkData:
        params = {key: value for key, value in body.items() if key != "stream"}
        stream = body.get("stream", True)
        output = BenchmarkData(is_stream=stream, request=_request_text(params))
        self._sent.at = None
        entered = time.perf_counter()
        try:
            if stream:
                self._stream(params, output)
            else:
                self._converse(params, output)
        except Exception as exc:
            error = provider_error(exc)
            output.success = False
            output.error = f"{error.code}: {error.message}"
            output.status_code = error.status
        if not output.success:
            # evalscope's per-request table has no error column; like its own decision plugin, keep the
            # reason in the response messages, and log each distinct reason once per level.
            output.response_messages.append({"evalscope_error": output.error, "http_status": output.status_code})
            self._log_failure(output.error)
        if not output.start_time:
            output.start_time = self._sent.at or entered
        if output.completed_time < output.start_time:
            output.completed_time = time.perf_counter()
        return output

    def _stream(self, params: dict, output: BenchmarkData) -> None:
        response = self.client.converse_stream(**params)
        start = output.start_time = self._sent.at or time.perf_counter()
        last_event = start
        last_output: float | None = None
        text: list[str] = []
        events = response["stream"]
        try:
            for event in events:
                now = time.perf_counter()
                last_event = now
                if "contentBlockDelta" in event:
                    delta = event["contentBlockDelta"].get("delta", {})
                    piece = delta.get("text") or delta.get("reasoningContent", {}).get("text") or ""
                    if piece:
                        if last_output is None:
                            output.first_chunk_latency = now - start
                        else:
                            output.inter_chunk_latency.append(now - last_output)
                        last_output = now
                        text.append(piece)
                    if last_output is not None:
                        output.n_decode_chunks += 1
                elif "metadata" in event and "usage" in event["metadata"]:
                    usage = event["metadata"]["usage"]
                    output.prompt_tokens = usage.get("inputTokens")
                    output.completion_tokens = usage.get("outputTokens")
                    output.response_messages.append({"usage": usage})
        finally:
            events.close()
        output.generated_text = "".join(text)
        output.completed_time = last_event
        output.query_latency = last_event - start
        if output.completion_tokens is None:
            output.success = False
            output.error = "upstream: the stream ended without usage (metadata) from Bedrock"
            return
        output.success = True

    def _converse(self, params: dict, output: BenchmarkData) -> None:
        response = self.client.converse(**params)
        now = time.perf_counter()
        start = output.start_time = self._sent.at or now
        output.completed_time = now
        output.query_latency = output.first_chunk_latency = now - start
        content = response.get("output", {}).get("message", {}).get("content", [])
        output.generated_text = "".join(
            block.get("text") or block.get("reasoningContent", {}).get("reasoningText", {}).get("text", "")
            for block in content
        )
        usage = response.get("usage", {})
        output.prompt_tokens = usage.get("inputTokens")
        output.completion_tokens = usage.get("outputTokens")
        output.response_messages.append({"usage": usage})
        output.success = True


def _system_text(messages: list[dict]) -> str | None:
    texts = [_content_parts(m.get("content"))[0] for m in messages if m.get("role") == "system"]
    return "\n".join(texts) or None


def _message(message: dict) -> Message:
    text, images = _content_parts(message.get("content"))
    return Message(message["role"], text, tuple(images))


def _content_parts(content: Any) -> tuple[str, list[Image]]:
    """Text and images of an OpenAI-style message content (a string or a list of parts)."""
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[Image] = []
    for part in content or []:
        if part.get("type") == "text":
            texts.append(part.get("text", ""))
        elif part.get("type") == "image_url":
            url = part.get("image_url")
            images.append(_image(url.get("url") if isinstance(url, dict) else url))
    return "".join(texts), images


def _image(url: str) -> Image:
    """An ``Image`` from a ``data:image/<format>;base64,...`` URL (evalscope's image datasets send those)."""
    header, sep, data = (url or "").partition(",")
    mime = header.removeprefix("data:").split(";", 1)[0].lower()
    if not sep or not header.startswith("data:") or mime.split("/")[-1] not in _IMAGE_FORMATS:
        raise ValueError("Bedrock needs images as data:image/(png|jpeg|gif|webp);base64 URLs")
    try:
        return Image(mime, base64.b64decode(data, validate=True))
    except binascii.Error as exc:
        raise ValueError(f"bad base64 image data: {exc}") from exc


def _request_text(params: dict) -> str:
    """The request as JSON for evalscope's records, with image bytes replaced by their size."""

    def default(value: Any) -> str:
        if isinstance(value, bytes | bytearray):
            return f"<{len(value)} bytes>"
        return str(value)

    return json.dumps(params, ensure_ascii=False, default=default)
