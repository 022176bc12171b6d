"""Parsing filter expressions (the grammar in :mod:`lookalike.where`) into trees, with errors
that say where and what is wrong."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import UsageError
from .tree import (
    KEYWORDS,
    MAX_DEPTH,
    MAX_KEY,
    MAX_TEXT,
    MAX_VALUES,
    NAME,
    PERIOD_END,
    All,
    Any_,
    Between,
    Compare,
    Exists,
    In,
    Like,
    Node,
    Not,
    Value,
    same_kind,
)

# A bare value is a number when JSON would write it so (3, -2.5, 1e3): "007" and "+1" stay
# text, as in a CSV cell or a `tag` value.
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
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
        elif token.kind == "word" and NAME.fullmatch(token.text) and \
                token.text.lower() not in KEYWORDS:
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
            if not same_kind(low, high):
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
            if lowered in KEYWORDS or not _BARE.fullmatch(token.text):
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
            return Between(node.key, node.low, high + PERIOD_END)
        return node
    value = node.value
    if not isinstance(value, str) or not _DATE_PREFIX.fullmatch(value):
        return node
    if node.op == "=":
        return Between(node.key, value, value + PERIOD_END)
    if node.op in ("<=", ">"):
        return Compare(node.key, node.op, value + PERIOD_END)
    return node


def _describe(token: _Token) -> str:
    return "the end" if token.kind == "end" else f"`{token.text}`"


def parse(text: str) -> Node:
    """The tree of ``text``; WhereError saying where and what is wrong."""
    return _Parser(text).parse()
