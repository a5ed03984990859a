"""The simulator's HTTP side: an aiohttp app speaking OpenAI chat completions (vLLM-style SSE)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web, web_protocol

from backend.simulator import answers
from backend.simulator.chat import (
    PROMPT_PREVIEW_CHARS,
    ChatRequest,
    ChatRequestError,
    PlannedCompletion,
    parse_chat_request,
    plan_completion,
)
from backend.simulator.engine import Engine, Sequence
from backend.simulator.lag import LoopLag
from backend.simulator.profiles import Behavior, Profile
from backend.simulator.tracker import MAX_RECORDS, RequestRecord, RequestStatus, Tracker

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
DONE_EVENT = b"data: [DONE]\n\n"
MIDSTREAM_ERROR_EVENT = (
    b'data: {"error": {"message": "simulated failure mid-stream", "type": "server_error", "code": 500}}\n\n'
)


@dataclass(slots=True)
class SimulatorState:
    seed: int
    api_key: str | None
    profiles: dict[str, Profile]
    engines: dict[str, Engine] = field(default_factory=dict)
    tracker: Tracker = field(default_factory=Tracker)
    answer_keys: dict[str, answers.AnswerKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.engines = {name: Engine(profile, self.seed) for name, profile in self.profiles.items()}
        loaded: dict[str, answers.AnswerKey] = {}
        for name, profile in self.profiles.items():
            if profile.behavior in (Behavior.ANSWER, Behavior.JUDGE):
                if profile.answer_files not in loaded:
                    loaded[profile.answer_files] = answers.AnswerKey.load(answers.split_paths(profile.answer_files))
                self.answer_keys[name] = loaded[profile.answer_files]


def reply_for(state: SimulatorState, profile: Profile, chat: ChatRequest) -> str | None:
    """What an answering or judge profile says to this request (None for every other profile)."""
    key = state.answer_keys.get(chat.model)
    if key is None:
        return None
    if profile.behavior is Behavior.JUDGE:
        verdict = answers.judge(key, chat.last_user_text)
        return verdict if verdict is not None else answers.UNKNOWN_ANSWER
    return answers.answer(key, chat.last_user_text, profile.accuracy, profile.seed)


STATE_KEY = web.AppKey("simulator_state", SimulatorState)
LAG_KEY = web.AppKey("loop_lag", object)  # a LoopLag, or None when the probe is off


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_TOKEN_JSON_CACHE: dict[str, bytes] = {}


def _token_json(token: str) -> bytes:
    encoded = _TOKEN_JSON_CACHE.get(token)
    if encoded is None:
        encoded = _dumps(token).encode("utf-8")
        if len(_TOKEN_JSON_CACHE) < 4096:
            _TOKEN_JSON_CACHE[token] = encoded
    return encoded


class ChunkEncoder:
    """Pre-encodes the constant parts of one stream's ``chat.completion.chunk`` events."""

    __slots__ = ("_content_prefix", "_envelope", "_reasoning_prefix", "_suffix")

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self._envelope = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        head = _dumps(self._envelope)[:-1] + ',"choices":[{"index":0,"delta":{'
        self._content_prefix = f'data: {head}"content":'.encode()
        self._reasoning_prefix = f'data: {head}"reasoning_content":'.encode()
        self._suffix = b'},"finish_reason":null}]}\n\n'

    def _event(self, payload: dict) -> bytes:
        return f"data: {_dumps({**self._envelope, **payload})}\n\n".encode()

    def role(self) -> bytes:
        delta = {"role": "assistant", "content": ""}
        return self._event({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    def token(self, token: str, reasoning: bool) -> bytes:
        prefix = self._reasoning_prefix if reasoning else self._content_prefix
        return prefix + _token_json(token) + self._suffix

    def finish(self, finish_reason: str) -> bytes:
        return self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]})

    def usage(self, usage: dict[str, int]) -> bytes:
        return self._event({"choices": [], "usage": usage})


def error_response(status: int, message: str, error_type: str, code: str | int | None) -> web.Response:
    body = {"error": {"message": message, "type": error_type, "code": code}}
    return web.json_response(body, status=status, dumps=_dumps)


def _unauthorized(request: web.Request) -> web.Response | None:
    api_key = request.app[STATE_KEY].api_key
    if api_key is None or request.headers.get("Authorization") == f"Bearer {api_key}":
        return None
    return error_response(401, "invalid or missing API key", "invalid_request_error", "invalid_api_key")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def list_models(request: web.Request) -> web.Response:
    if (denied := _unauthorized(request)) is not None:
        return denied
    state = request.app[STATE_KEY]
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "simulator"} for name in state.profiles]
    return web.json_response({"object": "list", "data": data}, dumps=_dumps)


# When each connection last received bytes (by id of aiohttp's protocol object, which has __slots__).
_received_at: dict[int, float] = {}


def _stamp_arrivals() -> None:
    """Record a request's arrival when its bytes reach this process, not when its handler gets to run.

    Under load the event loop is busy writing hundreds of streams, and a request can wait there for
    milliseconds before its handler starts; a client sees that wait as time to first token, so the
    "true" figures that /sim/requests reports must include it.
    """
    handler_class = web_protocol.RequestHandler
    if getattr(handler_class, "_pep_stamped", False):
        return
    received, lost = handler_class.data_received, handler_class.connection_lost

    def data_received(self: web_protocol.RequestHandler, data: bytes) -> None:
        _received_at[id(self)] = time.time()
        received(self, data)

    def connection_lost(self: web_protocol.RequestHandler, exc: BaseException | None) -> None:
        _received_at.pop(id(self), None)
        lost(self, exc)

    handler_class.data_received = data_received  # type: ignore[method-assign]
    handler_class.connection_lost = connection_lost  # type: ignore[method-assign]
    handler_class._pep_stamped = True  # type: ignore[attr-defined]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    arrival = min(time.time(), _received_at.get(id(request.protocol), float("inf")))
    if (denied := _unauthorized(request)) is not None:
        return denied
    state = request.app[STATE_KEY]
    try:
        chat = parse_chat_request(json.loads(await request.read()))
    except ValueError as exc:  # includes JSONDecodeError and ChatRequestError
        message = str(exc) if isinstance(exc, ChatRequestError) else f"malformed JSON body: {exc}"
        return error_response(400, message, "invalid_request_error", "bad_request")
    engine = state.engines.get(chat.model)
    if engine is None:
        return error_response(
            404, f"The model `{chat.model}` does not exist.", "invalid_request_error", "model_not_found"
        )

    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    record = RequestRecord(
        completion_id,
        chat.model,
        arrival,
        chat.input_tokens,
        chat.images,
        chat.last_user_text[:PROMPT_PREVIEW_CHARS],
    )
    state.tracker.start(record)
    try:
        profile = engine.profile
        if profile.behavior is Behavior.ERROR or engine.should_fail():
            state.tracker.finish(record, RequestStatus.ERROR)
            return error_response(500, "simulated upstream failure", "server_error", 500)

        plan = plan_completion(profile, state.seed, chat, reply_for(state, profile, chat))
        if chat.stream:
            return await _stream_completion(request, state, engine, chat, plan, record)
        return await _complete(state, engine, chat, plan, record)
    finally:
        # Whatever happened (a bug, a cancelled handler), the request stops counting as active.
        state.tracker.finish(record, RequestStatus.ERROR)


async def _stream_completion(
    request: web.Request,
    state: SimulatorState,
    engine: Engine,
    chat: ChatRequest,
    plan: PlannedCompletion,
    record: RequestRecord,
) -> web.StreamResponse:
    encoder = ChunkEncoder(record.id, int(record.arrival), chat.model)
    response = web.StreamResponse(headers=SSE_HEADERS)
    response.enable_chunked_encoding()
    sequence: Sequence | None = None
    # Stays DISCONNECTED if the handler is cancelled (client went away) or a write fails.
    status = RequestStatus.DISCONNECTED
    try:
        await response.prepare(request)
        await response.write(encoder.role())
        if engine.profile.behavior is Behavior.HANG:
            await asyncio.get_running_loop().create_future()  # until the client disconnects

        sequence = Sequence(len(plan.tokens), chat.input_tokens)
        engine.submit(sequence)
        tokens = plan.tokens
        reasoning_tokens = plan.reasoning_tokens
        sent = 0
        while True:
            if sent < sequence.produced:
                await response.write(encoder.token(tokens[sent], sent < reasoning_tokens))
                written_at = time.time()
                if sent == 0:
                    record.first_token_at = written_at
                sent += 1
                record.last_token_at = written_at
                record.tokens_emitted = sent
            elif sequence.finished:
                break
            else:
                await sequence.wait_for_tokens(sent)

        if engine.profile.behavior is Behavior.MIDSTREAM_ERROR:
            await response.write(MIDSTREAM_ERROR_EVENT)
            await response.write_eof()
            status = RequestStatus.ERROR
            return response
        await response.write(encoder.finish(plan.finish_reason))
        if chat.include_usage:
            await response.write(encoder.usage(_usage(chat.input_tokens, sent)))
        await response.write(DONE_EVENT)
        await response.write_eof()
        status = RequestStatus.COMPLETED
    except ConnectionError:
        pass
    finally:
        if sequence is not None and not sequence.finished:
            engine.cancel(sequence)
        state.tracker.finish(record, status)
    return response


async def _complete(
    state: SimulatorState,
    engine: Engine,
    chat: ChatRequest,
    plan: PlannedCompletion,
    record: RequestRecord,
) -> web.Response:
    sequence = Sequence(len(plan.tokens), chat.input_tokens)
    status = RequestStatus.DISCONNECTED
    try:
        if engine.profile.behavior is Behavior.HANG:
            await asyncio.get_running_loop().create_future()  # until the client disconnects
        engine.submit(sequence)
        while not sequence.finished:
            await sequence.wait_for_tokens(sequence.produced)
            if record.first_token_at is None and sequence.produced:
                record.first_token_at = time.time()
        record.last_token_at = time.time() if sequence.produced else None
        record.tokens_emitted = sequence.produced

        if engine.profile.behavior is Behavior.MIDSTREAM_ERROR:
            status = RequestStatus.ERROR
            return error_response(500, "simulated failure mid-stream", "server_error", 500)
        reasoning = "".join(plan.tokens[: plan.reasoning_tokens])
        message: dict[str, str | None] = {
            "role": "assistant",
            "content": "".join(plan.tokens[plan.reasoning_tokens :]),
        }
        if engine.profile.reasoning_max_tokens > 0:
            message["reasoning_content"] = reasoning or None
        body = {
            "id": record.id,
            "object": "chat.completion",
            "created": int(record.arrival),
            "model": chat.model,
            "choices": [{"index": 0, "message": message, "finish_reason": plan.finish_reason}],
            "usage": _usage(chat.input_tokens, len(plan.tokens)),
        }
        status = RequestStatus.COMPLETED
        return web.json_response(body, dumps=_dumps)
    finally:
        if not sequence.finished:
            engine.cancel(sequence)
        state.tracker.finish(record, status)


async def sim_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].tracker.stats())


async def sim_requests(request: web.Request) -> web.Response:
    try:
        since = float(request.query["since"]) if "since" in request.query else None
        limit = int(request.query.get("limit", MAX_RECORDS))
    except ValueError:
        return error_response(
            400, "'since' must be a number and 'limit' an integer", "invalid_request_error", None
        )
    return web.json_response(request.app[STATE_KEY].tracker.records(since, limit), dumps=_dumps)


async def sim_lag(request: web.Request) -> web.Response:
    probe = request.app[LAG_KEY]
    if probe is None:
        return error_response(404, "the loop-lag probe is off (start the simulator with --lag-probe)",
                              "invalid_request_error", None)
    try:
        since = float(request.query["since"]) if "since" in request.query else None
    except ValueError:
        return error_response(400, "'since' must be a number", "invalid_request_error", None)
    return web.json_response(probe.figures(since))


def create_app(profiles: dict[str, Profile], seed: int = 0, api_key: str | None = None,
               lag_probe: bool = False) -> web.Application:
    _stamp_arrivals()
    app = web.Application()
    app[STATE_KEY] = SimulatorState(seed=seed, api_key=api_key, profiles=profiles)
    app[LAG_KEY] = LoopLag() if lag_probe else None
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/sim/stats", sim_stats)
    app.router.add_get("/sim/requests", sim_requests)
    app.router.add_get("/sim/lag", sim_lag)
    if lag_probe:
        async def start_probe(app: web.Application) -> None:
            app[LAG_KEY].start(asyncio.get_running_loop())

        async def stop_probe(app: web.Application) -> None:
            app[LAG_KEY].stop()

        app.on_startup.append(start_probe)
        app.on_cleanup.append(stop_probe)
    return app
