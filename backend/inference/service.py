"""Fan one prompt out to several models, merge their streams into one SSE stream, store the run.

``prepare`` turns a validated body into a ``Plan`` (or raises ApiError naming the field); ``relay``
runs a plan and yields SSE bytes. Each model is pumped by its own thread (a greenlet under gunicorn's
gevent worker; there the OpenAI-compatible provider reads its socket from the event loop itself) into
one mailbox; the generator merges, times out slow models, sends heartbeats and, when the client goes
away (GeneratorExit) or a model overstays, cancels the upstream calls. The run's rows go through the
process's ``RunWriter`` (``storage.py``), which commits many runs at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from flask import Flask, current_app
from sqlalchemy.orm import selectinload

from backend.catalog.registry import ModelSpec
from backend.catalog.service import Catalog
from backend.cooperative import gevent_loop, start_background
from backend.db import db
from backend.errors import ApiError
from backend.inference.disconnect import watch_for_departure
from backend.inference.media import MediaError, decode_base64, decode_image, sample_video_frames
from backend.inference.models import InferenceResult, InferenceRun
from backend.inference.schema import InferenceBody
from backend.inference.storage import RunWriter
from backend.metrics import observe_answer
from backend.providers import streamer_for
from backend.providers.base import (
    Cancellation,
    ChatRequest,
    Delta,
    Done,
    Image,
    Message,
    ProviderError,
    Reasoning,
    Target,
    Usage,
)
from backend.security import auth as security_auth
from backend.security.targets import check_target
from backend.sse import PING, sse_event, sse_frame_prefix
from backend.text import scrub

log = logging.getLogger(__name__)


_END = object()  # a pump's last item
_CLIENT_GONE = object()  # the watcher saw the client close its connection


@dataclass
class PlannedModel:
    key: str
    name: str
    provider: str
    request: ChatRequest
    spec: ModelSpec | None = None
    manual_target: Target | None = None


@dataclass
class Plan:
    run_id: str
    models: list[PlannedModel]
    prompt: str
    system: str | None
    params: dict[str, Any]
    model_timeout_s: float
    heartbeat_s: float
    max_stored_chars: int
    created_by: str | None = field(default_factory=security_auth.created_by)  # planned in the request


# --- planning ------------------------------------------------------------------------------------


def _conversation(body: InferenceBody) -> tuple[list[tuple[str, str]], str | None, str]:
    """(role, text) turns, the system prompt, and the text to store as "the prompt"."""
    system = body.system
    if body.messages is not None:
        turns = []
        for turn in body.messages:
            if turn.role == "system":
                system = turn.content if system is None else f"{system}\n\n{turn.content}"
            else:
                turns.append((turn.role, turn.content))
        if not turns or turns[-1][0] != "user":
            raise ApiError("messages: the last message must come from the user", field="messages")
        if not turns[-1][1].strip():
            raise ApiError("messages: the last user message is empty", field="messages")
        return turns, system, turns[-1][1]
    text = body.text if body.text is not None else body.prompt
    field_name = "prompt" if body.prompt is not None else "text"
    if text is None or not text.strip():
        raise ApiError(f"{field_name}: the prompt is empty; send text, prompt or messages", field=field_name)
    return [("user", text)], system, text


def _check_lengths(body: InferenceBody, limit: int) -> None:
    """Prompts are stored whole, so they are bounded: each text field, and the messages together."""
    for name in ("text", "prompt", "system"):
        value = getattr(body, name)
        if value is not None and len(value) > limit:
            raise ApiError(f"{name}: {len(value):,} characters, more than the limit of {limit:,} "
                           "(inference.max_prompt_chars)", field=name)
    if body.messages is not None:
        total = sum(len(turn.content) for turn in body.messages)
        if total > limit:
            raise ApiError(f"messages: {total:,} characters in all, more than the limit of {limit:,} "
                           "(inference.max_prompt_chars)", field="messages")


def _media(body: InferenceBody, settings: dict[str, Any]) -> tuple[list[Image], dict[str, Any]]:
    if len(body.images) > settings["max_images"]:
        raise ApiError(f"images: at most {settings['max_images']} images per request", field="images")
    images: list[Image] = []
    for index, value in enumerate(body.images):
        try:
            images.append(decode_image(value, max_bytes=int(settings["max_image_bytes"]),
                                       what=f"images[{index}]"))
        except MediaError as exc:
            raise ApiError(str(exc), field=f"images[{index}]") from None
    info: dict[str, Any] = {"images": [{"mime": i.mime, "bytes": len(i.data)} for i in images]}
    if body.video is not None:
        try:
            data = decode_base64(body.video, max_bytes=int(settings["max_video_bytes"]), what="video")
            frames = sample_video_frames(data, frames=int(settings["video_frames"]))
        except MediaError as exc:
            raise ApiError(str(exc), field="video") from None
        images.extend(frames)
        info["video"] = {"bytes": len(data), "frames": len(frames)}
    return images, info


def prepare(body: InferenceBody, catalog: Catalog, settings: dict[str, Any]) -> Plan:
    keys = list(body.models) + ([body.model] if body.model else [])
    if not keys and body.manual_config is None:
        raise ApiError("models: name at least one model (or give manual_config)", field="models",
                       details={"known": catalog.known_keys()})
    if len(set(keys)) != len(keys):
        raise ApiError("models: a model is named twice", field="models")
    specs: list[ModelSpec] = []
    for index, key in enumerate(keys):
        spec = catalog.get(key)
        if spec is None:
            field_name = "model" if body.model == key and not body.models else f"models[{index}]"
            raise ApiError(f"{field_name}: unknown model {key!r}; known models: {', '.join(catalog.known_keys())}",
                           field=field_name, details={"known": catalog.known_keys()})
        specs.append(spec)

    turns, system, prompt = _conversation(body)
    _check_lengths(body, int(settings["max_prompt_chars"]))
    images, media_info = _media(body, settings)
    if images:
        media_field = "images" if body.images else "video"
        blind = [spec.key for spec in specs if not spec.capabilities.images]
        if blind:
            raise ApiError(
                f"{media_field}: {', '.join(blind)} cannot read images"
                + (" (video is sent as frames)" if media_field == "video" else "")
                + "; choose image-capable models or remove the media",
                field=media_field, details={"models": blind})

    limit = int(settings["max_tokens_limit"])
    if body.max_tokens is not None and body.max_tokens > limit:
        raise ApiError(f"max_tokens: at most {limit}", field="max_tokens")
    messages = tuple(
        Message(role=role, text=text, images=tuple(images) if i == len(turns) - 1 else ())  # type: ignore[arg-type]
        for i, (role, text) in enumerate(turns)
    )
    wanted = body.max_tokens or int(settings["default_max_tokens"])

    def chat_request(max_tokens: int, streaming: bool = True) -> ChatRequest:
        return ChatRequest(messages=messages, system=system, max_tokens=max_tokens,
                           temperature=body.temperature, stream=streaming,
                           connect_timeout_s=float(settings["connect_timeout_s"]),
                           read_timeout_s=float(settings["model_timeout_s"]))

    planned = [
        PlannedModel(key=spec.key, name=spec.name, provider=spec.provider, spec=spec,
                     request=chat_request(min(wanted, spec.max_tokens), spec.capabilities.streaming))
        for spec in specs
    ]
    params: dict[str, Any] = {"max_tokens": wanted, "temperature": body.temperature, **media_info}
    if body.manual_config is not None:
        manual = body.manual_config
        key = f"manual:{manual.label or manual.model_name}"
        if key in keys:
            raise ApiError("manual_config: its label collides with a model key", field="manual_config.label")
        # The rules of backend/security/targets.py; the relay connects to the addresses checked here.
        url_field = "manual_config.api_url" if manual.api_url else "manual_config.base_url"
        target = Target(key=key, provider="openai", model_id=manual.model_name, base_url=manual.base_url,
                        api_url=manual.api_url,
                        api_key=manual.api_key.get_secret_value() if manual.api_key else None)
        target = replace(target, addresses=tuple(check_target(target.chat_url, url_field, current_app.config["PEP"])))
        planned.append(PlannedModel(key=key, name=manual.label or manual.model_name, provider="manual",
                                    request=chat_request(wanted), manual_target=target))
        # Where it went is kept; the key never is.
        params["manual_config"] = {"base_url": manual.base_url, "api_url": manual.api_url,
                                   "model_name": manual.model_name, "api_key_given": manual.api_key is not None}
    return Plan(run_id=uuid.uuid4().hex, models=planned, prompt=prompt, system=system, params=params,
                model_timeout_s=float(settings["model_timeout_s"]), heartbeat_s=float(settings["heartbeat_s"]),
                max_stored_chars=int(settings["max_stored_chars"]))


# --- running -------------------------------------------------------------------------------------


@dataclass
class ModelState:
    planned: PlannedModel
    cancel: Cancellation = field(default_factory=Cancellation)
    started: float = 0.0
    first_token: float | None = None
    ended: float | None = None
    output: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    chunks: int = 0
    usage: Usage | None = None
    finish_reason: str | None = None
    error: ProviderError | None = None
    finished: bool = False

    def metrics(self) -> dict[str, Any]:
        end = self.ended or time.perf_counter()
        ttft_ms = (self.first_token - self.started) * 1000 if self.first_token else None
        latency_ms = (end - self.started) * 1000
        from_server = self.usage is not None and self.usage.output_tokens is not None
        output_tokens = self.usage.output_tokens if from_server else self.chunks  # type: ignore[union-attr]
        decode_s = (end - self.first_token) if self.first_token else 0.0
        tokens_per_s = (output_tokens - 1) / decode_s if output_tokens and output_tokens > 1 and decode_s > 0 else None
        return {
            "ttft_ms": round(ttft_ms, 2) if ttft_ms is not None else None,
            "latency_ms": round(latency_ms, 2),
            "input_tokens": self.usage.input_tokens if self.usage else None,
            "output_tokens": output_tokens,
            "tokens_per_s": round(tokens_per_s, 2) if tokens_per_s else None,
            # "server": usage reported by the model server; "chunks": counted stream chunks (approximate)
            "token_source": "server" if from_server else "chunks",
            "finish_reason": self.finish_reason,
        }


class _Mailbox:
    """Pumps append, the relay takes everything waiting at once: one wake-up for many tokens.

    Cheaper per token than a queue (no lock and notify per item under gevent), and what is taken
    together goes out in one write. ``take_all(until)`` also returns (maybe empty) when ``perf_counter()``
    reaches ``until``, for heartbeats and deadlines. Under gevent that is one loop timer, re-armed only
    when it has fired (``until`` never moves earlier), not a timeout per wait: the relay waits once per
    write, and a gevent timeout costs an exception object and a timer each time.
    """

    __slots__ = ("_alarm", "_alarm_at", "_items", "_loop", "_ready")

    def __init__(self) -> None:
        self._items: deque[tuple[Any, Any]] = deque()
        self._ready = threading.Event()
        self._loop = gevent_loop()
        self._alarm: Any = None
        self._alarm_at = 0.0

    def put(self, item: tuple[Any, Any]) -> None:
        self._items.append(item)
        self._ready.set()

    def take_all(self, until: float) -> list[tuple[Any, Any]]:
        if not self._items:
            if self._loop is None:
                self._ready.wait(max(until - time.perf_counter(), 0.0))
            else:
                if self._alarm is None or not self._alarm.active or until < self._alarm_at:
                    self._arm(until)
                self._ready.wait()
        self._ready.clear()  # before draining: an item put after this sets it again
        items = []
        popleft = self._items.popleft
        while self._items:
            items.append(popleft())
        return items

    def _arm(self, until: float) -> None:
        if self._alarm is not None:
            self._alarm.close()
        self._alarm = self._loop.timer(max(until - time.perf_counter(), 0.0))
        self._alarm_at = until
        self._alarm.start(self._ready.set)

    def close(self) -> None:
        if self._alarm is not None:
            self._alarm.close()
            self._alarm = None


def _pump(state: ModelState, catalog: Catalog, out: _Mailbox) -> None:
    planned = state.planned
    put = out.put
    try:
        target = planned.manual_target or catalog.target(planned.spec)  # type: ignore[arg-type]
        # Under gevent the OpenAI-compatible streamer calls emit from the event loop: it only appends.
        streamer_for(target)(target, planned.request, state.cancel, lambda event: put((state, event)))
    except ProviderError as exc:
        put((state, exc))
    except Exception as exc:  # a bug or an unexpected library error still ends only this model
        log.exception("model %s failed unexpectedly", planned.key)
        put((state, ProviderError("upstream", f"unexpected error: {exc.__class__.__name__}: {exc}")))
    finally:
        put((state, _END))


def relay(plan: Plan, catalog: Catalog, app: Flask, client_socket: Any = None) -> Iterator[bytes]:
    """The SSE stream of a run: run, delta/reasoning, model_done/model_error per model, done.

    ``client_socket`` (gunicorn's, when there is one) is watched so that a client who leaves is noticed
    at once, not only when the next write fails.
    """
    with app.app_context():
        writer = RunWriter.of(app, db.engine)
    writer.start(_run_row(plan))
    mailbox = _Mailbox()
    states = [ModelState(planned) for planned in plan.models]
    delta_prefix = {id(s): sse_frame_prefix("delta", {"model": s.planned.key}, "text") for s in states}
    reasoning_prefix = {id(s): sse_frame_prefix("reasoning", {"model": s.planned.key}, "text") for s in states}
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    perf_counter = time.perf_counter
    remaining = len(states)
    stop_watching = watch_for_departure(client_socket, lambda: mailbox.put((None, _CLIENT_GONE)))
    try:
        # Headers and the run's identity leave now, in one write, not with the first token.
        yield PING + sse_event("run", {"run_id": plan.run_id,
                                       "targets": [{"model": p.key, "name": p.name, "provider": p.provider}
                                                   for p in plan.models]})
        now = perf_counter()
        for state in states:
            state.started = now
            start_background(_pump, state, catalog, mailbox, name=f"pump-{state.planned.key}")
        deadline = now + plan.model_timeout_s
        last_write = now
        while remaining:
            items = mailbox.take_all(min(last_write + plan.heartbeat_s, deadline))
            frames = []
            for state, event in items:
                if event is _CLIENT_GONE:
                    return
                if state.finished:
                    continue
                event_type = type(event)
                if event_type is Delta:
                    if state.first_token is None:
                        state.first_token = perf_counter()
                    state.chunks += 1
                    text = event.text
                    try:
                        frames.append(delta_prefix[id(state)] + dumps(text).encode() + b"}\n\n")
                    except UnicodeEncodeError:  # a lone surrogate from upstream: relayed and stored as U+FFFD
                        text = scrub(text)
                        frames.append(delta_prefix[id(state)] + dumps(text).encode() + b"}\n\n")
                    state.output.append(text)
                elif event_type is Reasoning:
                    if state.first_token is None:
                        state.first_token = perf_counter()
                    text = event.text
                    try:
                        frames.append(reasoning_prefix[id(state)] + dumps(text).encode() + b"}\n\n")
                    except UnicodeEncodeError:
                        text = scrub(text)
                        frames.append(reasoning_prefix[id(state)] + dumps(text).encode() + b"}\n\n")
                    state.reasoning.append(text)
                elif event_type is Usage:
                    state.usage = event
                elif event_type is Done:
                    state.finish_reason = event.finish_reason
                elif isinstance(event, ProviderError):
                    state.error = event
                elif event is _END:
                    frames.append(_finish(state, perf_counter()))
                    remaining -= 1
            now = perf_counter()
            if remaining and now >= deadline:
                for state in states:
                    if not state.finished:
                        state.error = ProviderError("timeout", f"no complete answer within {plan.model_timeout_s:g} s")
                        state.cancel.cancel()
                        frames.append(_finish(state, now))
                        remaining -= 1
            if frames:
                yield b"".join(frames)  # everything that arrived together leaves in one write
                last_write = now
            elif now - last_write >= plan.heartbeat_s:
                yield PING
                last_write = now
        succeeded = sum(1 for s in states if s.error is None)
        yield sse_event("done", {"run_id": plan.run_id, "succeeded": succeeded, "failed": len(states) - succeeded})
    finally:
        # The client went away (GeneratorExit or the watcher), a bug, or the end: stop every upstream call.
        if stop_watching is not None:
            stop_watching()
        mailbox.close()
        for state in states:
            if not state.finished:
                state.cancel.cancel()
                state.error = state.error or ProviderError("cancelled", "the client disconnected")
                state.finished = True
                state.ended = perf_counter()
        rows = _result_rows(plan, states)
        writer.finish(plan.run_id, rows)
        for state, row in zip(states, rows, strict=True):  # once per model and request: off the token path
            observe_answer(state.planned.key, state.planned.provider, row, row["error_code"])


def _finish(state: ModelState, now: float) -> bytes:
    state.finished = True
    state.ended = now
    if state.error is not None:
        return sse_event("model_error", {"model": state.planned.key, "error": state.error.as_dict(),
                                         "metrics": state.metrics()})
    return sse_event("model_done", {"model": state.planned.key, **state.metrics()})


def collect(plan: Plan, catalog: Catalog, app: Flask) -> dict[str, Any]:
    """Run a one-model plan to the end and return its stored result (the JSON form of /inference)."""
    for _ in relay(plan, catalog, app):
        pass
    with app.app_context():
        run = db.session.get(InferenceRun, plan.run_id)
        return run.as_dict() if run else {}


# --- storage -------------------------------------------------------------------------------------


def _run_row(plan: Plan) -> dict[str, Any]:
    return {"id": plan.run_id, "created_at": datetime.now(UTC), "status": "running", "prompt": plan.prompt,
            "system": plan.system, "params": plan.params, "models": [p.key for p in plan.models],
            "created_by": plan.created_by}


def _result_rows(plan: Plan, states: list[ModelState]) -> list[dict[str, Any]]:
    """What is stored of each model's answer: cut at ``plan.max_stored_chars`` (and marked so); any text
    that came from upstream made storable (an error message may hold what a delta could)."""
    rows = []
    limit = plan.max_stored_chars
    for position, state in enumerate(states):
        error = state.error
        status = "completed" if error is None else ("cancelled" if error.code == "cancelled" else "failed")
        output, reasoning = "".join(state.output), "".join(state.reasoning)
        rows.append({
            "run_id": plan.run_id, "position": position, "model": state.planned.key,
            "display_name": state.planned.name, "provider": state.planned.provider, "status": status,
            "output": scrub(output[:limit]), "reasoning": scrub(reasoning[:limit]),  # NUL, say
            "truncated": len(output) > limit or len(reasoning) > limit,
            "error_code": error.code if error else None,
            "error_message": scrub(error.message) if error else None,
            **state.metrics()})
        if rows[-1]["finish_reason"] is not None:
            rows[-1]["finish_reason"] = scrub(rows[-1]["finish_reason"])[:64]
    return rows


def list_runs(app: Flask, *, limit: int, offset: int, model: str | None, text: str | None,
              preview: int | None = None) -> dict[str, Any]:
    """A page of runs, newest first; with ``preview``, long texts cut (see ``InferenceRun.as_dict``)."""
    query = db.select(InferenceRun).order_by(InferenceRun.created_at.desc())
    if model:
        query = query.where(InferenceRun.id.in_(
            db.select(InferenceResult.run_id).where(InferenceResult.model == model)))
    if text:
        query = query.where(InferenceRun.prompt.icontains(text, autoescape=True))
    total = db.session.scalar(db.select(db.func.count()).select_from(query.subquery()))
    runs = db.session.scalars(query.options(selectinload(InferenceRun.results)).limit(limit).offset(offset)).all()
    page: dict[str, Any] = {"runs": [run.as_dict(preview=preview) for run in runs], "total": total, "limit": limit,
                            "offset": offset}
    if preview is not None:
        page["preview_chars"] = preview
    return page


def recent_runs(limit: int) -> list[InferenceRun]:
    query = db.select(InferenceRun).options(selectinload(InferenceRun.results))
    return list(db.session.scalars(query.order_by(InferenceRun.created_at.desc()).limit(limit)))


def get_run(run_id: str) -> InferenceRun | None:
    return db.session.get(InferenceRun, run_id)


def models_in_history() -> list[str]:
    """Every model key that has a stored result, for the History filter."""
    return sorted(db.session.scalars(db.select(InferenceResult.model).distinct()))
