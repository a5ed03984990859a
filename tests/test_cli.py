"""The ``pep`` command through its real entry point (the console script the platform's install puts beside
Python) against a live platform: output, ``--assert`` gates passing and failing, exit codes, one-line errors,
and runs in a real terminal (tmux) whose screens are captured: the live columns and the progress bars."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pep_client import Client
from PIL import Image

from tests.support.app_server import AppServer
from tests.support.live_platform import arithmetic_right, live_platform
from tests.support.simulator import SimulatorProcess, free_port

PEP = Path(sys.executable).parent / "pep"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppServer, SimulatorProcess]]:
    with live_platform(tmp_path_factory.mktemp("cli"), seed=17) as served:
        yield served


@pytest.fixture
def api(platform: tuple[AppServer, SimulatorProcess]) -> Iterator[Client]:
    with Client(platform[0].url) as client:
        yield client


def pep(platform: tuple[AppServer, SimulatorProcess], *args: str, timeout: float = 240,
        base_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PEP_BASE_URL": base_url or platform[0].url, "COLUMNS": "200"}
    env.pop("PEP_API_TOKEN", None)
    return subprocess.run([str(PEP), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_models_as_json_are_the_apis(platform: tuple[AppServer, SimulatorProcess], api: Client) -> None:
    done = pep(platform, "models", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == api.models.list()
    table = pep(platform, "models", "--provider", "simulator")
    assert table.returncode == 0 and "sim-fast" in table.stdout and "claude" not in table.stdout


def test_infer_as_json_lines_an_image_and_a_failing_model(platform: tuple[AppServer, SimulatorProcess],
                                                           tmp_path: Path) -> None:
    _, sim = platform
    since = time.time()
    done = pep(platform, "infer", "-m", "sim-fast", "-m", "sim-reasoning", "cli json prompt", "--max-tokens", "9",
               "--json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["event"] == "RunStarted" and events[-1] == {"event": "RunDone", "run_id": events[0]["run_id"],
                                                                  "succeeded": 2, "failed": 0}
    emitted = {r["model"]: r["tokens_emitted"] for r in sim.requests(since) if r["prompt"] == "cli json prompt"}
    for model in ("sim-fast", "sim-reasoning"):
        pieces = [e for e in events if e["event"] in ("TextDelta", "ReasoningDelta") and e["model"] == model]
        assert len(pieces) == emitted[model] == 9
    picture = tmp_path / "red.png"
    Image.new("RGB", (8, 6), (200, 30, 30)).save(picture)
    since = time.time()
    seen = pep(platform, "infer", "-m", "sim-vision", "--image", str(picture), "cli image", "--json")
    assert seen.returncode == 0, seen.stderr
    (record,) = [r for r in sim.requests(since) if r["prompt"] == "cli image"]
    assert len(record["images"]) == 1, record
    failed = pep(platform, "infer", "-m", "sim-fast", "-m", "sim-error", "cli failing")
    assert failed.returncode == 5, failed.stderr
    assert "== Simulator (error) (sim-error)" in failed.stdout and "failed: upstream" in failed.stdout


def test_a_stress_run_gated_and_its_results(platform: tuple[AppServer, SimulatorProcess], api: Client) -> None:
    # levels repeated (-c 1 -c 2) or comma-separated (-n 3,4): both lists reach the job whole
    done = pep(platform, "stress", "run", "-m", "sim-fast", "-c", "1", "-c", "2", "-n", "3,4", "--prompt", "cli gate",
               "--set", "output_tokens=8", "--follow", "--assert", "p95_ttft_ms<=5000", "--assert", "error_rate<=0.01")
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stderr.split()[2]
    results = api.results.get(job_id)
    worst = max(level["ttft_ms"]["p95"] for level in results["levels"])
    at = max(results["levels"], key=lambda level: level["ttft_ms"]["p95"])
    assert f"PASS p95_ttft_ms<=5000: worst {worst:.4g} at concurrency {at['concurrency']} (n={at['requests']} " \
           "requests)" in done.stderr
    assert "PASS error_rate<=0.01" in done.stderr
    assert [(level["concurrency"], level["requests"]) for level in results["levels"]] == [(1, 3), (2, 4)]

    # the same run against a bound below what it measured: every level is named, exit 1
    bound = min(level["ttft_ms"]["p95"] for level in results["levels"]) / 2
    failed = pep(platform, "stress", "results", job_id, "--assert", f"p95_ttft_ms<={bound:.3f}")
    assert failed.returncode == 1, failed.stderr
    (line,) = [line for line in failed.stderr.splitlines() if line.startswith("FAIL")]
    for level in results["levels"]:
        assert f"{level['ttft_ms']['p95']:.4g} at concurrency {level['concurrency']}" in line
    only = pep(platform, "stress", "results", job_id, "--assert", f"p95_ttft_ms@{at['concurrency']}<={worst + 1:.3f}")
    assert only.returncode == 0 and f"worst {worst:.4g} at concurrency {at['concurrency']}" in only.stderr
    absent = pep(platform, "stress", "results", job_id, "--assert", "p95_ttft_ms@99<=5000")
    assert absent.returncode == 1 and "no level at concurrency 99" in absent.stderr

    csv_out = pep(platform, "stress", "results", job_id, "--format", "csv")
    assert csv_out.returncode == 0 and csv_out.stdout.encode() == api.results.export(job_id, "csv")
    assert [int(r["concurrency"]) for r in csv.DictReader(io.StringIO(csv_out.stdout))] == [1, 2]
    assert json.loads(pep(platform, "stress", "results", job_id, "--format", "json").stdout)["job"]["id"] == job_id
    table = pep(platform, "stress", "results", job_id)
    assert table.returncode == 0 and job_id in table.stdout and "Capacity:" in table.stdout

    second = pep(platform, "stress", "run", "-m", "sim-fast", "-c", "1", "-n", "2", "--prompt", "cli gate fails",
                 "--set", "output_tokens=8", "--assert", "p95_ttft_ms<=0.001")
    assert second.returncode == 1, second.stdout + second.stderr
    assert "FAIL p95_ttft_ms<=0.001:" in second.stderr and "at concurrency 1 (n=2 requests)" in second.stderr
    other = second.stderr.split()[2]
    compared = pep(platform, "stress", "compare", job_id, other)
    assert compared.returncode == 0 and f"{job_id} (baseline)" in compared.stdout and other in compared.stdout
    listed = pep(platform, "stress", "list", "--json")
    assert {job_id, other} <= {j["id"] for j in json.loads(listed.stdout)["jobs"]}


def test_a_stress_test_cancelled_from_the_command_line(platform: tuple[AppServer, SimulatorProcess],
                                                       api: Client) -> None:
    started = pep(platform, "stress", "run", "-m", "sim-slow", "-c", "1", "-n", "20", "--prompt", "cli cancel")
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.strip()
    cancelled = pep(platform, "stress", "cancel", job_id)
    assert cancelled.returncode == 0 and cancelled.stdout.split()[0] == job_id
    assert api.stress.wait(job_id, timeout=90, poll_s=0.3)["status"] == "cancelled"
    followed = pep(platform, "stress", "follow", job_id)
    assert followed.returncode == 5 and f"stress test {job_id} cancelled" in followed.stderr


def test_an_evaluation_gated_on_accuracy(platform: tuple[AppServer, SimulatorProcess], api: Client) -> None:
    limit = 10
    right = {model: arithmetic_right(model, limit)[0] for model in ("sim-answer-a", "sim-answer-b")}
    lowest = min(right.values()) / limit
    done = pep(platform, "eval", "run", "-m", "sim-answer-a", "-m", "sim-answer-b", "-d", "arithmetic", "--limit",
               str(limit), "--follow", "--assert", f"accuracy>={lowest}", "--assert", "accuracy>=1.0")
    assert done.returncode == (0 if lowest == 1.0 else 1), done.stdout + done.stderr
    assert f"PASS accuracy>={lowest}:" in done.stderr
    fail_lines = [line for line in done.stderr.splitlines() if line.startswith("FAIL accuracy>=1.0")]
    assert len(fail_lines) == 1
    for model, count in right.items():
        if count < limit:
            assert f"{count / limit:.4g} acc for {model} on Arithmetic" in fail_lines[0]
            assert f"(n={limit}, 95% CI" in fail_lines[0]
    job_id = done.stderr.split()[1]
    wrong = pep(platform, "eval", "samples", job_id, "--wrong", "--json", "--limit", "100")
    assert wrong.returncode == 0, wrong.stderr
    samples = json.loads(wrong.stdout)
    assert len(samples) == sum(limit - count for count in right.values())
    assert all(sample["correct"] is False for sample in samples)
    board = pep(platform, "leaderboard", "--json")
    assert {row["model"] for row in json.loads(board.stdout)["rows"]} >= set(right)
    assert "Arithmetic" in pep(platform, "leaderboard").stdout
    shown = pep(platform, "eval", "show", job_id)
    assert shown.returncode == 0 and "sim-answer-a" in shown.stdout and "95% CI" in shown.stdout


def test_errors_are_one_line_with_their_exit_code(platform: tuple[AppServer, SimulatorProcess], api: Client) -> None:
    before = api.stress.list(limit=500)["total"]
    usage = pep(platform, "stress", "run", "-m", "sim-fast", "-c", "1", "-n", "1", "--assert", "p95_ttft<=1")
    assert usage.returncode == 2 and "unknown metric 'p95_ttft'" in usage.stderr
    not_a_level = pep(platform, "stress", "run", "-m", "sim-fast", "-c", "1", "-c", "x", "-n", "1")
    assert not_a_level.returncode == 2 and "'x' is not one" in not_a_level.stderr
    assert api.stress.list(limit=500)["total"] == before  # nothing started for a bound or a level that cannot be read
    refused = pep(platform, "infer", "-m", "no-such-model", "hello")
    assert refused.returncode == 3
    assert refused.stderr.count("\n") == 1 and "[field: models[0]]" in refused.stderr
    assert "Traceback" not in refused.stderr
    bracketed = pep(platform, "infer", "-m", "[bold]nope[/bold]", "hello")  # printed as it is, not as markup
    assert bracketed.returncode == 3 and "[bold]nope[/bold]" in bracketed.stderr
    escaped = pep(platform, "infer", "-m", "\x1b[31mred\x07", "hello")  # no escape sequence reaches the terminal
    assert escaped.returncode == 3 and "\x1b" not in escaped.stderr and "\x07" not in escaped.stderr
    missing = pep(platform, "stress", "cancel", "000000000000")
    assert missing.returncode == 3 and "(not_found, HTTP 404)" in missing.stderr
    unreachable = pep(platform, "models", base_url=f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 4 and unreachable.stderr.startswith("pep: cannot connect to")
    assert pep(platform, "--help").returncode == 0


# --- in a real terminal ------------------------------------------------------------------------------


class Terminal:
    """A tmux session of its own server (its own socket), 160 x 40, running one command."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.socket = f"pep-test-{os.getpid()}-{name}"
        self.status = tmp / f"{name}.status"

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True,
                              timeout=20).stdout

    def run(self, env: dict[str, str], *args: str) -> None:
        # the terminal's own size, not a COLUMNS or LINES the test run has
        command = shlex.join(["env", "-u", "COLUMNS", "-u", "LINES", *(f"{k}={v}" for k, v in env.items()),
                              str(PEP), *args])
        shell = f"{command}; echo $? > {shlex.quote(str(self.status))}; sleep 600"
        self.tmux("new-session", "-d", "-s", "main", "-x", "160", "-y", "40", shell)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "main")

    def exit_code(self) -> int | None:
        return int(self.status.read_text()) if self.status.exists() and self.status.read_text().strip() else None

    def wait(self, predicate, timeout: float) -> str:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"the screen never showed it:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False, timeout=20)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    assert shutil.which("tmux"), "tmux is needed (scripts/test.sh installs it)"
    term = Terminal(tmp_path.name[:20], tmp_path)
    yield term
    term.close()


def _row_with(screen: str, *texts: str) -> str | None:
    return next((line for line in screen.splitlines() if all(text in line for text in texts)), None)


def test_infer_streams_the_models_side_by_side_in_a_terminal(platform: tuple[AppServer, SimulatorProcess],
                                                             terminal: Terminal) -> None:
    env = {"PEP_BASE_URL": platform[0].url, "TERM": "xterm-256color"}
    terminal.run(env, "infer", "-m", "sim-fast", "-m", "sim-slow", "side by side", "--max-tokens", "6")
    # sim-fast has answered while sim-slow (1 token/s) still streams: their columns share the screen's rows
    mid = terminal.wait(lambda s: "TTFT" in s and "streaming" in s, timeout=30)
    assert _row_with(mid, "Simulator (fast)", "Simulator (slow)"), mid
    assert _row_with(mid, "TTFT", "streaming"), mid
    assert terminal.exit_code() is None  # still running
    end = terminal.wait(lambda s: terminal.exit_code() is not None, timeout=60)
    assert terminal.exit_code() == 0, end
    status = _row_with(end, "TTFT", "TTFT")
    assert status and status.count("6 tokens") == 2, end


def test_a_followed_stress_run_draws_a_bar_per_level_in_a_terminal(platform: tuple[AppServer, SimulatorProcess],
                                                                   terminal: Terminal, api: Client) -> None:
    env = {"PEP_BASE_URL": platform[0].url, "TERM": "xterm-256color"}
    terminal.run(env, "stress", "run", "-m", "sim-fast", "-c", "1,2", "-n", "4,6", "--prompt", "bars",
                 "--set", "output_tokens=60", "--follow", "--assert", "error_rate<=0")
    live = terminal.wait(lambda s: "TTFT" in s and "concurrency    1" in s and terminal.exit_code() is None,
                         timeout=120)
    assert _row_with(live, "concurrency    2", "0/6"), live  # the second level waits its turn
    end = terminal.wait(lambda s: terminal.exit_code() is not None, timeout=180)
    assert terminal.exit_code() == 0, end
    assert _row_with(end, "concurrency    1", "4/4", "TTFT p50"), end
    assert _row_with(end, "concurrency    2", "6/6", "TTFT p50"), end
    assert "PASS error_rate<=0" in end
    job_id = next(line.split()[2] for line in end.splitlines() if line.startswith("stress test "))
    assert [lv["requests"] for lv in api.results.get(job_id)["levels"]] == [4, 6]
