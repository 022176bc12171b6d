"""Filter expressions: the small language of ``--where``, ``where=`` and HTTP ``where``.

An image's *fields* are its metadata keys (nested objects flattened to ``a.b``) and the fields
read from the file (``folder``, ``name``, ``format``, ``width``, ``taken``, ``make``...). A
field holds one or more values, each a string or a number (booleans are the numbers 1 and 0).
An expression is parsed once into a tree, which both evaluates itself against an image's fields
(:meth:`Where.matches`) and compiles to an SQL condition whose keys and values are all bound
parameters (:meth:`Where.sql`): no text of the expression ever reaches SQL. The two agree by
construction and by a property test over random expressions.

Grammar (keywords in any case)::

    expr    := term ("or" term)*
    term    := factor ("and" factor)*
    factor  := "not" factor | "(" expr ")" | "exists" KEY | KEY test
    test    := ("=" | "==" | "!=" | "<" | "<=" | ">" | ">=") VALUE
             | ["not"] "in" "[" VALUE ("," VALUE)* "]"
             | ["not"] "between" VALUE "and" VALUE
             | ["not"] "like" VALUE
    KEY     := a name of letters, digits, "_", "." and "-", or any text in `backticks`
    VALUE   := a JSON number, "text" or 'text' (backslash escapes), true, false, or a bare
               word (text: ``007`` and ``2021-06`` too)

A comparison holds when any value of the field passes it; a string compares only with strings
(in code-point order), a number only with numbers. ``!=``, ``not in``, ``not like`` and ``not
between`` hold when none does, so for a missing field too. ``like`` matches a whole string:
``*`` is any run of characters and ``?`` one character. A date or time written to some
precision (``2021``, ``2021-06``, ``2021-06-05T10``...) stands for its whole period (see
:func:`_whole_period`): the parser rewrites the comparison, so both evaluations agree.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from .errors import UsageError

Value = Union[str, float]  # noqa: UP007  (a runtime alias: isinstance checks use it)
Fields = Mapping[str, Sequence[Value]]
Dialect = Literal["sqlite", "postgres"]

MAX_LENGTH = 4096
MAX_DEPTH = 32
MAX_VALUES = 1000  # in one `in` list
MAX_KEY = 200
MAX_TEXT = 2000  # characters of a string field value kept (longer ones are cut)

_KEYWORDS = {"and", "or", "not", "in", "between", "like", "exists", "true", "false"}
_OPERATORS = ("==", "!=", "<=", ">=", "=", "<", ">")
# A bare value is a number when JSON would write it so (3, -2.5, 1e3): "007" and "+1" stay
# text, as in a CSV cell or a `tag` value.
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_NAME = re.compile(r"[^\W\d][\w.\-]*")
_BARE = re.compile(r"[\w.\-:/+@]+")
# A date or time written to some precision (2021, 2021-07, 2021-07-15, 2021-07-15T14...):
# it stands for the whole year, month, day... it names (see Parser.test).
_DATE_PREFIX = re.compile(r"\d{4}(?:-\d{2}(?:-\d{2}(?:[T ]\d{2}(?::\d{2}(?::\d{2})?)?)?)?)?")
_PERIOD_END = "\uffff"  # sorts after every character a date has: "2021-07" + it ends July
_TOKEN = re.compile(r"""\s*(?:(?P<quoted>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<backtick>`[^`]*`)
                        |(?P<op>==|!=|<=|>=|=|<|>)|(?P<punct>[()\[\],])|(?P<word>[^\s()\[\],=!<>"'`]+))""",
                    re.VERBOSE)


class WhereError(UsageError):
    """A filter expression that cannot be parsed."""

    def __init__(self, text: str, position: int, problem: str) -> None:
        text = re.sub(r"\s", " ", text)  # one line, so the caret stays under its character
        shown = text if len(text) <= 120 else text[:117] + "..."
        caret = " " * min(position, len(shown)) + "^"
        super().__init__(
            f"Bad filter expression: {problem} (at character {position + 1}).\n"
            f"  {shown}\n  {caret}\n"
            "Write comparisons like `format = jpeg and width >= 1000`, `album in [a, b]`, "
            "`taken between 2021-01-01 and 2021-12-31`, `exists make`; quote values with "
            "spaces: `camera = \"EOS R5\"`.")
        self.position = position


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


def _same_kind(a: Value, b: Value) -> bool:
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


# -- the expression -------------------------------------------------------------------------

class Where:
    """A parsed filter expression. Equal expressions have equal :attr:`text`."""

    def __init__(self, root: Node) -> None:
        self.root = root
        self.text = _show(root, top=True)
        self._test = _compiled(root)

    @classmethod
    def parse(cls, text: str) -> Where:
        """Parse ``text``; raises :class:`WhereError` saying where and what is wrong."""
        if not isinstance(text, str):
            raise UsageError(f"A filter expression is text, got {type(text).__name__}.")
        if len(text) > MAX_LENGTH:
            raise WhereError(text[:120], 0,
                             f"it is {len(text)} characters long, at most {MAX_LENGTH}")
        return cls(_Parser(text).parse())

    @classmethod
    def of(cls, where: str | Where | None) -> Where | None:
        """``where`` parsed if it is text (blank text: no filter)."""
        if where is None or isinstance(where, Where):
            return where
        if not isinstance(where, str):
            raise UsageError(f"A filter is an expression in text, got {type(where).__name__}.")
        return cls.parse(where) if where.strip() else None

    def __repr__(self) -> str:
        return f"Where({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Where) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def keys(self) -> set[str]:
        """The field names the expression reads."""
        return set(_keys(self.root))

    def matches(self, fields: Fields) -> bool:
        """Whether an image with ``fields`` passes."""
        return self._test(fields)

    def sql(self, dialect: Dialect, table: str, id_column: str) -> tuple[str, list[Any]]:
        """An SQL condition true for the rows whose ``id_column`` is an image that passes, and
        its parameters. ``table`` is the fields table (image_id, key, text, num), as it may be
        named in a query (already quoted); every key and value is a bound parameter."""
        params: list[Any] = []

        def compile_(node: Node) -> str:
            if isinstance(node, Not):
                return f"NOT ({compile_(node.part)})"
            if isinstance(node, (All, Any_)):
                joiner = " AND " if isinstance(node, All) else " OR "
                return "(" + joiner.join(compile_(p) for p in node.parts) + ")"
            query, values = comparison_sql(node, dialect, table)
            params.extend(values)
            return f"{id_column} IN ({query})"

        return compile_(self.root), params


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


def _keys(node: Node) -> Iterator[str]:
    if isinstance(node, (Not,)):
        yield from _keys(node.part)
    elif isinstance(node, (All, Any_)):
        for part in node.parts:
            yield from _keys(part)
    else:
        yield node.key


def _compiled(node: Node) -> Callable[[Fields], bool]:
    """``node`` as a function of an image's fields (built once: searches call it per hit)."""
    if isinstance(node, (All, Any_)):
        parts = [_compiled(p) for p in node.parts]
        if isinstance(node, All):
            return lambda fields: all(part(fields) for part in parts)
        return lambda fields: any(part(fields) for part in parts)
    if isinstance(node, Not):
        part = _compiled(node.part)
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


def _show_value(value: Value) -> str:
    if isinstance(value, str):
        value = value.removesuffix(_PERIOD_END)
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _show_key(key: str) -> str:
    return key if _NAME.fullmatch(key) and key.lower() not in _KEYWORDS else f"`{key}`"


def _show(node: Node, top: bool = False) -> str:
    if isinstance(node, (All, Any_)):
        joiner = " and " if isinstance(node, All) else " or "
        inner = joiner.join(_show(p) for p in node.parts)
        return inner if top else f"({inner})"
    if isinstance(node, Not):
        part = node.part
        if isinstance(part, Compare) and part.op == "=":
            return f"{_show_key(part.key)} != {_show_value(part.value)}"
        if isinstance(part, In):
            return f"{_show_key(part.key)} not in [{', '.join(map(_show_value, part.values))}]"
        if isinstance(part, Like):
            return f"{_show_key(part.key)} not like {_show_value(part.pattern)}"
        return f"not {_show(part)}"
    key = _show_key(node.key)
    if isinstance(node, Compare):
        return f"{key} {node.op} {_show_value(node.value)}"
    if isinstance(node, In):
        return f"{key} in [{', '.join(_show_value(v) for v in node.values)}]"
    if isinstance(node, Between):
        return f"{key} between {_show_value(node.low)} and {_show_value(node.high)}"
    if isinstance(node, Like):
        return f"{key} like {_show_value(node.pattern)}"
    return f"exists {key}"


# -- parsing --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Token:
    kind: str  # quoted, backtick, op, punct, word, end
    text: str
    at: int

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.text.lower() in words


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = list(self._lex())
        self.i = 0
        self.depth = 0

    def _lex(self) -> Iterator[_Token]:
        at = 0
        while True:
            while at < len(self.text) and self.text[at].isspace():
                at += 1
            if at == len(self.text):
                yield _Token("end", "", at)
                return
            match = _TOKEN.match(self.text, at)
            if match is None or not match.lastgroup:
                problem = ("a quote is never closed" if self.text[at] in "\"'`"
                           else f"unexpected {self.text[at]!r}")
                raise WhereError(self.text, at, problem)
            start = match.start(match.lastgroup)
            yield _Token(match.lastgroup, match.group(match.lastgroup), start)
            at = match.end()

    def fail(self, problem: str, token: _Token | None = None) -> WhereError:
        token = token or self.tokens[self.i]
        return WhereError(self.text, token.at, problem)

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return token

    def expect(self, kind: str, text: str, what: str) -> None:
        token = self.take()
        if token.kind != kind or token.text != text:
            raise self.fail(f"expected {what}, found {_describe(token)}", token)

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.fail("the expression is empty")
        node = self.expr()
        if self.peek().kind != "end":
            raise self.fail(f"expected `and`, `or` or the end, found {_describe(self.peek())}")
        return node

    def expr(self) -> Node:
        parts = [self.term()]
        while self.peek().is_word("or"):
            self.take()
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else Any_(tuple(parts))

    def term(self) -> Node:
        parts = [self.factor()]
        while self.peek().is_word("and"):
            self.take()
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else All(tuple(parts))

    def factor(self) -> Node:
        token = self.peek()
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"it nests deeper than {MAX_DEPTH} levels")
        try:
            if token.is_word("not"):
                self.take()
                return Not(self.factor())
            if token.kind == "punct" and token.text == "(":
                self.take()
                node = self.expr()
                self.expect("punct", ")", "`)`")
                return node
            if token.is_word("exists"):
                self.take()
                return Exists(self.key())
            return self.test(self.key())
        finally:
            self.depth -= 1

    def key(self) -> str:
        token = self.take()
        if token.kind == "backtick":
            name = token.text[1:-1]
        elif token.kind == "word" and _NAME.fullmatch(token.text) and \
                token.text.lower() not in _KEYWORDS:
            name = token.text
        else:
            raise self.fail(f"expected a field name, found {_describe(token)}", token)
        if not name or len(name) > MAX_KEY:
            raise self.fail(f"a field name is 1 to {MAX_KEY} characters", token)
        return name

    def test(self, key: str) -> Node:
        token = self.take()
        if token.kind == "op":
            value = self.value()
            op = {"==": "=", "!=": "="}.get(token.text, token.text)
            node = _whole_period(Compare(key, op, value))
            return Not(node) if token.text == "!=" else node
        negate = token.is_word("not")
        if negate:
            token = self.take()
        if token.is_word("in"):
            node = In(key, self.values())
        elif token.is_word("like"):
            at = self.peek()
            pattern = self.value()
            if not isinstance(pattern, str):
                raise self.fail("`like` takes a text pattern, such as \"IMG_*\"", at)
            node = Like(key, pattern)
        elif token.is_word("between"):
            at = self.peek()
            low = self.value()
            between = self.take()
            if not between.is_word("and"):
                raise self.fail("expected `and` between the two ends of the range, found "
                                f"{_describe(between)}", between)
            high = self.value()
            if not _same_kind(low, high):
                raise self.fail("both ends of a range are numbers, or both are text", at)
            node = _whole_period(Between(key, low, high))
        else:
            expected = "`in`, `between` or `like`" if negate else \
                "a comparison (= != < <= > >=), `in`, `between` or `like`"
            raise self.fail(f"expected {expected} after `{key}`, found {_describe(token)}",
                            token)
        return Not(node) if negate else node

    def values(self) -> tuple[Value, ...]:
        opening = self.take()
        if opening.kind != "punct" or opening.text not in "[(":
            raise self.fail(f"expected a list such as [a, b], found {_describe(opening)}",
                            opening)
        closing = "]" if opening.text == "[" else ")"
        found = [self.value()]
        while self.peek().kind == "punct" and self.peek().text == ",":
            self.take()
            found.append(self.value())
        self.expect("punct", closing, f"`,` or `{closing}`")
        if len(found) > MAX_VALUES:
            raise self.fail(f"a list holds at most {MAX_VALUES} values")
        return tuple(dict.fromkeys(found))

    def value(self) -> Value:
        token = self.take()
        if token.kind == "quoted":
            body = token.text[1:-1]
            return re.sub(r"\\(.)", r"\1", body, flags=re.DOTALL)[:MAX_TEXT]
        if token.kind == "word":
            lowered = token.text.lower()
            if lowered in ("true", "false"):
                return 1.0 if lowered == "true" else 0.0
            if _NUMBER.fullmatch(token.text):
                number = float(token.text)
                if not math.isfinite(number):
                    raise self.fail("numbers must be finite", token)
                return number
            if lowered in _KEYWORDS or not _BARE.fullmatch(token.text):
                raise self.fail(f"expected a value, found {_describe(token)}; quote text "
                                "that holds spaces or symbols", token)
            return token.text
        raise self.fail(f"expected a value, found {_describe(token)}", token)


def _whole_period(node: Compare | Between) -> Node:
    """A comparison with a date or time written to some precision, made to mean its whole
    period: ``= 2021-07`` any time in July 2021, ``<= 2021-07-15`` up to that day's end,
    ``> 2021`` from 2022, and a range's upper end whole. Other comparisons as they are."""
    if isinstance(node, Between):
        high = node.high
        if isinstance(high, str) and _DATE_PREFIX.fullmatch(high):
            return Between(node.key, node.low, high + _PERIOD_END)
        return node
    value = node.value
    if not isinstance(value, str) or not _DATE_PREFIX.fullmatch(value):
        return node
    if node.op == "=":
        return Between(node.key, value, value + _PERIOD_END)
    if node.op in ("<=", ">"):
        return Compare(node.key, node.op, value + _PERIOD_END)
    return node


def _describe(token: _Token) -> str:
    return "the end" if token.kind == "end" else f"`{token.text}`"
