"""``pep``: the platform from a terminal or a pipeline.

    pep models
    pep infer -m sim-fast -m sim-reasoning "Why is the sky blue?"
    pep stress run -m sim-fast -c 1,4,8 -n 8,16,32 --prompt "Hi" --follow --assert 'p95_ttft_ms<=500'
    pep stress results ID --format table|csv|json|html
    pep eval run -m sim-answer-a -d arithmetic --limit 20 --follow --assert 'accuracy>=0.8'
    pep leaderboard

Exit codes (README "Command line"): 0 done; 1 an ``--assert`` bound failed; 2 a usage error (an option,
an unreadable bound); 3 the platform refused the request (4xx); 4 the platform could not be reached or
failed (5xx, a broken stream); 5 a job or a model did not complete (failed, cancelled, interrupted);
130 interrupted (Ctrl-C: a job keeps running; ``pep stress cancel ID`` stops it).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.live import Live

from pep_client import events as ev
from pep_client.cli import gates, screens
from pep_client.client import Client
from pep_client.errors import ApiError, PepConnectionError, PepError

OK, GATE_FAILED, USAGE, REFUSED, UNREACHABLE, NOT_COMPLETED, INTERRUPTED = 0, 1, 2, 3, 4, 5, 130
COMPLETED = frozenset({"completed", "succeeded"})

app = typer.Typer(name="pep", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="The Performance Evaluation Platform from the command line.")
stress_app = typer.Typer(no_args_is_help=True, help="Stress tests (evalscope perf) and their results.")
eval_app = typer.Typer(no_args_is_help=True, help="Accuracy evaluations (evalscope eval).")
app.add_typer(stress_app, name="stress")
app.add_typer(eval_app, name="eval")

def _console(**options: Any) -> Console:
    """A terminal's own width; into a pipe or a file, wide enough for the tables (or COLUMNS)."""
    probe = Console(**options)
    wide = not probe.is_terminal and "COLUMNS" not in os.environ
    return Console(width=160, **options) if wide else probe


# markup off: nothing printed is read as rich markup (a job's error or a model's text may hold "[...]")
out = _console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)  # an error is one line, however long

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
AssertOpt = Annotated[list[str] | None, typer.Option(
    "--assert", help="A bound the run must meet, e.g. 'p95_ttft_ms<=500' (repeatable); exit 1 if not.")]


class ResultFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    html = "html"
    requests_csv = "requests.csv"


class CompareFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    html = "html"


class Done(Exception):
    """Leave with this exit code (after the command has said why)."""

    def __init__(self, code: int) -> None:
        self.code = code


@app.callback()
def _options(ctx: typer.Context,
             base_url: Annotated[str | None, typer.Option(
                 "--base-url", envvar="PEP_BASE_URL", help="The platform (default http://127.0.0.1:5000).")] = None,
             token: Annotated[str | None, typer.Option(
                 "--token", envvar="PEP_API_TOKEN", show_default=False, help="An API token (or PEP_API_TOKEN).")
                              ] = None,
             timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer.")] = 30.0) -> None:
    ctx.obj = {"base_url": base_url, "token": token, "timeout": timeout}


def _client(ctx: typer.Context) -> Client:
    options = ctx.find_root().obj or {}
    try:
        return Client(options.get("base_url"), options.get("token"), timeout=options.get("timeout", 30.0))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--base-url") from error


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def _event_json(event: Any) -> str:
    from dataclasses import asdict

    return json.dumps({"event": type(event).__name__, **asdict(event)}, ensure_ascii=False)


def _csv_ints(values: list[str], name: str) -> list[int]:
    """``-c 1,4,8`` or ``-c 1 -c 4 -c 8`` (or both): the numbers in the order given."""
    numbers: list[int] = []
    for part in (part.strip() for value in values for part in value.split(",")):
        if not part:
            continue
        try:
            numbers.append(int(part))
        except ValueError:
            raise click.BadParameter(f"must be whole numbers separated by commas: {part!r} is not one",
                                     param_hint=name) from None
    if not numbers:
        raise click.BadParameter("must name at least one number", param_hint=name)
    return numbers


def _settings(pairs: Iterable[str]) -> dict[str, Any]:
    """``--set key=value``: a field of the request body (the value read as JSON when it is JSON)."""
    body: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"write KEY=VALUE, not {pair!r}", param_hint="--set")
        try:
            body[key.strip()] = json.loads(raw)
        except ValueError:
            body[key.strip()] = raw
    return body


def _write(data: bytes, output: Path | None) -> None:
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        output.write_bytes(data)
        err.print(f"wrote {len(data):,} bytes to {output}")


# --- models and inference ------------------------------------------------------------------------


@app.command()
def models(ctx: typer.Context, provider: Annotated[str | None, typer.Option(help="bedrock, openai, emd, simulator")
                                                   ] = None,
           capability: Annotated[str | None, typer.Option(help="streaming, images, video, reasoning")] = None,
           as_json: JsonOpt = False) -> None:
    """The models the platform can call."""
    with _client(ctx) as pep:
        found = pep.models.list(provider=provider, capability=capability)
    if as_json:
        _print_json(found)
        return
    rows = [[m.get("key"), m.get("name"), m.get("provider"), "yes" if m.get("available", True) else "no",
             ", ".join(c for c in ("streaming", "images", "video", "reasoning") if m.get(f"supports_{c}")
                       or c in (m.get("capabilities") or []))] for m in found]
    out.print(screens.table(["key", "name", "provider", "available", "capabilities"], rows))


@app.command()
def infer(ctx: typer.Context, prompt: Annotated[str, typer.Argument(help="The prompt.")],
          model: Annotated[list[str], typer.Option("--model", "-m", help="A model key (repeatable).")],
          system: Annotated[str | None, typer.Option(help="A system prompt.")] = None,
          max_tokens: Annotated[int | None, typer.Option(min=1)] = None,
          temperature: Annotated[float | None, typer.Option(min=0.0, max=2.0)] = None,
          image: Annotated[list[Path] | None, typer.Option(
              "--image", exists=True, dir_okay=False, help="An image file to send with the prompt (repeatable).")
                           ] = None,
          video: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="A video file.")] = None,
          as_json: Annotated[bool, typer.Option("--json", help="Each event as a JSON line.")] = False) -> None:
    """Send one prompt to several models; their answers stream side by side."""
    options: dict[str, Any] = {key: value for key, value in {
        "system": system, "max_tokens": max_tokens, "temperature": temperature}.items() if value is not None}
    if image:
        options["images"] = [base64.b64encode(path.read_bytes()).decode() for path in image]
    if video is not None:
        options["video"] = base64.b64encode(video.read_bytes()).decode()
    columns = screens.AnswerColumns(out)
    with _client(ctx) as pep, pep.inference.stream(model, prompt, **options) as stream:
        if as_json:
            for event in stream:
                columns.apply(event)
                sys.stdout.write(_event_json(event) + "\n")
                sys.stdout.flush()
        elif out.is_terminal:
            with Live(columns, console=out, refresh_per_second=10, transient=False, vertical_overflow="crop"):
                for event in stream:
                    columns.apply(event)
        else:
            for event in stream:
                columns.apply(event)
            out.print(columns.plain())
    if any(isinstance(outcome, ev.ModelFailed) for outcome in columns.outcome.values()):
        raise Done(NOT_COMPLETED)


# --- stress tests --------------------------------------------------------------------------------


@stress_app.command("run")
def stress_run(ctx: typer.Context,
               model: Annotated[str, typer.Option("--model", "-m", help="A model key.")],
               concurrency: Annotated[list[str], typer.Option(
                   "--concurrency", "-c", help="Levels, e.g. 1,4,8 (or repeated: -c 1 -c 4 -c 8).")],
               requests: Annotated[list[str], typer.Option(
                   "--requests", "-n", help="Requests per level, e.g. 8,16,32 (or repeated).")],
               prompt: Annotated[str | None, typer.Option(help="A fixed prompt (dataset 'prompt').")] = None,
               dataset: Annotated[str | None, typer.Option(help="prompt, random, openqa, line_by_line, ...")] = None,
               input_tokens: Annotated[int | None, typer.Option(min=1)] = None,
               output_tokens: Annotated[int | None, typer.Option(min=1)] = None,
               label: Annotated[str | None, typer.Option(help="A name for the run.")] = None,
               setting: Annotated[list[str] | None, typer.Option(
                   "--set", help="Any other field of the request, KEY=VALUE (repeatable).")] = None,
               follow: Annotated[bool, typer.Option("--follow", "-f", help="Watch it until it ends.")] = False,
               bounds: AssertOpt = None, as_json: JsonOpt = False) -> None:
    """Start a stress test; with --follow a bar per level, live TTFT and tokens/s; --assert gates on it."""
    checks = _bounds(bounds, "stress")
    body: dict[str, Any] = {"model": model, "concurrency": _csv_ints(concurrency, "--concurrency"),
                            "requests": _csv_ints(requests, "--requests")}
    body |= {key: value for key, value in {"prompt": prompt, "dataset": dataset, "input_tokens": input_tokens,
                                           "output_tokens": output_tokens, "label": label}.items()
             if value is not None}
    body |= _settings(setting or [])
    with _client(ctx) as pep:
        job = pep.stress.create(**body)
        if not as_json:
            err.print(f"stress test {job['id']} {job['status']}")
        if not follow and not checks:
            if as_json:
                _print_json(job)
            else:
                out.print(job["id"])
            return
        _follow_stress(pep, job["id"], checks, as_json, quiet=not follow)


@stress_app.command("follow")
def stress_follow(ctx: typer.Context, job_id: str, bounds: AssertOpt = None, as_json: JsonOpt = False) -> None:
    """Watch a stress test until it ends (and gate on it with --assert)."""
    checks = _bounds(bounds, "stress")
    with _client(ctx) as pep:
        _follow_stress(pep, job_id, checks, as_json, quiet=False)


def _bounds(texts: list[str] | None, kind: str) -> list[gates.Bound]:
    try:
        return gates.parse(texts or [], kind)
    except gates.BadBound as error:
        raise click.BadParameter(str(error).removeprefix("--assert "), param_hint="--assert") from None


def _watch(part: Any, job_id: str, screen: Any, what: str, command: str, as_json: bool,
           quiet: bool) -> dict[str, Any]:
    """Follow a job to its end: its events as JSON lines, nothing (``quiet``, or not a terminal), or
    ``screen(console, job)`` drawn live; the finished job, its end said on stderr."""
    job = dict(part.get(job_id))
    try:
        if as_json:
            final = part.follow_to_end(job_id, None if quiet else lambda e: print(_event_json(e), flush=True))
        elif quiet or not out.is_terminal:
            final = part.follow_to_end(job_id)
        else:
            drawn = screen(out, job)
            with Live(drawn, console=out, refresh_per_second=8, transient=False):
                final = part.follow_to_end(job_id, drawn.apply)
    except KeyboardInterrupt:
        err.print(f"stopped following; {job_id} goes on: pep {command} cancel {job_id} stops it")
        raise Done(INTERRUPTED) from None
    _ended(final, what)
    return final


def _follow_stress(pep: Client, job_id: str, checks: list[gates.Bound], as_json: bool, quiet: bool) -> None:
    final = _watch(pep.stress, job_id, screens.LevelBars, "stress test", "stress", as_json, quiet)
    if final.get("status") in COMPLETED or final.get("levels"):
        results = pep.results.get(job_id)
        if not as_json and not quiet:
            out.print(screens.levels_table(results))
        _gate(gates.check_stress(checks, results) if checks else [], as_json)
    if final.get("status") not in COMPLETED:
        raise Done(NOT_COMPLETED)


def _ended(job: dict[str, Any], what: str) -> None:
    status = job.get("status")
    line = f"{what} {job.get('id')} {status}" + (f": {job['error']}" if job.get("error") else "")
    err.print(screens.clean(line), style=None if status in COMPLETED else "red")


def _gate(verdicts: list[gates.Verdict], as_json: bool) -> None:
    for verdict in verdicts:
        err.print(screens.clean(verdict.line), style="green" if verdict.passed else "bold red")
    if as_json and verdicts:
        _print_json({"assertions": [{"bound": v.bound.text, "passed": v.passed, "line": v.line} for v in verdicts]})
    if any(not verdict.passed for verdict in verdicts):
        raise Done(GATE_FAILED)


@stress_app.command("list")
def stress_list(ctx: typer.Context, status: str | None = None, model: str | None = None,
                limit: Annotated[int, typer.Option(min=1, max=500)] = 20, as_json: JsonOpt = False) -> None:
    """Recent stress tests."""
    with _client(ctx) as pep:
        found = pep.stress.list(status=status, model=model, limit=limit)
    if as_json:
        _print_json(found)
        return
    rows = [[j["id"], j.get("model"), j["status"], j.get("created_at", "")[:19],
             ",".join(str(c) for c in (j.get("params") or {}).get("concurrency") or [])] for j in found["jobs"]]
    out.print(screens.table(["id", "model", "status", "created", "concurrency"], rows,
                            title=f"{found['total']} stress tests"))


@stress_app.command("show")
def stress_show(ctx: typer.Context, job_id: str) -> None:
    """One stress test as JSON."""
    with _client(ctx) as pep:
        _print_json(pep.stress.get(job_id))


@stress_app.command("results")
def stress_results(ctx: typer.Context, job_id: str,
                   fmt: Annotated[ResultFormat, typer.Option("--format")] = ResultFormat.table,
                   output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
                   bounds: AssertOpt = None) -> None:
    """What a finished stress test measured, per level."""
    checks = _bounds(bounds, "stress")
    with _client(ctx) as pep:
        if fmt is ResultFormat.table:
            results = pep.results.get(job_id)
            out.print(screens.levels_table(results))
            summary = results.get("summary") or {}
            capacity = summary.get("capacity") or {}
            slo = (results.get("slo") or {}).get("description")
            out.print(screens.clean(f"SLO: {slo}. Capacity: {capacity.get('concurrency', 'n/c')} "
                                    f"({capacity.get('reason') or 'tested ' + str(capacity.get('tested'))})"))
        else:
            _write(pep.results.export(job_id, fmt.value), output)
            results = pep.results.get(job_id) if checks else {}
        if checks:
            _gate(gates.check_stress(checks, results), False)


@stress_app.command("compare")
def stress_compare(ctx: typer.Context, job_ids: Annotated[list[str], typer.Argument(help="Two or more job ids.")],
                   fmt: Annotated[CompareFormat, typer.Option("--format")] = CompareFormat.table,
                   baseline: Annotated[str | None, typer.Option(help="The job the others are set against.")] = None,
                   output: Annotated[Path | None, typer.Option("--output", "-o")] = None) -> None:
    """Several stress tests level by level, against a baseline."""
    with _client(ctx) as pep:
        if fmt is not CompareFormat.table:
            _write(pep.results.export_comparison(job_ids, fmt.value, baseline=baseline), output)
            return
        comparison = pep.results.compare(job_ids, baseline=baseline)
    ids = comparison["ids"]
    rows = []
    for row in comparison["table"]:
        cells = []
        for job_id in ids:
            cell = row["cells"].get(job_id) or {}
            text = screens.number(cell.get("value"), 2)
            delta = (cell.get("delta") or {}).get("pct")
            cells.append(text + (f" ({delta:+.1f} %)" if isinstance(delta, int | float) else ""))
        rows.append([row["concurrency"], row["label"], *cells])
    out.print(screens.table(["conc.", "figure", *[f"{i}{' (baseline)' if i == comparison['baseline'] else ''}"
                                                  for i in ids]], rows))


@stress_app.command("cancel")
def stress_cancel(ctx: typer.Context, job_id: str) -> None:
    """Stop a stress test."""
    with _client(ctx) as pep:
        job = pep.stress.cancel(job_id)
    out.print(f"{job['id']} {job['status']}")


@stress_app.command("delete")
def stress_delete(ctx: typer.Context, job_id: str) -> None:
    """Delete a finished stress test and its results."""
    with _client(ctx) as pep:
        pep.stress.delete(job_id)
    out.print(f"{job_id} deleted")


# --- evaluations ---------------------------------------------------------------------------------


@eval_app.command("run")
def eval_run(ctx: typer.Context,
             model: Annotated[list[str], typer.Option("--model", "-m", help="A model key (repeatable).")],
             dataset: Annotated[list[str], typer.Option("--dataset", "-d", help="A dataset id or name (repeatable).")],
             limit: Annotated[int | None, typer.Option(min=1, help="Items per dataset.")] = None,
             judge: Annotated[str | None, typer.Option(help="A model key that judges the answers.")] = None,
             label: str | None = None,
             setting: Annotated[list[str] | None, typer.Option("--set", help="Any other field, KEY=VALUE.")] = None,
             follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
             bounds: AssertOpt = None, as_json: JsonOpt = False) -> None:
    """Score models on datasets; with --follow a bar per cell; --assert 'accuracy>=0.8' gates on it."""
    checks = _bounds(bounds, "eval")
    body: dict[str, Any] = {"models": model, "datasets": dataset}
    body |= {k: v for k, v in {"limit": limit, "judge": judge, "label": label}.items() if v is not None}
    body |= _settings(setting or [])
    with _client(ctx) as pep:
        body["datasets"] = [_dataset_ref(pep, ref) for ref in dataset]
        job = pep.evaluations.create(**body)
        if not as_json:
            err.print(f"evaluation {job['id']} {job['status']}")
        if not follow and not checks:
            _print_json(job) if as_json else out.print(job["id"])
            return
        _follow_eval(pep, job["id"], checks, as_json, quiet=not follow)


def _dataset_ref(pep: Client, ref: str) -> str:
    """A dataset's id; or the id of the one dataset whose name is, or begins with, ``ref`` (any case:
    ``arithmetic``); anything else passes as it is (a built-in benchmark's name, or the platform's 400)."""
    listed = pep.datasets.list()["datasets"]
    if any(d.get("id") == ref for d in listed):
        return ref
    wanted = ref.casefold()
    for match in (lambda name: name == wanted, lambda name: name.startswith(wanted)):
        named = [d for d in listed if match(str(d.get("name", "")).casefold())]
        if len(named) == 1:
            return str(named[0]["id"])
    return ref


@eval_app.command("follow")
def eval_follow(ctx: typer.Context, job_id: str, bounds: AssertOpt = None, as_json: JsonOpt = False) -> None:
    """Watch an evaluation until it ends (and gate on it with --assert)."""
    checks = _bounds(bounds, "eval")
    with _client(ctx) as pep:
        _follow_eval(pep, job_id, checks, as_json, quiet=False)


def _follow_eval(pep: Client, job_id: str, checks: list[gates.Bound], as_json: bool, quiet: bool) -> None:
    final = _watch(pep.evaluations, job_id, screens.CellBars, "evaluation", "eval", as_json, quiet)
    if not as_json and not quiet:
        out.print(_cells_table(final))
    _gate(gates.check_evaluation(checks, final) if checks else [], as_json)
    if final.get("status") not in COMPLETED:
        raise Done(NOT_COMPLETED)


def _cells_table(job: dict[str, Any]) -> Any:
    rows = []
    for cell in job.get("cells") or []:
        name = cell.get("primary_metric")
        metric = (cell.get("metrics") or {}).get(name or "") or {}
        rows.append([cell.get("model"), cell.get("dataset_name") or cell.get("dataset_id"), cell.get("status"),
                     name or "", screens.number(metric.get("score"), 3), metric.get("n", "n/c"),
                     f"{screens.number(metric.get('ci_low'), 3)}-{screens.number(metric.get('ci_high'), 3)}"])
    return screens.table(["model", "dataset", "status", "metric", "score", "n", "95% CI"], rows,
                         title=f"evaluation {job.get('id')}")


@eval_app.command("show")
def eval_show(ctx: typer.Context, job_id: str, as_json: JsonOpt = False) -> None:
    """An evaluation's cells and scores."""
    with _client(ctx) as pep:
        job = pep.evaluations.get(job_id)
    _print_json(job) if as_json else out.print(_cells_table(dict(job)))


@eval_app.command("samples")
def eval_samples(ctx: typer.Context, job_id: str,
                 wrong: Annotated[bool, typer.Option("--wrong", help="Only answers not fully right.")] = False,
                 cell: Annotated[int | None, typer.Option(help="Only this cell (a model on a dataset).")] = None,
                 q: Annotated[str | None, typer.Option("--search", help="Text in the prompt or answer.")] = None,
                 limit: Annotated[int, typer.Option(min=1, help="At most this many samples.")] = 50,
                 as_json: JsonOpt = False) -> None:
    """An evaluation's answers, with their references and scores."""
    with _client(ctx) as pep:
        samples = []
        for sample in pep.evaluations.all_samples(job_id, wrong=wrong or None, cell=cell, q=q,
                                                  limit=min(limit, 100)):
            samples.append(sample)
            if len(samples) >= limit:
                break
    if as_json:
        _print_json(samples)
        return
    rows = [[s.get("model") or s.get("cell_id"), s.get("sample_id") or s.get("index"), _short(_prompt(s)),
             _short(s.get("prediction")), _short(s.get("reference")), screens.number(s.get("score"), 2),
             {True: "right", False: "wrong"}.get(s.get("correct"), "n/c")] for s in samples]  # type: ignore[arg-type]
    out.print(screens.table(["model", "sample", "prompt", "answer", "reference", "score", "verdict"], rows,
                            title=f"{len(samples)} samples" + (" answered wrong" if wrong else "")))


def _prompt(sample: dict[str, Any]) -> str:
    """The last message the model was sent, without the instructions before its last paragraph."""
    messages = sample.get("input_messages") or []
    text = str(messages[-1].get("content", "")) if messages and isinstance(messages[-1], dict) else ""
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    return " / ".join(paragraphs[1:]) if len(paragraphs) > 1 else text


def _short(value: Any, width: int = 60) -> str:
    text = " ".join(screens.clean(str(value if value is not None else "")).split())
    return text if len(text) <= width else text[: width - 1] + "…"


@eval_app.command("cancel")
def eval_cancel(ctx: typer.Context, job_id: str) -> None:
    """Stop an evaluation."""
    with _client(ctx) as pep:
        job = pep.evaluations.cancel(job_id)
    out.print(f"{job['id']} {job['status']}")


@eval_app.command("datasets")
def eval_datasets(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The evaluation datasets (bundled and uploaded)."""
    with _client(ctx) as pep:
        found = pep.datasets.list()["datasets"]
    if as_json:
        _print_json(found)
        return
    out.print(screens.table(["id", "name", "kind", "items", "bundled"],
                            [[d.get("id"), d.get("name"), d.get("kind"), d.get("items"), d.get("bundled")]
                             for d in found]))


@app.command()
def leaderboard(ctx: typer.Context, dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
                models: Annotated[str | None, typer.Option(help="Only these models (comma-separated).")] = None,
                pick: Annotated[str | None, typer.Option(help="latest (default) or best run of each model.")] = None,
                as_json: JsonOpt = False) -> None:
    """Models ranked by score per dataset, each score with its n and 95 % interval; ties marked."""
    with _client(ctx) as pep:
        board = pep.leaderboard(dataset=dataset, models=models, pick=pick)
    if as_json:
        _print_json(board)
        return
    columns = board.get("columns") or []
    if not board.get("rows"):
        out.print("no finished evaluation yet")
        return
    headers = ["model", "mean rank"] + [screens.clean(str(c.get("label") or c.get("key"))) for c in columns]
    rows = []
    for row in board["rows"]:
        cells = []
        for column in columns:
            cell = (row.get("cells") or {}).get(column.get("key")) or {}
            score = cell.get("score")
            if score is None:
                cells.append("-")
                continue
            mark = " *" if cell.get("best") else " =" if cell.get("tied") else ""
            cells.append(f"{score:.3f} [{screens.number(cell.get('ci_low'), 3)}, "
                         f"{screens.number(cell.get('ci_high'), 3)}] n={cell.get('n')}{mark}")
        rows.append([row.get("model_name") or row.get("model"), screens.number(row.get("mean_rank"), 2), *cells])
    out.print(screens.table(headers, rows, title="leaderboard (* best, = tied with the best: intervals overlap)"))


@app.command()
def workers(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The job workers, their capacity and heartbeats."""
    with _client(ctx) as pep:
        found = pep.workers()["workers"]
    if as_json:
        _print_json(found)
        return
    out.print(screens.table(["id", "host", "alive", "running", "capacity", "heartbeat"],
                            [[w["id"], w.get("host"), w["alive"], json.dumps(w["running"]),
                              json.dumps(w["capacity"]), w["heartbeat_at"][:19]] for w in found]))


# --- the entry point -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """``pep``: run a command; errors as one line on stderr, never a traceback; the exit code says how."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="pep", standalone_mode=False)
    except click.exceptions.Exit as stop:  # --help and the like
        code = stop.exit_code
    except click.ClickException as error:  # usage: an option, a bound
        error.show(file=sys.stderr)
        code = USAGE
    except click.exceptions.Abort:
        code = INTERRUPTED
    except Done as done:
        code = done.code
    except ApiError as error:
        field = f" [field: {error.field}]" if error.field else ""
        err.print(screens.clean(f"pep: {error.message} ({error.code}, HTTP {error.status}){field}"), style="red")
        code = REFUSED if error.status < 500 else UNREACHABLE
    except PepConnectionError as error:
        err.print(screens.clean(f"pep: {error}"), style="red")
        code = UNREACHABLE
    except PepError as error:
        err.print(screens.clean(f"pep: {error}"), style="red")
        code = UNREACHABLE
    except KeyboardInterrupt:
        code = INTERRUPTED
    except BrokenPipeError:  # `pep ... | head`
        code = OK
    except OSError as error:  # --output into a folder that does not exist, say
        err.print(screens.clean(f"pep: {error}"), style="red")
        code = USAGE
    sys.exit(code if isinstance(code, int) else OK)
