"""A strict client-side reader of the platform's SSE streams, for tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests


@dataclass
class Event:
    name: str  # "comment" for ": ..." lines
    data: Any


def iter_events(response: requests.Response) -> Iterator[Event]:
    """Events as they arrive; data is parsed JSON; a comment block yields Event("comment", text)."""
    name, data_lines = "message", []
    for raw in response.iter_lines(chunk_size=1, decode_unicode=False):
        line = raw.decode()
        if line == "":
            if data_lines:
                yield Event(name, json.loads("\n".join(data_lines)))
            name, data_lines = "message", []
        elif line.startswith(":"):
            yield Event("comment", line[1:].strip())
        elif line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data_lines.append(line[len("data: "):])
        else:
            raise AssertionError(f"unexpected SSE line {line!r}")


def post_events(url: str, body: dict[str, Any], timeout: float = 30) -> list[Event]:
    with requests.post(url, json=body, stream=True, timeout=timeout) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        return list(iter_events(response))


def by_name(events: list[Event], name: str) -> list[Any]:
    return [event.data for event in events if event.name == name]
