"""Request bodies, validated the same way by every API and form: 400s that name the field in plain words.

- ``json_body()`` reads a JSON request body. What JSON allows but we cannot take is refused before any
  model sees it: nesting deeper than ``MAX_DEPTH`` (Python's parser would raise RecursionError near 1,000
  levels), and text holding a lone UTF-16 surrogate such as ``"\\ud800"``, which a ``\\u`` escape can
  express but UTF-8 cannot, so the database, the log and the SSE stream would all fail on it later.
- ``parse_body(raw, Model)`` checks the same of a dict built from a form, then validates it with pydantic.
  Request models use ``STRICT``: ``"10"`` is not 10, ``true`` is not 1, NaN and infinities are not numbers.
- Messages are sentences about the field ("max_tokens: must be a whole number"), not pydantic's
  ("Input should be a valid integer"); every error is listed in ``details.errors``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask import request
from pydantic import BaseModel, ConfigDict, ValidationError

from backend.errors import ApiError

MAX_DEPTH = 32
MAX_OFFSET = 10**9  # list routes' offset bound (SQLite integers end near 9.2e18)

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def json_body() -> Any:
    """The request's JSON body, checked by ``check_tree``; a 400 naming ``body`` when there is none."""
    if not request.is_json:
        raise ApiError("body: must be JSON (send Content-Type: application/json)", field="body")
    try:
        value = json.loads(request.get_data(cache=True))
    except RecursionError:
        raise ApiError(f"body: nested too deeply (more than {MAX_DEPTH} levels)", field="body") from None
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise ApiError(f"body: not valid JSON ({exc})", field="body") from None
    check_tree(value)
    return value


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """A whole-number query argument within [low, high]; a 400 naming it otherwise."""
    raw = request.args.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(f"{name}: must be a whole number", field=name) from None
    if not low <= value <= high:
        raise ApiError(f"{name}: must be between {low} and {high}", field=name)
    return value


def number(name: str, raw: str) -> float:
    """A finite number from request text; a 400 naming ``name`` otherwise."""
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(f"{name}: must be a number", field=name) from None
    if not math.isfinite(value):
        raise ApiError(f"{name}: must be a finite number", field=name)
    return value


def float_arg(name: str) -> float | None:
    """A number query argument, or None when it is absent or empty; a 400 naming it otherwise."""
    raw = request.args.get(name)
    if raw is None or raw.strip() == "":
        return None
    return number(name, raw)


def check_tree(value: Any) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH`` and text that is not valid Unicode, naming where."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            check_text(item, path or "body")
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise ApiError(f"{path or 'body'}: nested too deeply (more than {MAX_DEPTH} levels)",
                               field=path or "body")
            if isinstance(item, list):
                stack.extend((child, f"{path}[{index}]", depth + 1) for index, child in enumerate(item))
            else:
                for key, child in item.items():
                    child_path = f"{path}.{key}" if path else str(key)
                    check_text(key, f"{path or 'body'} (a key)")
                    stack.append((child, child_path, depth + 1))


def check_text(text: str, field: str) -> None:
    """Refuse text that cannot be stored: a NUL character (PostgreSQL's text refuses it, and no prompt needs
    one) or what UTF-8 cannot encode (a lone surrogate), saying where in it."""
    if (nul := text.find("\x00")) >= 0:
        raise ApiError(f"{field}: contains a NUL character (\\u0000) at character {nul + 1}, which cannot be "
                       "stored", field=field)
    if text.isascii():  # O(1) for CPython strings, and what almost every value is
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(f"{field}: not valid Unicode text (a lone surrogate, \\u{ord(text[exc.start]):04x}, "
                       f"at character {exc.start + 1})", field=field) from None


def field_name(loc: tuple[Any, ...]) -> str:
    """pydantic's location as the request spells it: ``manual_config.base_url``, ``images[2]``."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plain_message(error: dict[str, Any]) -> str:
    """One pydantic error as a sentence about the field."""
    kind, ctx = error["type"], error.get("ctx") or {}
    simple = {
        "missing": "is required",
        "extra_forbidden": "is not a field of this request",
        "int_type": "must be a whole number", "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number", "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false", "bool_parsing": "must be true or false",
        "string_type": "must be text", "list_type": "must be a list",
        "dict_type": "must be an object", "model_type": "must be an object",
        "model_attributes_type": "must be an object",
        "string_pattern_mismatch": "is not in the expected form",
    }
    if kind in simple:
        return simple[kind]
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
                 "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}[kind]
        return f"must be {bound[0]} {_number(ctx.get(bound[1]))}"
    if kind == "string_too_short":
        size = ctx.get("min_length", 1)
        return "must not be empty" if size == 1 else f"must be at least {size} characters long"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long"
    if kind in ("too_short", "too_long"):
        size = ctx.get("min_length" if kind == "too_short" else "max_length")
        return f"must have {'at least' if kind == 'too_short' else 'at most'} {size} item{'s' * (size != 1)}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    return str(error["msg"]).removeprefix("Value error, ")


def parse_body(raw: Any, model: type[BaseModel]) -> Any:
    """A validated body, or a 400 ApiError naming the first offending field (and listing them all)."""
    if not isinstance(raw, dict):
        raise ApiError("body: must be a JSON object", field="body")
    check_tree(raw)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = [{"field": field_name(tuple(e["loc"])) or "body", "message": plain_message(e)}
                  for e in exc.errors()]
        first = errors[0]
        raise ApiError(f"{first['field']}: {first['message']}", field=first["field"],
                       details={"errors": errors}) from None


def refuse_unstorable_url() -> None:
    """Before every request: a path or query argument with a NUL character (``/api/v1/stress-tests/a%00b``)
    is refused with 400 here, once, instead of reaching a query that PostgreSQL would refuse with a 500."""
    if "\x00" in request.path:
        raise ApiError("path: contains a NUL character (%00), which no name or id here has", field="path")
    for name, value in request.args.items(multi=True):
        check_text(name, "query (a name)")
        check_text(value, name)
