"""Python client of the Performance Evaluation Platform's API, and the ``pep`` command (``pep_client.cli``)."""

__version__ = "0.1.0"

from pep_client.client import Client, EventStream
from pep_client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PepConnectionError,
    PepError,
    ServerError,
    TooManyRequests,
    Unauthorized,
)

__all__ = ["ApiError", "BadRequest", "Client", "Conflict", "EventStream", "Forbidden", "NotFound",
           "PayloadTooLarge", "PepConnectionError", "PepError", "ServerError", "TooManyRequests", "Unauthorized",
           "__version__"]
