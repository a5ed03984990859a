"""Run evalscope's own ``perf`` command line in this process, with our Bedrock plugin and measurement fixes.

    python -m backend.stress.evalscope_entry perf <evalscope perf arguments>

behaves like ``evalscope perf <arguments>`` (it calls ``evalscope.cli.cli.run_cmd``, the function behind
the ``evalscope`` console script) after these things happen in this process:

1. **Our Bedrock API plugin is registered** (``--api bedrock``, see ``backend.stress.bedrock_plugin``;
   ``bedrock_args`` builds the arguments that select it).

2. **The garbage collector is frozen.** evalscope's imports leave ~216k long-lived objects; every full
   collection walks all of them and stalled the event loop for 90-190 ms in the middle of a run,
   which showed up as TTFT and ITL. After the imports we ``gc.collect()`` (so garbage is not frozen
   in) and ``gc.freeze()`` (survivors move to the permanent generation, which collections skip). We
   do it again each time evalscope creates its HTTP client (right before the connection test and
   before each level's load), which also takes in what the run created since (tokenizer, dataset).

3. **aiohttp's per-request environment lookups are skipped when they cannot find anything.**
   ``evalscope.perf.core.http_client.AioHttpClient.__init__`` creates its ``aiohttp.ClientSession``
   with ``trust_env=True``. With that, aiohttp 3.x does for *every* request a netrc lookup
   (``loop.run_in_executor``) and a proxy lookup (``asyncio.to_thread``) on the default thread pool;
   when hundreds of requests start at once these queue behind each other and the wait is counted
   as TTFT (about +0.2 ms per concurrent request here). We wrap ``AioHttpClient.__init__``: after the
   original has run, the session's ``_trust_env`` is set to ``False`` (aiohttp reads only that
   attribute for both lookups, and lists it in ``ClientSession.ATTRS``). We do this **only** when the
   environment names no proxy (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, in any
   case) and no netrc file exists (``NETRC``, ``~/.netrc``, ``~/_netrc``), i.e. when the lookups
   would find nothing; otherwise evalscope's session is left exactly as it is. Nothing else of
   evalscope or aiohttp is changed.

4. **The target's API key comes from the environment, not the command line.** ``PEP_TARGET_API_KEY``
   is read, removed from ``os.environ`` (so nothing this process starts inherits it) and appended
   to ``sys.argv`` as ``--api-key`` before evalscope parses its arguments. ``/proc/<pid>/cmdline``,
   which every local user can read, therefore never holds it.

5. **A request's start is when its body reaches the socket.** evalscope's OpenAI plugin
   (``DefaultApiPlugin.process_request``) takes its start time before ``session.post``, so time spent
   waiting for the busy event loop before the request is even written counted as TTFT. We add one
   ``aiohttp.TraceConfig`` to evalscope's session (``on_request_chunk_sent``, which aiohttp calls just
   before it writes the body) and wrap ``DefaultApiPlugin.process_request``: when that timestamp is
   later than evalscope's start, ``start_time`` moves to it and ``first_chunk_latency`` and
   ``query_latency`` shrink by the difference. Nothing else of the request or response path changes.

6. **A response chunk's time is when its bytes were received, not when evalscope got round to parsing
   them.** evalscope's OpenAI plugin stamps each SSE message with ``time.perf_counter()`` after it has
   read it from the stream, decoded it and run ``json.loads``, all in the one event loop that also
   serves every other stream; at 100-200 concurrent streams whose tokens come in the same step
   instant, the later streams of a burst waited several ms for the loop before being parsed, and that
   wait was counted in TTFT (and, at the end of a reply, in TPOT). Two small wrappers (the first costs
   one ``perf_counter()`` per chunk on every connection; the second records only inside our
   ``process_request`` wrapper):

   * ``aiohttp.streams.StreamReader.feed_data`` (called from ``ResponseHandler.data_received``, right
     after ``recv`` and aiohttp's C HTTP parser, once per HTTP chunk of payload): stores
     ``perf_counter()`` on the connection's protocol object (``ResponseHandler`` has a ``__dict__``;
     ``StreamReader`` has ``__slots__``), i.e. when the latest payload bytes of that connection came in;
   * ``aiohttp.streams.StreamReader._read_nowait`` (every read path of a response body ends there,
     ``readany`` for evalscope's ``iter_any``): when it returns bytes inside our ``process_request``
     wrapper, it appends (now, the protocol's latest receive stamp) to that request's list.

   A read drains everything buffered, so the stamp is when the last of the bytes it returns arrived:
   never earlier than any of them, never later than the read. After the original ``process_request``
   has returned, each timestamp evalscope took (first output token, each later output chunk, the last
   message) is mapped to the read it was taken after (``bisect`` on the read times) and replaced by that
   read's receive stamp; ``first_chunk_latency``, ``inter_chunk_latency``, ``completed_time`` and
   ``query_latency`` are recomputed from the replaced times. Which message is the first token is still
   evalscope's own decision (the role-only first chunk of an OpenAI stream is not one). aiohttp's
   ``on_response_chunk_received`` trace is no alternative: it fires only from ``ClientResponse.read()``,
   once for a whole non-streamed body. Nothing else of the request or response path changes: the same
   bytes are read in the same pieces and parsed by evalscope's own code.

7. **A system prompt, when the job has one** (``--pep-system-file=<path>``, removed from the command line
   before evalscope parses it): evalscope's ``--prompt`` sends only a user message, so the
   ``build_request`` of evalscope's OpenAI plugin and of our Bedrock plugin are wrapped to put the file's
   text first as a system message (``{"role": "system", "content": ...}``; the Bedrock plugin turns it
   into Converse's ``system`` field). An OpenAI-compatible request without chat messages (a completions
   endpoint) cannot carry one, and the run stops with that reason rather than sending something else.

8. **Warm-up requests as many as each level's concurrency** (``--pep-warmup-per-slot``): evalscope's
   ``--warmup-num`` is one count for every level of a sweep, while its own advice (the warning it logs
   when warm-up is short) is one warm-up request per concurrency slot. ``evalscope.perf.main.run_one_benchmark``
   is wrapped to set ``warmup_num`` to the level's ``parallel`` before each level. Warm-up requests are
   evalscope's own: never written to ``benchmark_data.db`` and left out of every summary.

9. **Shards start each level together, and every level records the client's CPU.** ``run_one_benchmark``
   (which ``run_multi_benchmark`` calls through the module global, once per level with the level's folder as
   ``output_path``) is wrapped once more. When ``PEP_SHARD_BARRIER`` and ``PEP_SHARD_INDEX`` are set (a
   shard of a sharded job, started by ``backend.stress.shards``), level k writes ``ready.<k>.<shard>`` in
   that folder, waits for ``go.<k>`` (at most 10 min, then the run stops with that reason) and sleeps until
   the wall-clock start it names; it does so once evalscope has created the level's HTTP client (2.), its
   last step before the level's first request (``LevelStart``). Always, sharded or not, the process's CPU
   time (``getrusage(RUSAGE_SELF)``, user + system) and the wall time over the level (from its start, or
   from the common start) are written to ``<level folder>/client_cpu.json`` as ``{"cpu_s", "wall_s"}``:
   evalscope is one event loop, so a level whose CPU time nears its wall time had a saturated load generator.
   With them, ``wall_at`` and ``perf_at``: ``time.time()`` and ``perf_counter()`` read together at that
   start, which put a shard's requests on the wall clock when shards on several hosts are merged.

Where a run's token counts came from is written to evalscope's ``benchmark.log``: evalscope counts
with a tokenizer only when a response carries no usage, and we wrap the tokenizer counting method of
its OpenAI plugin to log ``TOKENIZER_MARKER`` the first time that happens. ``token_source`` reads it.
"""

from __future__ import annotations

# The imports that create most of the long-lived objects come first, so that the freeze below covers them.
import contextlib
import gc
import json
import os
import resource
import sys
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from contextvars import ContextVar
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.streams import StreamReader
from evalscope.cli.cli import run_cmd
from evalscope.perf import main as perf_main
from evalscope.perf.core import http_client
from evalscope.perf.plugin.api.default_api import DefaultApiPlugin
from evalscope.perf.plugin.api.openai_api import OpenaiPlugin
from evalscope.perf.utils.benchmark_util import BenchmarkData
from evalscope.utils.logger import get_logger

from backend.stress.evalscope_args import (  # noqa: F401 - part of this module's interface
    API_KEY_ENV,
    ENTRY_MARKER,
    SYSTEM_FILE_FLAG,
    TOKENIZER_MARKER,
    WARMUP_PER_SLOT_FLAG,
    TokenSource,
    bedrock_args,
    token_source,
)
from backend.stress.outputs import CLIENT_CPU_FILE
from backend.stress.shards import BARRIER_ENV, INDEX_ENV, FolderBarrier, wait_for_start

PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


# Set on aiohttp's ResponseHandler (the connection's protocol) when payload bytes come in (perf_counter).
RECEIVED_ATTR = "_pep_received_at"

_installed = False
_perf_counter = time.perf_counter


class EntryOptions:
    """What our own command-line options asked for (see ``take_entry_options``)."""

    __slots__ = ("system", "warmup_per_slot")

    def __init__(self, system: str | None = None, warmup_per_slot: bool = False) -> None:
        self.system = system
        self.warmup_per_slot = warmup_per_slot


_options = EntryOptions()


class RequestTiming:
    """What our wrappers saw of the request being processed in one task (all ``perf_counter`` times)."""

    __slots__ = ("read_at", "received_at", "written_at")

    def __init__(self) -> None:
        self.written_at: float | None = None  # when aiohttp handed the body to the socket
        self.read_at: list[float] = []  # when each read of the response body returned bytes
        self.received_at: list[float] = []  # when the last bytes that read returned were received

    def arrival(self, stamp: float) -> float:
        """When the bytes behind a timestamp taken while handling a read were received (``stamp`` if unknown)."""
        index = bisect_right(self.read_at, stamp) - 1
        if index < 0:
            return stamp
        return min(stamp, self.received_at[index])


_timing: ContextVar[RequestTiming | None] = ContextVar("pep_request_timing", default=None)
_announce_lock = threading.Lock()
_announced: set[str] = set()


def proxy_configured(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether any proxy variable is set (non-empty), in any case."""
    return any(value and name.lower() in PROXY_ENV for name, value in environ.items())


def netrc_present(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether aiohttp's netrc lookup could find a file (it reads ``NETRC`` or ``~/.netrc``/``~/_netrc``)."""
    if environ.get("NETRC"):
        return True
    home = Path(environ.get("HOME") or Path.home())
    return (home / ".netrc").exists() or (home / "_netrc").exists()


def skip_env_lookups() -> bool:
    """True when aiohttp's per-request proxy and netrc lookups could only come back empty."""
    return not proxy_configured() and not netrc_present()


def freeze_gc() -> int:
    """Collect, then move every surviving object to the permanent generation; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def install() -> None:
    """Register the Bedrock plugin and install the measurement fixes (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    import backend.stress.bedrock_plugin  # noqa: F401 - registers the plugin

    _wrap(http_client.AioHttpClient, "__init__", _after_client_init)
    DefaultApiPlugin.process_request = _timed_process_request(DefaultApiPlugin.process_request)
    StreamReader.feed_data = _stamped_feed_data(StreamReader.feed_data)  # type: ignore[method-assign]
    StreamReader._read_nowait = _recorded_read_nowait(StreamReader._read_nowait)  # type: ignore[method-assign]
    _wrap(OpenaiPlugin, "_count_output_tokens", _after_tokenizer_count)
    from backend.stress.bedrock_plugin import BedrockPlugin

    OpenaiPlugin.build_request = _with_system(OpenaiPlugin.build_request, chat_only=True)  # type: ignore[method-assign]
    BedrockPlugin.build_request = _with_system(BedrockPlugin.build_request, chat_only=False)  # type: ignore[method-assign]
    perf_main.run_one_benchmark = _with_shard_start_and_cpu(_with_warmup_per_slot(perf_main.run_one_benchmark))


def _wrap(cls: type, name: str, after: Callable[[Any], None]) -> None:
    original = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        after(self)
        return result

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    wrapper.__name__ = original.__name__
    wrapper.__doc__ = original.__doc__
    setattr(cls, name, wrapper)


def _after_client_init(client: http_client.AioHttpClient) -> None:
    trust_env = True
    if skip_env_lookups():
        client.client._trust_env = False
        trust_env = False
    client.client._trace_configs.append(_WRITE_TRACE)
    frozen = freeze_gc()
    _announce_once(
        ENTRY_MARKER,
        f"{ENTRY_MARKER} (aiohttp trust_env={trust_env}, gc frozen objects={frozen})",
    )
    if _level_start is not None:
        _level_start.before_sending()


async def _on_request_chunk_sent(_session: Any, _ctx: Any, _params: Any) -> None:
    timing = _timing.get()
    if timing is not None and timing.written_at is None:
        timing.written_at = _perf_counter()


_WRITE_TRACE = aiohttp.TraceConfig()
_WRITE_TRACE.on_request_chunk_sent.append(_on_request_chunk_sent)
_WRITE_TRACE.freeze()


def _stamped_feed_data(original: Callable[..., bool]) -> Callable[..., bool]:
    def feed_data(self: StreamReader, data: bytes, size: int = 0) -> bool:
        if data:
            try:  # noqa: SIM105 - once per chunk: cheaper than contextlib.suppress
                setattr(self._protocol, RECEIVED_ATTR, _perf_counter())
            except AttributeError:  # a protocol without a __dict__: no stamp, evalscope's times stay
                pass
        return original(self, data, size)

    feed_data.__wrapped__ = original  # type: ignore[attr-defined]
    return feed_data


def _recorded_read_nowait(original: Callable[..., bytes]) -> Callable[..., bytes]:
    def _read_nowait(self: StreamReader, n: int) -> bytes:
        data = original(self, n)
        if data:
            timing = _timing.get()
            if timing is not None:
                received_at = getattr(self._protocol, RECEIVED_ATTR, None)
                if received_at is not None:
                    timing.read_at.append(_perf_counter())
                    timing.received_at.append(received_at)
        return data

    _read_nowait.__wrapped__ = original  # type: ignore[attr-defined]
    return _read_nowait


def correct_times(output: BenchmarkData, timing: RequestTiming) -> None:
    """Move ``output``'s timestamps to when its bytes were received and its request written (see the docstring)."""
    start = output.start_time
    if not start:
        return
    if timing.read_at:
        # evalscope's own timestamps, rebuilt from what it stored: first output, each later output chunk, last message.
        if output.first_chunk_latency:
            first = start + output.first_chunk_latency
            stamps = [first]
            for gap in output.inter_chunk_latency:
                stamps.append(stamps[-1] + gap)
            early = [stamp - timing.arrival(stamp) for stamp in stamps]  # how much earlier each one came in
            if any(early):
                output.first_chunk_latency -= early[0]
                output.inter_chunk_latency = [
                    gap - (later - earlier)
                    for gap, (earlier, later) in zip(output.inter_chunk_latency, pairwise(early), strict=True)
                ]
        if output.query_latency:
            last = start + output.query_latency
            early_last = last - timing.arrival(last)
            if early_last:
                output.query_latency -= early_last
                if output.completed_time:
                    output.completed_time = start + output.query_latency
    written = timing.written_at
    if written is not None and written > start:
        shift = written - start
        output.start_time = written
        if output.first_chunk_latency:
            output.first_chunk_latency = max(output.first_chunk_latency - shift, 0.0)
        if output.query_latency:
            output.query_latency = max(output.query_latency - shift, 0.0)


def _timed_process_request(original: Callable[..., Any]) -> Callable[..., Any]:
    async def process_request(self: Any, client_session: Any, url: str, headers: dict, body: dict) -> BenchmarkData:
        timing = RequestTiming()
        token = _timing.set(timing)
        try:
            output = await original(self, client_session, url, headers, body)
        finally:
            _timing.reset(token)
        correct_times(output, timing)
        return output

    process_request.__wrapped__ = original  # type: ignore[attr-defined]
    return process_request


def _after_tokenizer_count(_plugin: OpenaiPlugin) -> None:
    _announce_once(TOKENIZER_MARKER, f"{TOKENIZER_MARKER}: a response carried no usage")


def _announce_once(key: str, message: str) -> None:
    with _announce_lock:
        if key in _announced:
            return
        _announced.add(key)
    get_logger().info(message)


class SystemPromptError(ValueError):
    """A system prompt was asked for a request that cannot carry one."""


def with_system(messages: Any, system: str, *, chat_only: bool) -> Any:
    """``messages`` with ``system`` as a leading system message.

    A list of chat messages gets it in front. A plain string (evalscope's ``--prompt`` when it does not
    apply a chat template, as for ``bedrock://`` URLs) becomes a system and a user message, unless
    ``chat_only``: an OpenAI-compatible plain string goes to a completions endpoint, which has no roles.
    """
    message = {"role": "system", "content": system}
    if isinstance(messages, list) and all(isinstance(item, dict) for item in messages):
        return [message, *messages]
    if isinstance(messages, str) and not chat_only:
        return [message, {"role": "user", "content": messages}]
    raise SystemPromptError("a system prompt needs chat messages (a chat completions endpoint); "
                            f"this request is a {type(messages).__name__}")


def _with_system(original: Callable[..., Any], *, chat_only: bool) -> Callable[..., Any]:
    def build_request(self: Any, messages: Any, param: Any = None) -> Any:
        if _options.system is not None:
            messages = with_system(messages, _options.system, chat_only=chat_only)
        return original(self, messages, param)

    build_request.__wrapped__ = original  # type: ignore[attr-defined]
    build_request.__doc__ = original.__doc__
    return build_request


def _with_warmup_per_slot(original: Callable[..., Any]) -> Callable[..., Any]:
    def run_one_benchmark(args: Any, output_path: str | None = None) -> Any:
        if _options.warmup_per_slot:
            parallel = args.parallel[0] if isinstance(args.parallel, list) else args.parallel
            args.warmup_num = int(parallel)
        return original(args, output_path=output_path)

    run_one_benchmark.__wrapped__ = original  # type: ignore[attr-defined]
    return run_one_benchmark


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LevelStart:
    """A shard's start of each level (see 9. in the module docstring) and the client CPU clock of the level.

    The wait for the common start happens when evalscope has created the level's HTTP client (its last
    step before sending; the garbage collector has just been frozen), not on entering the level: the
    set-up before that (event loop, plugin, dataset) took a varying 5-40 ms per process on a busy host,
    which would have been a late start of one shard."""

    def __init__(self, environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
        folder, shard = environ.get(BARRIER_ENV), environ.get(INDEX_ENV)
        self.barrier = FolderBarrier(Path(folder)) if folder and shard is not None else None
        self.shard = int(shard or 0)
        self.levels_entered = 0
        self.pending: int | None = None  # the level whose common start is still to be waited for
        self.cpu_s, self.wall_s = 0.0, 0.0
        self.wall_at, self.perf_at = 0.0, 0.0

    def enter(self) -> None:
        if self.barrier is not None:
            self.pending = self.levels_entered
        self.levels_entered += 1
        self.reset_clock()

    def reset_clock(self) -> None:
        self.cpu_s, self.wall_s = _cpu_s(), time.monotonic()
        # The wall clock and evalscope's request clock read together: shards on several hosts put their
        # requests on the wall clock with it before they are merged (backend/stress/spread.py).
        self.wall_at, self.perf_at = time.time(), _perf_counter()

    def before_sending(self) -> None:
        if self.barrier is not None and self.pending is not None:
            level, self.pending = self.pending, None
            wait_for_start(self.barrier, level, self.shard)
            self.reset_clock()  # the wait is no load on the client

    def record(self, output_path: str) -> None:
        record = {"cpu_s": round(_cpu_s() - self.cpu_s, 4), "wall_s": round(time.monotonic() - self.wall_s, 4),
                  "wall_at": self.wall_at, "perf_at": self.perf_at}
        target = Path(output_path, CLIENT_CPU_FILE)
        temporary = target.with_name(f".{CLIENT_CPU_FILE}.tmp")
        with contextlib.suppress(OSError):  # written whole or not at all: the worker reads it at once
            temporary.write_text(json.dumps(record), encoding="utf-8")
            os.replace(temporary, target)


_level_start: LevelStart | None = None


def _with_shard_start_and_cpu(original: Callable[..., Any]) -> Callable[..., Any]:
    def run_one_benchmark(args: Any, output_path: str | None = None) -> Any:
        global _level_start
        if _level_start is None:
            _level_start = LevelStart()
        _level_start.enter()
        try:
            return original(args, output_path=output_path)
        finally:
            if output_path:
                _level_start.record(output_path)

    run_one_benchmark.__wrapped__ = original  # type: ignore[attr-defined]
    return run_one_benchmark


def take_entry_options(argv: list[str]) -> tuple[list[str], EntryOptions]:
    """``argv`` without our own options, and what they asked for (the system prompt's text read from its file)."""
    rest: list[str] = []
    options = EntryOptions()
    for arg in argv:
        if arg.startswith(SYSTEM_FILE_FLAG + "="):
            options.system = Path(arg.split("=", 1)[1]).read_text(encoding="utf-8")
        elif arg == WARMUP_PER_SLOT_FLAG:
            options.warmup_per_slot = True
        else:
            rest.append(arg)
    return rest, options


def take_api_key(argv: list[str], environ: dict[str, str] | os._Environ[str] = os.environ) -> list[str]:
    """``argv`` with ``--api-key`` from ``PEP_TARGET_API_KEY`` appended; the variable leaves ``environ``."""
    api_key = environ.pop(API_KEY_ENV, None)
    if not api_key:
        return argv
    return [*argv, "--api-key", api_key]


def main(argv: list[str] | None = None) -> int:
    """Run ``evalscope`` with ``argv`` (default ``sys.argv[1:]``); returns its exit status."""
    global _options
    install()
    args, _options = take_entry_options(list(sys.argv[1:] if argv is None else argv))
    args = take_api_key(args)
    sys.argv = ["evalscope", *args]
    freeze_gc()
    try:
        result = run_cmd()
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
