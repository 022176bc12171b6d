"""Filter expressions as trees: their nodes, the values fields hold, how a tree evaluates an
image's fields (compiled once to closures), compiles a comparison to SQL with bound parameters,
and prints itself back as canonical text. :mod:`lookalike.where` says what they mean."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from ..errors import UsageError

Value = Union[str, float]  # noqa: UP007  (a runtime alias: isinstance checks use it)
Fields = Mapping[str, Sequence[Value]]
Dialect = Literal["sqlite", "postgres"]

MAX_LENGTH = 4096
MAX_DEPTH = 32
MAX_VALUES = 1000  # in one `in` list
MAX_KEY = 200
MAX_TEXT = 2000  # characters of a string field value kept (longer ones are cut)
NAME = re.compile(r"[^\W\d][\w.\-]*")  # a key that needs no backticks
KEYWORDS = {"and", "or", "not", "in", "between", "like", "exists", "true", "false"}
PERIOD_END = "\uffff"  # sorts after every character a date has: "2021-07" + it ends July


# -- the tree -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Compare:
    key: str
    op: str  # = < <= > >=
    value: Value


@dataclass(frozen=True)
class In:
    key: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Between:
    key: str
    low: Value
    high: Value


@dataclass(frozen=True)
class Like:
    key: str
    pattern: str


@dataclass(frozen=True)
class Exists:
    key: str


@dataclass(frozen=True)
class Not:
    part: Node


@dataclass(frozen=True)
class All:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Any_:
    parts: tuple[Node, ...]


Node = Union[Compare, In, Between, Like, Exists, Not, All, Any_]  # noqa: UP007


# -- values ---------------------------------------------------------------------------------

def field_value(value: object) -> Value | None:
    """A metadata value as a field holds it: numbers as floats (booleans 1 and 0), strings
    cut to MAX_TEXT; None for anything else (null, or a non-finite number)."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            return None
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        return value[:MAX_TEXT]
    return None


def flatten(metadata: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Value]]:
    """(key, value) for every value of a JSON object: nested objects as ``a.b``, each element of
    a list of values as one value of its key; nulls and lists of objects are left out."""
    for key, value in metadata.items():
        name = f"{prefix}{key}"
        if len(name) > MAX_KEY:
            continue
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
            continue
        for item in value if isinstance(value, list) else [value]:
            converted = field_value(item)
            if converted is not None:
                yield name, converted


def same_kind(a: Value, b: Value) -> bool:
    return isinstance(a, str) == isinstance(b, str)


def _like_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                              for c in pattern), re.DOTALL)


def parse_max_per(text: str | tuple[str, int] | None) -> tuple[str, int] | None:
    """``KEY=N`` (or a (key, n) pair) as (key, n): at most N results per value of the field
    KEY (in backticks or not, as in an expression); UsageError saying the form otherwise."""
    if text is None:
        return None
    key: object = None
    count: object = None
    if isinstance(text, tuple) and len(text) == 2:
        key, count = text
    elif isinstance(text, str):
        name, _, digits = text.strip().rpartition("=")
        name = name.strip()
        key = name[1:-1] if len(name) > 1 and name[0] == name[-1] == "`" else name
        count = int(digits) if digits.strip().isdigit() else None
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY or isinstance(count, bool) \
            or not isinstance(count, int) or count < 1:
        shown = text if isinstance(text, str) else repr(text)
        raise UsageError(f"max_per takes KEY=N, a field name and a count of at least 1, such "
                         f"as album=2; got {shown}.")
    return key, count


def comparison_sql(node: Compare | In | Between | Like | Exists, dialect: Dialect,
                   table: str) -> tuple[str, list[Any]]:
    """A query of the ids of the images passing one comparison (each once: a value is on an
    image once), and its parameters: the part of :meth:`Where.sql` a store can drive from."""
    mark = "?" if dialect == "sqlite" else "%s"
    text = 'text COLLATE "C"' if dialect == "postgres" else "text"
    condition: str
    values: list[Any]
    if isinstance(node, Compare):
        column = text if isinstance(node.value, str) else "num"
        condition, values = f" AND {column} {node.op} {mark}", [node.value]
    elif isinstance(node, In):
        strings = [v for v in node.values if isinstance(v, str)]
        numbers = [v for v in node.values if not isinstance(v, str)]
        tests = ([f"{text} IN ({', '.join([mark] * len(strings))})"] if strings else []) + (
            [f"num IN ({', '.join([mark] * len(numbers))})"] if numbers else [])
        condition, values = f" AND ({' OR '.join(tests)})", [*strings, *numbers]
    elif isinstance(node, Between):
        column = text if isinstance(node.low, str) else "num"
        condition, values = f" AND {column} BETWEEN {mark} AND {mark}", [node.low, node.high]
    elif isinstance(node, Like):
        if dialect == "sqlite":  # GLOB: * and ? as ours; '[' starts a class, so escape it
            condition, values = f" AND text GLOB {mark}", [node.pattern.replace("[", "[[]")]
        else:
            escaped = re.sub(r"([\\%_])", r"\\\1", node.pattern)
            condition = f" AND {text} LIKE {mark} ESCAPE '\\'"
            values = [escaped.replace("*", "%").replace("?", "_")]
    else:
        condition, values = "", []
    return f"SELECT image_id FROM {table} WHERE key = {mark}{condition}", [node.key, *values]


def keys_of(node: Node) -> Iterator[str]:
    if isinstance(node, (Not,)):
        yield from keys_of(node.part)
    elif isinstance(node, (All, Any_)):
        for part in node.parts:
            yield from keys_of(part)
    else:
        yield node.key


def compiled(node: Node) -> Callable[[Fields], bool]:
    """``node`` as a function of an image's fields (built once: searches call it per hit)."""
    if isinstance(node, (All, Any_)):
        parts = [compiled(p) for p in node.parts]
        if isinstance(node, All):
            return lambda fields: all(part(fields) for part in parts)
        return lambda fields: any(part(fields) for part in parts)
    if isinstance(node, Not):
        part = compiled(node.part)
        return lambda fields: not part(fields)
    key = node.key
    if isinstance(node, Exists):
        return lambda fields: bool(fields.get(key))
    test: Callable[[Value], bool]
    if isinstance(node, Compare):
        target, text = node.value, isinstance(node.value, str)
        compare = _COMPARE[node.op]
        test = lambda v: isinstance(v, str) == text and compare(v, target)  # noqa: E731
    elif isinstance(node, In):
        wanted = set(node.values)  # "1" and 1.0 are different members: kinds never mix
        test = lambda v: v in wanted  # noqa: E731
    elif isinstance(node, Between):
        low, high, text = node.low, node.high, isinstance(node.low, str)
        test = lambda v: isinstance(v, str) == text and low <= v <= high  # type: ignore[operator]  # noqa: E731
    else:
        regex = _like_regex(node.pattern)
        test = lambda v: isinstance(v, str) and regex.fullmatch(v) is not None  # noqa: E731
    return lambda fields: any(test(v) for v in fields.get(key, ()))


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def show_value(value: Value) -> str:
    if isinstance(value, str):
        value = value.removesuffix(PERIOD_END)
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def show_key(key: str) -> str:
    return key if NAME.fullmatch(key) and key.lower() not in KEYWORDS else f"`{key}`"


def show(node: Node, top: bool = False) -> str:
    if isinstance(node, (All, Any_)):
        joiner = " and " if isinstance(node, All) else " or "
        inner = joiner.join(show(p) for p in node.parts)
        return inner if top else f"({inner})"
    if isinstance(node, Not):
        part = node.part
        if isinstance(part, Compare) and part.op == "=":
            return f"{show_key(part.key)} != {show_value(part.value)}"
        if isinstance(part, In):
            return f"{show_key(part.key)} not in [{', '.join(map(show_value, part.values))}]"
        if isinstance(part, Like):
            return f"{show_key(part.key)} not like {show_value(part.pattern)}"
        return f"not {show(part)}"
    key = show_key(node.key)
    if isinstance(node, Compare):
        return f"{key} {node.op} {show_value(node.value)}"
    if isinstance(node, In):
        return f"{key} in [{', '.join(show_value(v) for v in node.values)}]"
    if isinstance(node, Between):
        return f"{key} between {show_value(node.low)} and {show_value(node.high)}"
    if isinstance(node, Like):
        return f"{key} like {show_value(node.pattern)}"
    return f"exists {key}"


