"""Failed sign-ins, counted per remote address: after ``auth.login_max_failures`` wrong passwords or tokens
within ``auth.login_window_s``, that address's next attempts answer 429 with ``Retry-After`` until the
oldest failure leaves the window. A correct sign-in clears the count.

The count lives in the memory of each web process (one gunicorn worker's count is not another's), which
bounds a guesser at ``max_failures x workers`` tries per window: a brake on guessing a password, not an
account lock-out, and nothing to store or clean. Only attempts that present a credential are counted or
refused; a signed-in session is never throttled.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_ADDRESSES = 10_000  # the least recently failing addresses are forgotten beyond this


class FailureThrottle:
    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None when it may try now."""
        with self._lock:
            times = self._recent(address)
            if times is None or len(times) < self.max_failures:
                return None
            return max(1, math.ceil(times[0] + self.window_s - self._clock()))

    def failed(self, address: str) -> None:
        with self._lock:
            times = self._recent(address)
            if times is None:
                times = self._failures[address] = deque(maxlen=self.max_failures)
            times.append(self._clock())
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        horizon = self._clock() - self.window_s
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times
