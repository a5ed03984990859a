"""The query arguments a view reads, found in its source and in the helpers it hands the query to.

One mechanism for every route: the view's source is read (``ast``), and so is the source of every
``backend`` function it calls with the query mapping (``request.args``), with a value read from it, or
that reads ``request.args`` itself (its module imports ``request``), up to ``MAX_DEPTH`` calls deep. So
``slo_from_args(request.args, ...)`` in ``backend/results``, the leaderboard's ``filters_from(args)`` and
a view's own ``sample_filter()`` are documented from the code that reads the arguments, with nothing
listed beside it.

What counts as reading argument ``name`` (``args`` being the query mapping wherever it was passed):

- ``int_arg(name, default, low, high)`` -> an integer with its default and bounds; ``float_arg(name)`` and
  ``number(name, raw)`` on a read argument -> a number (``backend/validation.py``);
- ``args.get(name)``, ``args[name]``, ``name in args`` -> text; ``args.getlist(name)`` -> repeated text;
  ``name`` may be a loop variable over a module constant (``for name in BOUNDS``: each key is an argument);
- a read value tested against a constant collection (``if kind not in EXPORTS: raise``) -> an enum of that
  constant's members (a dict's keys), the same constant the view validates with. Literal arguments given
  to a helper are followed, so ``check_format(kind, html=True)`` yields the formats with ``html``.

Expressions are evaluated only as far as constants, module attributes and these markers go; anything else is
unknown and ignored. ``tests/test_openapi.py`` checks the outcome against what the views read at run time.
"""

from __future__ import annotations

import ast
import enum
import functools
import inspect
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flask
from werkzeug.local import LocalProxy

from backend import validation

MAX_DEPTH = 4  # the view, a service function, its parser, and the parser's helper (slo_from_args)


class _Unknown:
    def __repr__(self) -> str:
        return "?"


UNKNOWN = _Unknown()


class _Query:
    def __repr__(self) -> str:
        return "request.args"


QUERY = _Query()  # the request's query mapping
REQUEST = object()  # flask.request (a proxy, never touched: the scan runs outside requests too)


@dataclass(frozen=True)
class Read:
    """A value read from the query arguments ``names`` (``args.get("format", "").strip()``)."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class Keys:
    """A loop variable running over constant names (``for name in BOUNDS``)."""

    names: tuple[str, ...]


_CONSTANT_TYPES = (str, int, float, bool, type(None), tuple, frozenset, list, dict, set)
_TEXT_METHODS = {"strip", "lstrip", "rstrip", "lower", "upper", "casefold"}


def scan(view: Callable[..., Any]) -> dict[str, dict[str, Any]]:
    """``{argument name: JSON schema}`` of every query argument the view reads."""
    scanner = _Scanner()
    scanner.function(view, {}, 0)
    return scanner.found


@functools.cache
def _parse(function: Callable[..., Any]) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return None
    node = tree.body[0] if tree.body else None
    return node if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else None


def _names(value: Any) -> tuple[str, ...]:
    """The argument names a key expression stands for."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Keys):
        return value.names
    return ()


def _informative(value: Any) -> bool:
    return value is QUERY or isinstance(value, Read | Keys)


def _constant(value: Any) -> bool:
    if isinstance(value, tuple | list | frozenset | set):
        return all(_constant(item) for item in value)
    if isinstance(value, dict):
        return all(_constant(k) and _constant(v) for k, v in value.items())
    return isinstance(value, _CONSTANT_TYPES)


class _Scanner:
    def __init__(self) -> None:
        self.found: dict[str, dict[str, Any]] = {}
        self._seen: set[tuple[Any, str]] = set()

    # --- what is recorded ------------------------------------------------------------------------

    def read(self, names: tuple[str, ...], schema: dict[str, Any] | None = None) -> None:
        for name in names:
            current = self.found.setdefault(name, {"type": "string"})
            if schema is not None and current.get("type") == "string" and "enum" not in current:
                self.found[name] = dict(schema)

    def refine(self, names: tuple[str, ...], schema: dict[str, Any]) -> None:
        """A read argument turns out to be a number, or one of a constant's members."""
        for name in names:
            current = self.found.setdefault(name, {"type": "string"})
            if current.get("type") == "string":
                current.update(schema)

    # --- functions and statements ----------------------------------------------------------------

    def function(self, function: Callable[..., Any], bindings: dict[str, Any], depth: int) -> None:
        function = inspect.unwrap(function)
        key = (function, repr(sorted(bindings.items(), key=lambda item: item[0])))
        if depth > MAX_DEPTH or key in self._seen:
            return
        self._seen.add(key)
        node = _parse(function)
        if node is None:
            return
        context = _Context(self, dict(bindings), getattr(function, "__globals__", {}), depth)
        for statement in node.body:
            context.statement(statement)


class _Context:
    """One function's evaluation: its local names and the module it lives in."""

    def __init__(self, scanner: _Scanner, env: dict[str, Any], module_globals: dict[str, Any], depth: int) -> None:
        self.scanner, self.env, self.globals, self.depth = scanner, env, module_globals, depth

    # statements

    def statement(self, node: ast.AST) -> None:
        if isinstance(node, ast.Assign):
            value = self.value(node.value)
            for target in node.targets:
                self.bind(target, value)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            self.bind(node.target, self.value(node.value))
        elif isinstance(node, ast.For | ast.AsyncFor):
            self.bind_each(node.target, self.value(node.iter))
            for child in (*node.body, *node.orelse):
                self.statement(child)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.value(child)
                else:
                    self.statement(child)

    def bind(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.env[target.id] = value
        elif isinstance(target, ast.Tuple | ast.List):
            items = value if isinstance(value, tuple | list) and len(value) == len(target.elts) else None
            for index, element in enumerate(target.elts):
                self.bind(element, items[index] if items is not None else UNKNOWN)
        else:
            self.value(target)

    def bind_each(self, target: ast.expr, iterable: Any) -> None:
        """A loop target over a constant collection: each of its names is a ``Keys``."""
        values = list(iterable) if isinstance(iterable, tuple | list | set | frozenset | dict) else None
        self._bind_values(target, values)

    def _bind_values(self, target: ast.expr, values: list[Any] | None) -> None:
        if isinstance(target, ast.Name):
            known = values is not None and values and all(isinstance(v, str) for v in values)
            self.env[target.id] = Keys(tuple(values)) if known else UNKNOWN  # type: ignore[arg-type]
        elif isinstance(target, ast.Tuple | ast.List):
            for index, element in enumerate(target.elts):
                column = None
                if values is not None and all(isinstance(v, tuple | list) and len(v) > index for v in values):
                    column = [v[index] for v in values]
                self._bind_values(element, column)

    # expressions

    def value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.env:
                return self.env[node.id]
            found = self.globals.get(node.id, UNKNOWN)
            if found is flask.request:
                return REQUEST
            return UNKNOWN if type(found) is LocalProxy else found  # current_app, g, session: nothing to read
        if isinstance(node, ast.Attribute):
            return self.attribute(node)
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return self.collection(node)
        if isinstance(node, ast.IfExp):
            test, body, orelse = self.value(node.test), self.value(node.body), self.value(node.orelse)
            if isinstance(test, bool | type(None) | int | str):
                return body if test else orelse
            return body if _constant(body) and body == orelse else UNKNOWN
        if isinstance(node, ast.BoolOp):
            values = [self.value(v) for v in node.values]
            return values[0] if isinstance(node.op, ast.Or) and isinstance(values[0], Read) else UNKNOWN
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Subscript):
            base, index = self.value(node.value), self.value(node.slice)
            if base is QUERY:
                names = _names(index)
                self.scanner.read(names)
                return Read(names) if names else UNKNOWN
            return UNKNOWN
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
            return self.comprehension(node)
        if isinstance(node, ast.Lambda):
            self.value(node.body)
            return UNKNOWN
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.value(child)
        return UNKNOWN

    def attribute(self, node: ast.Attribute) -> Any:
        base = self.value(node.value)
        if base is REQUEST:
            return QUERY if node.attr == "args" else UNKNOWN
        member = isinstance(base, enum.Enum) and node.attr in ("value", "name")
        if member or isinstance(base, types.ModuleType | type):
            return getattr(base, node.attr, UNKNOWN)
        return UNKNOWN

    def collection(self, node: ast.Tuple | ast.List | ast.Set) -> Any:
        items: list[Any] = []
        known = True
        for element in node.elts:
            if isinstance(element, ast.Starred):
                inner = self.value(element.value)
                if isinstance(inner, tuple | list):
                    items.extend(inner)
                else:
                    known = False
            else:
                item = self.value(element)
                known = known and _constant(item)
                items.append(item)
        if not known:
            return UNKNOWN
        return set(items) if isinstance(node, ast.Set) else tuple(items)

    def compare(self, node: ast.Compare) -> Any:
        left = self.value(node.left)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.value(comparator)
            if isinstance(op, ast.In | ast.NotIn):
                if right is QUERY:
                    self.scanner.read(_names(left))
                elif isinstance(left, Read) and isinstance(right, tuple | list | set | frozenset | dict) \
                        and right and all(isinstance(item, str) for item in right):
                    members = list(right) if not isinstance(right, set | frozenset) else sorted(right)
                    self.scanner.refine(left.names, {"enum": members})
            left = right
        return UNKNOWN

    def comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> Any:
        outer = dict(self.env)
        for generator in node.generators:
            self.bind_each(generator.target, self.value(generator.iter))
            for condition in generator.ifs:
                self.value(condition)
        if isinstance(node, ast.DictComp):
            self.value(node.key)
            self.value(node.value)
        else:
            self.value(node.elt)
        self.env = outer
        return self.concrete(node)

    def concrete(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> Any:
        """``[s.value for s in FINISHED]``: a comprehension over one constant collection, computed."""
        if isinstance(node, ast.DictComp) or len(node.generators) != 1 or node.generators[0].ifs:
            return UNKNOWN
        generator = node.generators[0]
        items = self.value(generator.iter)
        if not isinstance(items, tuple | list | set | frozenset) or len(items) > 1000:
            return UNKNOWN
        if isinstance(items, set | frozenset):  # the document must not depend on hash order
            items = sorted(items, key=repr)
        outer, values = dict(self.env), []
        for item in items:
            self.bind(generator.target, item)
            values.append(self.value(node.elt))
        self.env = outer
        if not all(_constant(v) for v in values):
            return UNKNOWN
        return set(values) if isinstance(node, ast.SetComp) else tuple(values)

    def call(self, node: ast.Call) -> Any:
        function = node.func
        receiver = self.value(function.value) if isinstance(function, ast.Attribute) else UNKNOWN
        args = [UNKNOWN if isinstance(a, ast.Starred) else self.value(a) for a in node.args]
        kwargs = {k.arg: self.value(k.value) for k in node.keywords if k.arg is not None}
        if isinstance(function, ast.Attribute):
            if receiver is QUERY:
                return self.query_method(function.attr, args)
            if isinstance(receiver, Read):
                return receiver if function.attr in _TEXT_METHODS else UNKNOWN
            if isinstance(receiver, dict) and function.attr in ("keys", "values", "items") and not args:
                return list(getattr(receiver, function.attr)())
            callee = self.attribute(function) if isinstance(receiver, types.ModuleType | type) else UNKNOWN
        else:
            callee = self.value(function)
        return self.follow(callee, args, kwargs)

    def query_method(self, method: str, args: list[Any]) -> Any:
        names = _names(args[0]) if args else ()
        if method == "get" and names:
            self.scanner.read(names)
            return Read(names)
        if method == "getlist" and names:
            self.scanner.read(names, {"type": "array", "items": {"type": "string"}})
            return Read(names)
        return UNKNOWN

    def follow(self, callee: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if callee is validation.int_arg:
            names = _names(args[0]) if args else ()
            schema: dict[str, Any] = {"type": "integer"}
            for key, value in zip(("default", "minimum", "maximum"), args[1:4], strict=False):
                if isinstance(value, int) and not isinstance(value, bool):
                    schema[key] = value
            if "default" in schema and not schema.get("minimum", schema["default"]) <= schema["default"] \
                    <= schema.get("maximum", schema["default"]):
                del schema["default"]  # an "absent" marker outside the range (cell=-1), not a value to send
            self.scanner.read(names, schema)
            return Read(names) if names else UNKNOWN
        if callee is validation.float_arg:
            names = _names(args[0]) if args else ()
            self.scanner.read(names, {"type": "number"})
            return Read(names) if names else UNKNOWN
        if callee is validation.number:
            names = tuple(n for n in (_names(args[0]) if args else ()) if n in self.scanner.found)
            self.scanner.refine(names, {"type": "number"})
            return UNKNOWN
        if not inspect.isfunction(callee) or not callee.__module__.startswith("backend.") \
                or callee.__module__.startswith("backend.openapi"):
            return UNKNOWN
        try:
            bound = inspect.signature(callee).bind_partial(*args, **kwargs)
        except (TypeError, ValueError):
            return UNKNOWN
        bound.apply_defaults()
        bindings = {name: value for name, value in bound.arguments.items()
                    if _informative(value) or (_constant(value) and isinstance(value, str | int | float | bool))}
        reads_request = getattr(callee, "__globals__", {}).get("request") is flask.request
        if any(_informative(value) for value in bindings.values()) or reads_request:
            self.scanner.function(callee, bindings, self.depth + 1)
        return UNKNOWN
