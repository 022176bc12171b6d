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
:func:`.parser._whole_period`): the parser rewrites the comparison, so both evaluations agree.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from .parser import WhereError, parse
from .tree import (
    MAX_KEY,
    MAX_LENGTH,
    MAX_TEXT,
    All,
    Any_,
    Between,
    Compare,
    Dialect,
    Exists,
    Fields,
    In,
    Like,
    Node,
    Not,
    Value,
    comparison_sql,
    compiled,
    field_value,
    flatten,
    keys_of,
    parse_max_per,
    show,
)

__all__ = ["MAX_KEY", "MAX_LENGTH", "MAX_TEXT", "All", "Any_", "Between", "Compare", "Dialect",
           "Exists", "Fields", "In", "Like", "Node", "Not", "Value", "Where", "WhereError",
           "comparison_sql", "field_value", "flatten", "parse_max_per"]


class Where:
    """A parsed filter expression. Equal expressions have equal :attr:`text`."""

    def __init__(self, root: Node) -> None:
        self.root = root
        self.text = show(root, top=True)
        self._test = compiled(root)

    @classmethod
    def parse(cls, text: str) -> Where:
        """Parse ``text``; raises :class:`WhereError` saying where and what is wrong."""
        if not isinstance(text, str):
            raise UsageError(f"A filter expression is text, got {type(text).__name__}.")
        if len(text) > MAX_LENGTH:
            raise WhereError(text[:120], 0,
                             f"it is {len(text)} characters long, at most {MAX_LENGTH}")
        return cls(parse(text))

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
        return set(keys_of(self.root))

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
