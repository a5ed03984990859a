"""The simulator's own event-loop lag (``--lag-probe``): how long a callback scheduled from another thread
waits before the loop runs it, sampled every 5 ms, i.e. how long a request's bytes or a due token step wait
for the loop at that moment. ``GET /sim/lag?since=T`` gives the figures of the samples taken since ``T``
(wall-clock seconds). Off by default: the probe's thread costs a little CPU and the GIL now and then."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

import numpy as np

PING_S = 0.005
MAX_SAMPLES = 200_000  # about 17 minutes of samples


class LoopLag:
    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)  # (wall time, lag ms)
        self._stop = threading.Event()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        threading.Thread(target=self._ping, args=(loop,), name="loop-lag", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _ping(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._stop.wait(PING_S):
            ran = threading.Event()
            sent = time.perf_counter()

            def arrived(sent: float = sent, ran: threading.Event = ran) -> None:
                self.samples.append((time.time(), (time.perf_counter() - sent) * 1000.0))
                ran.set()

            try:
                loop.call_soon_threadsafe(arrived)
            except RuntimeError:  # the loop is closed: the server is stopping
                return
            ran.wait(10)

    def figures(self, since: float | None = None) -> dict[str, float | int | None]:
        lags = np.array([lag for at, lag in list(self.samples) if since is None or at >= since])
        if not len(lags):
            return {"samples": 0, "avg_ms": None, "p50_ms": None, "p99_ms": None, "max_ms": None}
        return {"samples": len(lags), "avg_ms": float(lags.mean()),
                "p50_ms": float(np.percentile(lags, 50)), "p99_ms": float(np.percentile(lags, 99)),
                "max_ms": float(lags.max())}
