"""What ``pep`` draws in a terminal (rich): the models' answers side by side as they stream, a progress
bar per stress level with live TTFT and tokens/s, an evaluation's cells, and the tables.

Model output is untrusted: it is shown as ``rich.text.Text`` (never read as markup) with its control
characters removed (no escape sequence from a model reaches the terminal)."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pep_client import events as ev

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
NOT_COMPUTED = "n/c"  # a value the platform could not compute: never shown as 0


def clean(text: str) -> str:
    """Untrusted text without control characters (newlines and tabs kept; ESC, CR, BEL... removed)."""
    return _CONTROL.sub("", text)


def number(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return NOT_COMPUTED
    return f"{value:,.{digits}f}{unit}"


# --- infer: the models side by side --------------------------------------------------------------


class AnswerColumns:
    """The state of a multi-model run and its rendering as one column per model."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.targets: list[ev.Target] = []
        self.text: dict[str, list[str]] = {}
        self.reasoning: dict[str, list[str]] = {}
        self.outcome: dict[str, ev.ModelDone | ev.ModelFailed] = {}
        self.run_id: str | None = None

    def apply(self, event: ev.InferenceEvent) -> None:
        if isinstance(event, ev.RunStarted):
            self.run_id = event.run_id
            self.targets = list(event.targets)
            for target in self.targets:
                self.text[target.model], self.reasoning[target.model] = [], []
        elif isinstance(event, ev.TextDelta):
            self.text.setdefault(event.model, []).append(event.text)
        elif isinstance(event, ev.ReasoningDelta):
            self.reasoning.setdefault(event.model, []).append(event.text)
        elif isinstance(event, ev.ModelDone | ev.ModelFailed):
            self.outcome[event.model] = event

    def status(self, model: str) -> Text:
        outcome = self.outcome.get(model)
        if isinstance(outcome, ev.ModelFailed):
            return Text(f"failed: {clean(outcome.code)}: {clean(outcome.message)}", style="red")
        if isinstance(outcome, ev.ModelDone):
            m = outcome.metrics
            return Text(f"TTFT {number(m.get('ttft_ms'), 0, ' ms')} · {number(m.get('tokens_per_s'), 1, ' tok/s')}"
                        f" · {m.get('output_tokens', NOT_COMPUTED)} tokens", style="green")
        return Text("streaming…" if self.text.get(model) or self.reasoning.get(model) else "waiting…",
                    style="yellow")

    def answer(self, model: str) -> str:
        return clean("".join(self.text.get(model, [])))

    def __rich__(self) -> RenderableType:
        count = max(1, len(self.targets))
        width = max(10, self.console.size.width // count - 4)
        height = max(3, self.console.size.height - 3)
        grid = Table.grid(expand=True, padding=(0, 0))
        for _ in range(count):
            grid.add_column(ratio=1)
        panels = []
        for target in self.targets:
            body = Text()
            thinking = clean("".join(self.reasoning.get(target.model, [])))
            lines = []
            for paragraph in (thinking + ("\n" if thinking else "") + self.answer(target.model)).split("\n"):
                lines.extend(textwrap.wrap(paragraph, width, replace_whitespace=False, drop_whitespace=False) or [""])
            body.append("\n".join(lines[-(height - 2):]))
            panels.append(Panel(body, title=Text(clean(target.name or target.model), style="bold"),
                                subtitle=self.status(target.model), height=height))
        grid.add_row(*panels)
        return grid

    def plain(self) -> RenderableType:
        """For a pipe or a file: each answer in full, one after the other."""
        parts: list[RenderableType] = []
        for target in self.targets:
            parts.append(Text(f"== {clean(target.name or target.model)} ({target.model})", style="bold"))
            thinking = clean("".join(self.reasoning.get(target.model, [])))
            if thinking:
                parts.append(Text(f"(thinking) {thinking}", style="dim"))
            parts.append(Text(self.answer(target.model)))
            parts.append(self.status(target.model))
        return Group(*parts)


# --- stress: a bar per level ---------------------------------------------------------------------


class LevelBars:
    """A progress bar per concurrency level, with the live TTFT and tokens/s of the level running."""

    def __init__(self, console: Console, job: dict[str, Any]) -> None:
        params = job.get("params") or {}
        self.concurrency: list[int] = list(params.get("concurrency") or [])
        requests = params.get("requests")
        self.requests: list[int] = (list(requests) if isinstance(requests, list)
                                    else [int(requests or 0)] * len(self.concurrency))
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[figures]}"), TimeElapsedColumn(), console=console,
                                 transient=False)
        self.tasks: list[TaskID] = [
            self.progress.add_task(f"concurrency {c:>4}", total=n or None, figures="", start=False)
            for c, n in zip(self.concurrency, self.requests, strict=False)]
        self.status = Text(f"{job['id']}: {job.get('status')}")

    def __rich__(self) -> RenderableType:
        return Group(self.status, self.progress.make_tasks_table(self.progress.tasks))

    def apply(self, event: ev.JobEvent) -> None:
        if isinstance(event, ev.Progress):
            processed = int(event.data.get("processed") or 0)
            current = int(event.data.get("level") or 0) - 1
            before = 0
            for index, task in enumerate(self.tasks):
                done = max(0, min(self.requests[index], processed - before))
                if index <= current and not self.progress.tasks[index].started:
                    self.progress.start_task(task)
                self.progress.update(task, completed=done)
                before += self.requests[index]
            phase = event.data.get("phase")
            self.status = Text(f"{event.data.get('status')}" + (f" · {phase}" if phase else "")
                               + f" · {number(event.data.get('percent'), 1, ' %')}")
        elif isinstance(event, ev.RequestSample):
            index = self._index(event.data.get("level"))
            if index is not None:
                self.progress.update(self.tasks[index], figures=(
                    f"TTFT {number(event.data.get('ttft_ms'), 0, ' ms')} · "
                    f"{number(event.data.get('output_tokens_per_s'), 0, ' tok/s')}"
                    + (f" · {event.data['errors']} errors" if event.data.get("errors") else "")))
        elif isinstance(event, ev.LevelDone):
            level = event.level
            index = self._index(level.get("concurrency"))
            if index is not None:
                task = self.tasks[index]
                if not self.progress.tasks[index].started:
                    self.progress.start_task(task)
                self.progress.update(task, completed=self.requests[index], figures=(
                    f"TTFT p50 {number((level.get('ttft_ms') or {}).get('p50'), 0, ' ms')} · "
                    f"{number(level.get('output_tokens_per_s'), 0, ' tok/s')} · "
                    f"{level.get('failed', 0)} failed"))
                self.progress.stop_task(task)
        elif isinstance(event, ev.StatusChanged):
            self.status = Text(f"{event.status}" + (f": {clean(event.error)}" if event.error else ""))

    def _index(self, concurrency: Any) -> int | None:
        try:
            return self.concurrency.index(int(concurrency))
        except (TypeError, ValueError):
            return None


class CellBars:
    """An evaluation's cells (a model on a dataset), each with its progress and live score."""

    def __init__(self, console: Console, job: dict[str, Any]) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[score]}"), TimeElapsedColumn(), console=console)
        self.tasks: dict[int, TaskID] = {}
        self.status = Text(f"{job['id']}: {job.get('status')}")
        for cell in job.get("cells") or []:
            self._task(cell)

    def _task(self, cell: dict[str, Any]) -> TaskID:
        if cell["id"] not in self.tasks:
            dataset = cell.get("dataset_name") or cell.get("dataset_id")
            label = f"{clean(str(cell.get('model')))} · {clean(str(dataset))}"
            total = (cell.get("progress") or {}).get("total")
            self.tasks[cell["id"]] = self.progress.add_task(label, total=total, score="")
        return self.tasks[cell["id"]]

    def apply(self, event: ev.JobEvent) -> None:
        if isinstance(event, ev.CellUpdate):
            cell = event.cell
            task = self._task(cell)
            progress = cell.get("progress") or {}
            metric = (cell.get("metrics") or {}).get(cell.get("primary_metric") or "")
            if isinstance(metric, dict):
                score = (f"{cell.get('primary_metric')} {number(metric.get('score'), 3)} "
                         f"(n={metric.get('n')}, 95% CI {number(metric.get('ci_low'), 3)}-"
                         f"{number(metric.get('ci_high'), 3)})")
            else:
                live = cell.get("live") or {}
                score = f"so far {number(live.get('score'), 3)}" if live.get("score") is not None else ""
            self.progress.update(task, completed=progress.get("done") or 0, total=progress.get("total"),
                                 score=f"{cell.get('status')} {score}".strip())
        elif isinstance(event, ev.StatusChanged):
            self.status = Text(f"{event.status}" + (f": {clean(event.error)}" if event.error else ""))

    def __rich__(self) -> RenderableType:
        return Group(self.status, self.progress.make_tasks_table(self.progress.tasks))


# --- tables --------------------------------------------------------------------------------------


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> Table:
    out = Table(title=title, header_style="bold")
    for column in columns:
        out.add_column(column, overflow="fold", no_wrap=False)
    for row in rows:
        out.add_row(*[cell if isinstance(cell, Text) else Text(clean(str(cell))) for cell in row])
    return out


def levels_table(results: dict[str, Any]) -> Table:
    def pct(level: dict[str, Any], family: str, stat: str, digits: int = 0) -> str:
        return number((level.get(family) or {}).get(stat), digits)

    rows = [[level.get("concurrency"), level.get("requests"), level.get("failed"),
             number(level.get("error_rate"), 3), pct(level, "ttft_ms", "p50"), pct(level, "ttft_ms", "p95"),
             pct(level, "ttft_ms", "p99"), pct(level, "tpot_ms", "p50", 1), pct(level, "tpot_ms", "p95", 1),
             pct(level, "latency_s", "p95", 2), number(level.get("req_per_s"), 2),
             number(level.get("output_tokens_per_s"), 0), number((level.get("goodput") or {}).get("fraction"), 2)]
            + ([] if level.get("complete", True) else ["partial"])
            for level in results.get("levels") or []]
    job = results.get("job") or {}
    return table(["conc.", "requests", "failed", "error\nrate", "TTFT\np50 ms", "TTFT\np95 ms", "TTFT\np99 ms",
                  "TPOT\np50 ms", "TPOT\np95 ms", "latency\np95 s", "req/s", "out\ntok/s", "good-\nput"], rows,
                 title=f"{job.get('id')} · {clean(str(job.get('name') or job.get('model')))} · {job.get('status')}")
