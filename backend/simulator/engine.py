"""The capacity model: one batching engine per simulated model.

An engine imitates a GPU inference server. Requests wait in a FIFO queue until the batch has room
(``max_batch``); each decode step gives every sequence in the batch one token and lasts
``decode_base_ms + decode_ms_per_seq * batch_size`` plus the prefill cost of the requests admitted in
that step. One asyncio task per engine runs the steps while there is work; it only bumps counters and
resolves futures, so a slow client socket never holds up the batch.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections import deque

from backend.simulator.profiles import Profile


class Sequence:
    """One request's place in an engine: how many tokens it wants and how many it has got."""

    __slots__ = ("cancelled", "finished", "input_tokens", "produced", "total", "waiter")

    def __init__(self, total: int, input_tokens: int) -> None:
        self.total = total
        self.input_tokens = input_tokens
        self.produced = 0
        self.finished = total <= 0
        self.cancelled = False
        self.waiter: asyncio.Future[None] | None = None

    async def wait_for_tokens(self, sent: int) -> None:
        """Return once more than ``sent`` tokens are produced or the sequence is finished."""
        if self.produced > sent or self.finished:
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiter = waiter
        await waiter


class Engine:
    """Continuous batching for one model profile."""

    def __init__(self, profile: Profile, seed: int) -> None:
        self.profile = profile
        self._waiting: deque[Sequence] = deque()
        # A dict as an insertion-ordered set, so a cancelled sequence leaves the batch in O(1).
        self._running: dict[Sequence, None] = {}
        self._task: asyncio.Task[None] | None = None
        self._error_rng = random.Random(stable_seed(seed, profile.name, "errors"))

    @property
    def batch_size(self) -> int:
        return len(self._running)

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    def should_fail(self) -> bool:
        """Draw from the engine's seeded error stream (deterministic in request order)."""
        rate = self.profile.error_rate
        return rate > 0 and self._error_rng.random() < rate

    def submit(self, sequence: Sequence) -> None:
        if sequence.finished:
            return
        self._waiting.append(sequence)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"engine-{self.profile.name}"
            )

    def cancel(self, sequence: Sequence) -> None:
        """Drop a sequence whose client went away; it leaves the batch before the next step."""
        sequence.cancelled = True
        sequence.finished = True
        self._running.pop(sequence, None)
        # A cancelled sequence still in the waiting queue is skipped at admission.

    def _admit(self) -> int:
        admitted_input_tokens = 0
        max_batch = self.profile.max_batch
        while self._waiting and len(self._running) < max_batch:
            sequence = self._waiting.popleft()
            if sequence.cancelled:
                continue
            self._running[sequence] = None
            admitted_input_tokens += sequence.input_tokens
        return admitted_input_tokens

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            admitted_input_tokens = self._admit()
            if not self._running:
                if not self._waiting:
                    return
                continue
            step = self.profile.step_seconds(len(self._running), admitted_input_tokens)
            deadline += step
            now = loop.time()
            if deadline < now - step:
                # Far behind (an overloaded loop): restart the clock instead of bursting to catch up.
                deadline = now
            await asyncio.sleep(max(deadline - now, 0.0))
            self._emit_one_token_each()

    def _emit_one_token_each(self) -> None:
        running = self._running
        for sequence in list(running):
            sequence.produced += 1
            if sequence.produced >= sequence.total:
                sequence.finished = True
                del running[sequence]
            waiter = sequence.waiter
            if waiter is not None:
                sequence.waiter = None
                if not waiter.done():
                    waiter.set_result(None)


def stable_seed(*parts: object) -> int:
    """A seed that is the same in every process (``hash()`` is salted per process)."""
    return zlib.crc32("\x1f".join(str(part) for part in parts).encode("utf-8"))
