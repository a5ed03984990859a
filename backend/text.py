"""Text we store and show: made storable when it came from outside, cut for previews."""

from __future__ import annotations

from typing import Any


def scrub(text: str) -> str:
    """Text made storable: each lone surrogate and each NUL character becomes U+FFFD (for what we receive
    but cannot refuse, such as a model's answer; requests with one are refused,
    ``backend.validation.check_text``). PostgreSQL's text and JSONB refuse NUL; SQLite would keep it."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if text.isascii():
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def cut_texts(data: dict[str, Any], names: tuple[str, ...], limit: int) -> None:
    """Cut each named text of ``data`` longer than ``limit``, and say how long it was (``<name>_chars``)."""
    for name in names:
        value = data.get(name)
        if isinstance(value, str) and len(value) > limit:
            data[name] = value[:limit]
            data[f"{name}_chars"] = len(value)
