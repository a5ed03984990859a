"""Reading an OpenAI chat completions request and deciding what the simulated model answers."""

from __future__ import annotations

import math
import mimetypes
import random
import re
from dataclasses import dataclass, field

from backend.simulator.engine import stable_seed
from backend.simulator.profiles import Behavior, Profile

# Each image part counts as this many input tokens, on top of ceil(text characters / 4).
TOKENS_PER_IMAGE = 256
CHARS_PER_TOKEN = 4
PROMPT_PREVIEW_CHARS = 200

_VOCABULARY_TEXT = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip "
    "ex ea commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla "
    "pariatur excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim "
    "id est laborum"
)
VOCABULARY_TOKENS = tuple(f" {word}" for word in _VOCABULARY_TEXT.split())

_ECHO_TOKEN = re.compile(r"\s*\S+|\s+")
_DATA_URL_MIME = re.compile(r"^data:([^;,]+)")


class ChatRequestError(ValueError):
    """The request body is not a chat completions request we can serve (HTTP 400)."""


@dataclass(slots=True)
class ChatRequest:
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    min_tokens: int | None
    ignore_eos: bool
    prompt_text: str
    last_user_text: str
    input_tokens: int
    images: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PlannedCompletion:
    """The tokens a request will receive; the first ``reasoning_tokens`` go to ``reasoning_content``."""

    tokens: list[str]
    reasoning_tokens: int
    finish_reason: str


def _optional_int(body: dict, key: str, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ChatRequestError(f"'{key}' must be an integer >= {minimum}")
    return value


def _image_mime(part: dict) -> str:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise ChatRequestError("image_url part without a url")
    match = _DATA_URL_MIME.match(url)
    if match:
        return match.group(1).lower()
    return mimetypes.guess_type(url)[0] or "application/octet-stream"


def _message_texts(message: object, images: list[str]) -> list[str]:
    if not isinstance(message, dict):
        raise ChatRequestError("each message must be an object")
    content = message.get("content")
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise ChatRequestError("message content must be a string or a list of parts")
    texts = []
    for part in content:
        if not isinstance(part, dict):
            raise ChatRequestError("content parts must be objects")
        part_type = part.get("type")
        if part_type == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ChatRequestError("text part without a string 'text'")
            texts.append(text)
        elif part_type == "image_url":
            images.append(_image_mime(part))
        else:
            raise ChatRequestError(f"unsupported content part type {part_type!r}")
    return texts


def parse_chat_request(body: object) -> ChatRequest:
    if not isinstance(body, dict):
        raise ChatRequestError("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ChatRequestError("'model' must be a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("'messages' must be a non-empty list")

    images: list[str] = []
    all_texts: list[str] = []
    last_user_text = ""
    for message in messages:
        texts = _message_texts(message, images)
        all_texts.extend(texts)
        if message.get("role") == "user":
            last_user_text = "".join(texts)

    max_tokens = _optional_int(body, "max_tokens", 1)
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_completion_tokens", 1)
    min_tokens = _optional_int(body, "min_tokens", 0)
    if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
        raise ChatRequestError("'min_tokens' must not exceed 'max_tokens'")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ChatRequestError("'stream_options' must be an object")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float)
    ):
        raise ChatRequestError("'temperature' must be a number")

    for text in (model, *all_texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ChatRequestError("text is not valid Unicode (it holds a lone surrogate)") from None
    text_chars = sum(len(text) for text in all_texts)
    return ChatRequest(
        model=model,
        stream=bool(body.get("stream", False)),
        include_usage=bool(stream_options.get("include_usage", False)),
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=bool(body.get("ignore_eos", False)),
        prompt_text="\n".join(all_texts),
        last_user_text=last_user_text,
        input_tokens=math.ceil(text_chars / CHARS_PER_TOKEN) + TOKENS_PER_IMAGE * len(images),
        images=images,
    )


def plan_completion(profile: Profile, seed: int, request: ChatRequest, reply: str | None = None) -> PlannedCompletion:
    """Decide the answer; it depends only on (seed, model, prompt text) and the length limits.

    ``reply``: the text an answering or judge profile says (``backend/simulator/answers.py``), cut at
    ``max_tokens`` like any answer.

    Length: with ``ignore_eos`` or ``min_tokens`` the answer is exactly ``max_tokens`` long (or, without
    ``max_tokens``, the profile's longest answer, never shorter than ``min_tokens``); otherwise a seeded
    length in the profile's range, capped at ``max_tokens``. Reasoning tokens count towards the length.
    """
    rng = random.Random(stable_seed(seed, request.model, request.prompt_text))
    cap = request.max_tokens

    if profile.behavior is Behavior.ECHO or reply is not None:
        tokens = _ECHO_TOKEN.findall(request.last_user_text if reply is None else reply)
        if cap is not None and len(tokens) >= cap:
            return PlannedCompletion(tokens[:cap], 0, "length")
        return PlannedCompletion(tokens, 0, "stop")

    reasoning = 0
    if profile.reasoning_max_tokens > 0:
        reasoning = rng.randint(profile.reasoning_min_tokens, profile.reasoning_max_tokens)
    natural = reasoning + rng.randint(profile.min_output_tokens, profile.max_output_tokens)
    if profile.behavior is Behavior.MIDSTREAM_ERROR:
        natural = profile.midstream_error_after

    if request.ignore_eos or request.min_tokens is not None:
        if cap is not None:
            length, finish_reason = cap, "length"
        else:
            length, finish_reason = (
                max(profile.max_output_tokens + reasoning, request.min_tokens or 0),
                "stop",
            )
    elif cap is not None and natural >= cap:
        length, finish_reason = cap, "length"
    else:
        length, finish_reason = natural, "stop"
    if profile.behavior is Behavior.MIDSTREAM_ERROR:
        length = min(length, profile.midstream_error_after)

    tokens = [VOCABULARY_TOKENS[rng.randrange(len(VOCABULARY_TOKENS))] for _ in range(length)]
    return PlannedCompletion(tokens, min(reasoning, length), finish_reason)
