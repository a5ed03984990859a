"""Where a job may run: each worker declares its host, its labels (for example the network it reaches
endpoints from) and how many jobs of each kind it takes at once; a job may require labels, and only a
worker that has every one of them claims it.

``worker.host`` names the host a worker's processes run on (default: the machine's host name); recovery
re-attaches only processes of its own host, because a pid means nothing on another one.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable
from typing import Any

LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,63}")
MAX_LABELS = 16


def check_labels(value: Any, where: str) -> list[str]:
    """A list of labels (or one comma-separated string), each a short name; sorted, without repeats."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(label, str) for label in value):
        raise ValueError(f"{where} must be a list of labels (or one comma-separated string)")
    for label in value:
        if not LABEL.fullmatch(label):
            raise ValueError(f"{where}: {label[:80]!r} is not a label (letters, digits, '.', '_', '=' or '-', "
                             "at most 64, starting with a letter or digit)")
    if len(set(value)) > MAX_LABELS:
        raise ValueError(f"{where}: at most {MAX_LABELS} labels")
    return sorted(set(value))


def can_take(worker_labels: Iterable[str], required: Iterable[str] | None) -> bool:
    return set(required or ()).issubset(worker_labels)


def check_worker_config(config: dict[str, Any], kinds: dict[str, str]) -> dict[str, Any]:
    """The ``worker`` section, checked: ``host``, ``labels``, ``capacity`` (kind name -> jobs at once;
    a kind left out takes its section's ``max_concurrent``). ``kinds`` maps each kind's name to its section."""
    worker = dict(config.get("worker") or {})
    host = worker.get("host") or socket.gethostname()
    if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,254}", host):
        raise ValueError(f"worker.host must be a host name, not {host!r}")
    labels = check_labels(worker.get("labels"), "worker.labels")
    capacity = worker.get("capacity") or {}
    if not isinstance(capacity, dict):
        raise ValueError("worker.capacity must map job kinds to a number of jobs, like {stress: 2, evaluation: 1}")
    unknown = sorted(set(capacity) - set(kinds))
    if unknown:
        raise ValueError(f"worker.capacity: {unknown[0]!r} is no job kind (one of {', '.join(sorted(kinds))})")
    resolved = {}
    for name, section in kinds.items():
        count = capacity.get(name, (config.get(section) or {}).get("max_concurrent"))
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"worker.capacity.{name} must be a whole number of jobs (0: takes none), not {count!r}")
        resolved[name] = count
    return {"host": host, "labels": labels, "capacity": resolved}
