"""The evalscope entry module: a real ``evalscope perf`` run through it, the API key path and the fixes."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from backend.stress import evalscope_entry
from backend.stress.bedrock_plugin import BEDROCK_API, region_from_url
from tests.support.simulator import PROJECT_ROOT, SimulatorProcess

API_KEY = "sk-test-entry-0123456789abcdef"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in evalscope_entry.PROXY_ENV}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _level_dir(outputs: Path, model: str, parallel: int, number: int) -> Path:
    return outputs / model / f"parallel_{parallel}_number_{number}"


def test_entry_runs_evalscope_with_the_key_from_the_environment_only(tmp_path: Path) -> None:
    # sim-fast at 60 ms a step: 10 tokens take ~0.6 s, so the run lasts long enough to look at it.
    profile = "sim-fast:decode_base_ms=60,decode_ms_per_seq=0,min_output_tokens=10,max_output_tokens=10"
    with SimulatorProcess(extra_args=["--api-key", API_KEY, "--profile", profile]) as sim:
        outputs = tmp_path / "out"
        prompt = f"entry test {time.time()}"
        command = [
            sys.executable, "-m", "backend.stress.evalscope_entry", "perf",
            "--url", f"{sim.base_url}/chat/completions", "--model", "sim-fast", "--api", "openai",
            "--prompt", prompt, "--number", "4", "--parallel", "2", "--max-tokens", "10",
            "--outputs-dir", str(outputs), "--no-timestamp",
        ]  # fmt: skip
        log = (tmp_path / "run.log").open("wb")
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
            env=_clean_env(PEP_TARGET_API_KEY=API_KEY),
        )  # fmt: skip
        cmdlines: list[bytes] = []
        while process.poll() is None:
            try:
                cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
            except OSError:
                break
            if cmdline:  # empty once the process has exited and waits to be reaped
                cmdlines.append(cmdline)
            time.sleep(0.05)
        assert process.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()
        log.close()
        records = [r for r in sim.requests() if r["prompt"] == prompt]

    assert len(cmdlines) > 10, "the run ended before its command line could be read while running"
    assert all(API_KEY.encode() not in cmdline for cmdline in cmdlines)
    assert all(b"backend.stress.evalscope_entry" in cmdline for cmdline in cmdlines)
    # The simulator answers 401 without the key: four completed requests prove it arrived.
    assert len(records) == 4 and all(r["status"] == "completed" for r in records)
    level = _level_dir(outputs, "sim-fast", 2, 4)
    summary = json.loads((level / "benchmark_summary.json").read_text())
    assert summary["Success Requests"] == 4
    assert summary["Avg Output Tokens"] == 10
    assert (level / "benchmark_percentile.json").exists()
    written = "".join(
        p.read_text(errors="replace") for p in outputs.rglob("*") if p.suffix in (".json", ".log", ".txt")
    )
    assert API_KEY not in written
    benchmark_log = (outputs / "sim-fast" / "benchmark.log").read_text()
    assert f"{evalscope_entry.ENTRY_MARKER} (aiohttp trust_env=False" in benchmark_log
    assert evalscope_entry.token_source(outputs) == "server"


def test_take_api_key_appends_it_and_removes_the_variable() -> None:
    environ = {"PEP_TARGET_API_KEY": "k-1", "OTHER": "x"}
    assert evalscope_entry.take_api_key(["perf", "--model", "m"], environ) == [
        "perf",
        "--model",
        "m",
        "--api-key",
        "k-1",
    ]
    assert environ == {"OTHER": "x"}
    assert evalscope_entry.take_api_key(["perf"], {}) == ["perf"]


@pytest.fixture
def entry_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc here
    evalscope_entry.install()


def _session_trust_env() -> bool:
    from evalscope.perf.arguments import Arguments
    from evalscope.perf.core.http_client import AioHttpClient
    from evalscope.perf.plugin.api.openai_api import OpenaiPlugin

    args = Arguments(model="m", url="http://127.0.0.1:9/v1/chat/completions", prompt="p")
    args.parallel, args.number = 1, 1

    async def create() -> bool:
        async with AioHttpClient(args, OpenaiPlugin(args)) as client:
            return client.client.trust_env

    return asyncio.run(create())


@pytest.mark.usefixtures("entry_installed")
def test_env_lookups_are_skipped_without_a_proxy_and_gc_is_frozen() -> None:
    gc.unfreeze()
    assert _session_trust_env() is False
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("entry_installed")
@pytest.mark.parametrize("name", ["HTTPS_PROXY", "http_proxy", "ALL_PROXY", "no_proxy"])
def test_a_configured_proxy_keeps_evalscope_session_as_it_is(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "http://proxy.invalid:3128")
    assert _session_trust_env() is True


@pytest.mark.usefixtures("entry_installed")
def test_a_netrc_file_keeps_evalscope_session_as_it_is(tmp_path: Path) -> None:
    (tmp_path / ".netrc").write_text("machine example.com login a password b\n")
    assert _session_trust_env() is True


def test_bedrock_args_select_the_plugin() -> None:
    args = evalscope_entry.bedrock_args("anthropic.claude-3-haiku-20240307-v1:0", "us-west-2")
    assert args == [
        "--api", BEDROCK_API, "--model", "anthropic.claude-3-haiku-20240307-v1:0", "--url", "bedrock://us-west-2",
    ]  # fmt: skip


def test_bedrock_args_without_a_region_leave_it_to_boto3() -> None:
    assert evalscope_entry.bedrock_args("m", None)[-1] == "bedrock://"
    assert region_from_url("bedrock://") is None
    assert region_from_url("bedrock://eu-west-1") == "eu-west-1"


@pytest.mark.parametrize(
    ("model_id", "region"), [("", "us-east-1"), ("--url", "us-east-1"), ("a b", "us-east-1"), ("m", "x; rm"), ("m", "")]
)
def test_bedrock_args_reject_bad_values(model_id: str, region: str) -> None:
    with pytest.raises(ValueError):
        evalscope_entry.bedrock_args(model_id, region)


def _fake_run(root: Path, *, api: str = "openai", tokenizer: str | None = None, log: str = "") -> Path:
    level = root / "m" / "parallel_1_number_1"
    level.mkdir(parents=True)
    (level / "benchmark_args.json").write_text(json.dumps({"api": api, "tokenizer_path": tokenizer}))
    (root / "m" / "benchmark.log").write_text(log)
    return root


@pytest.mark.parametrize(
    ("api", "tokenizer", "log", "expected"),
    [
        ("openai", None, "", "server"),
        (BEDROCK_API, "/tok", "", "server"),
        ("openai", "/tok", evalscope_entry.ENTRY_MARKER, "server"),
        ("openai", "/tok", f"{evalscope_entry.ENTRY_MARKER}\n{evalscope_entry.TOKENIZER_MARKER}", "tokenizer"),
        ("openai", "/tok", "", "tokenizer"),  # plain evalscope with a tokenizer: not known, so not claimed
    ],
)
def test_token_source(tmp_path: Path, api: str, tokenizer: str | None, log: str, expected: str) -> None:
    assert evalscope_entry.token_source(_fake_run(tmp_path, api=api, tokenizer=tokenizer, log=log)) == expected


def test_correct_times_maps_each_timestamp_to_when_its_bytes_were_received() -> None:
    from evalscope.perf.utils.benchmark_util import BenchmarkData

    timing = evalscope_entry.RequestTiming()
    timing.written_at = 9.95
    # Three reads of the body: when each returned, and when its last bytes had come in.
    timing.read_at = [10.00, 10.10, 10.20]
    timing.received_at = [9.99, 10.05, 10.15]
    # evalscope parsed the first token after the second read, the next one and the last message after the third.
    output = BenchmarkData(start_time=9.90, first_chunk_latency=0.21, inter_chunk_latency=[0.10], query_latency=0.32)
    output.completed_time = 10.22

    evalscope_entry.correct_times(output, timing)

    assert output.start_time == 9.95
    assert output.first_chunk_latency == pytest.approx(0.10)  # 10.05 - 9.95
    assert output.inter_chunk_latency == pytest.approx([0.10])  # 10.15 - 10.05
    assert output.query_latency == pytest.approx(0.20)  # 10.15 - 9.95
    assert output.completed_time == pytest.approx(10.15)


def test_correct_times_never_moves_a_timestamp_later_and_leaves_unknown_ones() -> None:
    from evalscope.perf.utils.benchmark_util import BenchmarkData

    timing = evalscope_entry.RequestTiming()
    timing.read_at, timing.received_at = [10.0], [10.5]  # a stamp later than the read: impossible, ignored
    output = BenchmarkData(start_time=9.0, first_chunk_latency=1.2, query_latency=1.2)
    evalscope_entry.correct_times(output, timing)
    assert (output.start_time, output.first_chunk_latency, output.query_latency) == (9.0, 1.2, 1.2)

    before_any_read = BenchmarkData(start_time=9.0, first_chunk_latency=0.5, query_latency=0.5)
    evalscope_entry.correct_times(before_any_read, timing)  # 9.5 is before the first read: no stamp for it
    assert (before_any_read.first_chunk_latency, before_any_read.query_latency) == (0.5, 0.5)


# The stall is several times the tolerance the corrected times get (scheduling on a loaded two-core machine
# put a corrected latency 10.7 ms off its truth once, with a 30 ms stall and an 8 ms tolerance).
SLOW_PARSE_S = 0.08
GAP_S = 0.02


class _StreamServer:
    """An OpenAI-style SSE server in its own thread and loop that records, on this process's clock, what it did."""

    def __init__(self, tokens: int = 5) -> None:
        self.tokens = tokens
        self.records: list[dict[str, float]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrival = time.perf_counter()
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n')
        await asyncio.sleep(GAP_S)
        record = {"arrival": arrival}
        for i in range(self.tokens):
            await response.write(f'data: {{"choices":[{{"index":0,"delta":{{"content":"tok{i} "}}}}]}}\n\n'.encode())
            record.setdefault("first", time.perf_counter())
            record["last"] = time.perf_counter()
            if i < self.tokens - 1:
                await asyncio.sleep(GAP_S)
        usage = {"prompt_tokens": 3, "completion_tokens": self.tokens, "total_tokens": 3 + self.tokens}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        self.records.append(record)
        return response

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> _StreamServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.mark.usefixtures("entry_installed")
def test_a_slow_parse_inflates_plain_times_but_not_the_corrected_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from evalscope.perf.arguments import Arguments
    from evalscope.perf.plugin.api import default_api
    from evalscope.perf.plugin.api.openai_api import OpenaiPlugin

    original_add_chunk = default_api.StreamedResponseHandler.add_chunk

    def slow_add_chunk(self: object, chunk_bytes: bytes) -> list[str]:
        # The event loop is stuck after the first and the last token's bytes came in, as when it is busy
        # parsing other streams' chunks: the receive time is known, evalscope's parse time is late.
        if b"tok0 " in chunk_bytes or b"tok4 " in chunk_bytes:
            time.sleep(SLOW_PARSE_S)
        return original_add_chunk(self, chunk_bytes)

    monkeypatch.setattr(default_api.StreamedResponseHandler, "add_chunk", slow_add_chunk)
    args = Arguments(model="m", url="http://127.0.0.1:9/v1/chat/completions", prompt="p")
    plugin = OpenaiPlugin(args)
    body = {"model": "m", "messages": [{"role": "user", "content": "p"}], "stream": True}
    corrected_call = default_api.DefaultApiPlugin.process_request
    plain_call = corrected_call.__wrapped__

    async def run(server: _StreamServer) -> list:
        async with aiohttp.ClientSession(trace_configs=[evalscope_entry._WRITE_TRACE]) as session:
            return [await call(plugin, session, server.url, {}, body) for call in (plain_call, corrected_call)]

    with _StreamServer() as server:
        plain, corrected = asyncio.run(run(server))
    true = [
        {"ttft": r["first"] - r["arrival"], "latency": r["last"] - r["arrival"], "decode": r["last"] - r["first"]}
        for r in server.records
    ]
    assert plain.success and corrected.success
    assert plain.generated_text == corrected.generated_text == "tok0 tok1 tok2 tok3 tok4 "
    tolerance = 0.02
    assert plain.first_chunk_latency - true[0]["ttft"] > SLOW_PARSE_S - 0.005
    assert abs(corrected.first_chunk_latency - true[1]["ttft"]) < tolerance
    # The last message (usage) was parsed after the slow last token: the request's latency too.
    assert plain.query_latency - true[0]["latency"] > SLOW_PARSE_S - 0.005
    assert abs(corrected.query_latency - true[1]["latency"]) < tolerance
    assert len(corrected.inter_chunk_latency) == 4
    assert abs(sum(corrected.inter_chunk_latency) - true[1]["decode"]) < tolerance
    assert corrected.completed_time == pytest.approx(corrected.start_time + corrected.query_latency)
