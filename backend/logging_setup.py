"""Rotating log files under logs/, with a filter that masks anything shaped like a secret."""

from __future__ import annotations

import logging
import re
from logging.handlers import RotatingFileHandler

from flask import Flask

from backend.config import resolve_path

_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)((?:api[_-]?key|secret|password|token|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),
]


class RedactSecrets(logging.Filter):
    """A last line of defence: code must not log secrets, and this masks what slips through."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for pattern in _SECRET_PATTERNS:
            redacted = pattern.sub(lambda m: (m.group(1) if m.groups() and m.group(1) else "") + "***", redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def init_app(app: Flask) -> None:
    settings = app.config["PEP"]["logging"]
    log_dir = resolve_path(settings["dir"])
    log_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = getattr(logging, str(settings["level"]).upper(), logging.INFO)
    target = str(log_dir / settings["file"])
    for old in [h for h in root.handlers if getattr(h, "_pep_handler", False)]:
        if old.baseFilename != target:  # a new app with another log folder (tests) replaces ours
            root.removeHandler(old)
            old.close()
    if not any(getattr(h, "_pep_handler", False) for h in root.handlers):
        handler = RotatingFileHandler(
            target, maxBytes=int(settings["max_bytes"]), backupCount=int(settings["backup_count"])
        )
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
        )
        handler.addFilter(RedactSecrets())
        handler._pep_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # Libraries that log request bodies or headers at DEBUG stay at WARNING.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
