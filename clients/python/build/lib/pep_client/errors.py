"""What the client raises: the platform's error (``{"error": {"code", "message", "details"}}``) as an
exception carrying its code, message and the request field it names, or a connection that failed."""

from __future__ import annotations

from typing import Any

import httpx


class PepError(Exception):
    """Anything the client raises."""


class PepConnectionError(PepError):
    """The platform could not be reached, or the connection broke before an answer came."""


class ApiError(PepError):
    """The platform refused or failed a request (an HTTP status of 400 or more)."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})

    @property
    def field(self) -> str | None:
        """The request field the platform names as the cause, when it names one."""
        value = self.details.get("field")
        return value if isinstance(value, str) else None

    def __str__(self) -> str:
        return f"{self.message} ({self.code}, HTTP {self.status})"


class BadRequest(ApiError):
    """400 or 422: the request is not valid; ``field`` names the offending field."""


class Unauthorized(ApiError):
    """401: no token, or a token the platform does not know."""


class Forbidden(ApiError):
    """403: the token's role may not do this (a viewer token starting a job, say)."""


class NotFound(ApiError):
    """404: no such job, model, dataset or route."""


class Conflict(ApiError):
    """409: the request is valid but the state forbids it (no worker to take a job, say)."""


class PayloadTooLarge(ApiError):
    """413: an upload or body over the platform's limit."""


class TooManyRequests(ApiError):
    """429: throttled; ``retry_after`` says for how long, in seconds, when the platform says."""

    @property
    def retry_after(self) -> float | None:
        value = self.details.get("retry_after")
        return float(value) if isinstance(value, int | float) else None


class ServerError(ApiError):
    """500 or more: the platform (or a proxy before it) failed."""


_BY_STATUS: dict[int, type[ApiError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                         409: Conflict, 413: PayloadTooLarge, 422: BadRequest, 429: TooManyRequests}


def error_from(response: httpx.Response) -> ApiError:
    """The exception for an error answer (its body read already), whatever its body holds."""
    status = response.status_code
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    try:
        body = response.json()
        error = body["error"]
        code, message = str(error["code"]), str(error["message"])
        details = error.get("details") if isinstance(error.get("details"), dict) else {}
    except (ValueError, KeyError, TypeError):  # not the platform's shape: a proxy's page, say
        text = " ".join(response.text.split())[:200]
        code, message, details = f"http_{status}", text or response.reason_phrase or f"HTTP {status}", {}
    if status == 429 and "retry_after" not in details and response.headers.get("Retry-After", "").isdigit():
        details = {**details, "retry_after": int(response.headers["Retry-After"])}
    return cls(status, code, message, details)
