"""The one place the client talks HTTP: the token, timeouts, retries, errors and event streams.

Retries: a connection that could not be opened is tried again whatever the method (nothing was sent);
a read that failed, or a 502/503/504 answer, is tried again only for ``GET`` (safe to repeat), honouring
``Retry-After`` up to ``MAX_WAIT_S``. A ``POST`` that may have reached the platform is never sent twice:
a stress test or an evaluation would start twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from pep_client.errors import PepConnectionError, error_from

DEFAULT_BASE_URL = "http://127.0.0.1:5000"
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
RETRY_STATUSES = frozenset({502, 503, 504})
MAX_WAIT_S = 10.0


def user_agent() -> str:
    from pep_client import __version__

    return f"pep-client/{__version__} httpx/{httpx.__version__}"


class Http:
    def __init__(self, base_url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 retries: int = 2, transport: httpx.BaseTransport | None = None) -> None:
        base = (base_url or os.environ.get("PEP_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must start with http:// or https://, not {base!r}")
        token = token if token is not None else os.environ.get("PEP_API_TOKEN") or None
        headers = {"User-Agent": user_agent(), "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base
        self.retries = max(0, int(retries))
        self.timeout = timeout
        self._client = httpx.Client(
            base_url=base + "/api/v1", headers=headers, timeout=httpx.Timeout(timeout),
            transport=transport or httpx.HTTPTransport(retries=self.retries), follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
                files: Any = None, data: Any = None) -> httpx.Response:
        """The answer to one request; an ``ApiError`` for a status of 400 or more."""
        attempts = 1 + self.retries if method in SAFE else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._client.request(method, path, params=_query(params), json=json, files=files,
                                                data=data)
            except httpx.TransportError as error:
                if attempt < attempts:
                    time.sleep(_backoff(attempt))
                    continue
                raise PepConnectionError(_transport_message(self.base_url, error)) from error
            if response.status_code in RETRY_STATUSES and attempt < attempts:
                time.sleep(_retry_after(response) or _backoff(attempt))
                continue
            if response.is_error:
                raise error_from(response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    @contextmanager
    def events(self, method: str, path: str, *, json: Any = None,
               params: Mapping[str, Any] | None = None) -> Iterator[Iterator[ServerSentEvent]]:
        """An event stream: ``with http.events(...) as events: for event in events``. Leaving the block
        closes the connection, which the platform notices (a multi-model run stops its upstream calls).
        The read timeout is the client's: the platform sends a heartbeat well within it."""
        try:
            with self._client.stream(method, path, json=json, params=_query(params),
                                     headers={"Accept": "text/event-stream"}) as response:
                if response.is_error:
                    response.read()
                    raise error_from(response)
                yield EventSource(response).iter_sse()
        except httpx.TransportError as error:
            raise PepConnectionError(_transport_message(self.base_url, error)) from error


def _query(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Query arguments without the ones left out (None); booleans as the platform reads them (1 or 0)."""
    if not params:
        return None
    return {key: (int(value) if isinstance(value, bool) else value) for key, value in params.items()
            if value is not None}


def _backoff(attempt: int) -> float:
    return min(MAX_WAIT_S, 0.25 * 2 ** (attempt - 1))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return min(MAX_WAIT_S, float(value)) if value.isdigit() else None


def _transport_message(base_url: str, error: httpx.TransportError) -> str:
    reason = str(error) or type(error).__name__
    if isinstance(error, httpx.TimeoutException):
        return f"{base_url} did not answer in time ({type(error).__name__})"
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect to {base_url}: {reason}"
    return f"the connection to {base_url} failed: {reason}"
