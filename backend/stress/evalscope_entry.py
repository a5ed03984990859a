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

Where a run's token counts came from is written to evalscope's ``benchmark.log``: evalscope counts
with a tokenizer only when a response carries no usage, and we wrap the tokenizer counting method of
its OpenAI plugin to log ``TOKENIZER_MARKER`` the first time that happens. ``token_source`` reads it.
"""

from __future__ import annotations

# The imports that create most of the long-lived objects come first, so that the freeze below covers them.
import gc
import os
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import aiohttp
from evalscope.cli.cli import run_cmd
from evalscope.perf import main as _perf_main  # noqa: F401 - imported for its import-time objects
from evalscope.perf.core import http_client
from evalscope.perf.plugin.api.default_api import DefaultApiPlugin
from evalscope.perf.plugin.api.openai_api import OpenaiPlugin
from evalscope.perf.utils.benchmark_util import BenchmarkData
from evalscope.utils.logger import get_logger

from backend.stress.evalscope_args import (  # noqa: F401 - part of this module's interface
    API_KEY_ENV,
    ENTRY_MARKER,
    TOKENIZER_MARKER,
    TokenSource,
    bedrock_args,
    token_source,
)

PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


_installed = False
# When the body of the request being processed in this task was handed to the socket (perf_counter).
_written_at: ContextVar[list[float] | None] = ContextVar("written_at", default=None)
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
    _wrap(OpenaiPlugin, "_count_output_tokens", _after_tokenizer_count)


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


async def _on_request_chunk_sent(_session: Any, _ctx: Any, _params: Any) -> None:
    marks = _written_at.get()
    if marks is not None and not marks:
        marks.append(time.perf_counter())


_WRITE_TRACE = aiohttp.TraceConfig()
_WRITE_TRACE.on_request_chunk_sent.append(_on_request_chunk_sent)
_WRITE_TRACE.freeze()


def _timed_process_request(original: Callable[..., Any]) -> Callable[..., Any]:
    async def process_request(self: Any, client_session: Any, url: str, headers: dict, body: dict) -> BenchmarkData:
        marks: list[float] = []
        token = _written_at.set(marks)
        try:
            output = await original(self, client_session, url, headers, body)
        finally:
            _written_at.reset(token)
        if marks and output.start_time and marks[0] > output.start_time:
            shift = marks[0] - output.start_time
            output.start_time = marks[0]
            if output.first_chunk_latency:
                output.first_chunk_latency = max(output.first_chunk_latency - shift, 0.0)
            if output.query_latency:
                output.query_latency = max(output.query_latency - shift, 0.0)
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


def take_api_key(argv: list[str], environ: dict[str, str] | os._Environ[str] = os.environ) -> list[str]:
    """``argv`` with ``--api-key`` from ``PEP_TARGET_API_KEY`` appended; the variable leaves ``environ``."""
    api_key = environ.pop(API_KEY_ENV, None)
    if not api_key:
        return argv
    return [*argv, "--api-key", api_key]


def main(argv: list[str] | None = None) -> int:
    """Run ``evalscope`` with ``argv`` (default ``sys.argv[1:]``); returns its exit status."""
    install()
    args = take_api_key(list(sys.argv[1:] if argv is None else argv))
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
