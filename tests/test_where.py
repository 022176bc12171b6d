"""The filter language on its own: what parses, what it means, and every way it refuses."""

from __future__ import annotations

import random

import pytest

from lookalike.where import Where, WhereError, flatten, parse_max_per
from lookalike.where.tree import MAX_DEPTH
from random_filters import random_expression

FIELDS = {"album": ["trip"], "tags": ["red", "sea"], "width": [1024.0], "sold": [1.0],
          "code": ["007"],
          "taken": ["2021-06-05T10:00:00"], "name": ["IMG_0042.jpg"], "my key": ["x"]}


@pytest.mark.parametrize("text, expected", [
    ("album = trip", True), ("album == 'trip'", True), ('album != "trip"', False),
    ("width >= 1000 and width < 2000", True), ("width > 1024", False), ("width = 1024.0", True),
    ("width = '1024'", False),  # text never equals a number
    ("tags = sea", True), ("tags in [blue, red]", True), ("tags not in [blue, red]", False),
    ("sold = true", True), ("sold = 1", True), ("sold = false", False),
    ("taken between 2021-06-01 and 2021-06-30", True), ("taken >= 2022", False),
    ("taken < 2021-07", True), ('name like "IMG_*"', True), ('name like "img_*"', False),
    ('name like "IMG_00??.jpg"', True), ('name not like "*.png"', True),
    ("exists tags", True), ("exists rating", False), ("not exists rating", True),
    ("rating != 3", True), ("rating < 3", False), ("rating not in [1, 2]", True),
    ("`my key` = x", True), ("(album = home or tags = red) and not width < 100", True),
    ("tags != red", False), ("tags != blue", True),  # the negations: no value matches
    # A date written shorter stands for its whole year, month, day or hour.
    ("taken = 2021-06-05", True), ("taken = 2021-06", True), ("taken = '2021'", True),
    ("taken <= 2021-06-05", True), ("taken > 2021-06-05", False), ("taken > 2021-06-04", True),
    ("taken between 2021-01 and 2021-06", True), ("taken not between 2021-07 and '2022'", True),
    ("taken != 2021-06", False), ("taken < 2021-06-05", False), ("taken >= 2021-06-05", True),
    ("taken = 2021-06-05T10", True), ("taken = 2021-06-05T11", False),
    ("code = 007", True), ("code = 7", False), ("code = +1", False),  # JSON numbers only
    ("NOT album = trip OR width > 10", True), ("album = trip and tags = cat or sold = 1", True),
])
def test_expressions_mean_what_the_readme_says(text: str, expected: bool) -> None:
    assert Where.parse(text).matches(FIELDS) is expected


def test_canonical_text_parses_back_to_the_same_expression() -> None:
    rng = random.Random(3)
    keys = ["a", "b.c", "`in`", "`my key`", "x-y"]
    for _ in range(300):
        where = Where.parse(random_expression(rng, keys))
        again = Where.parse(where.text)
        assert again == where and again.root == where.root and hash(again) == hash(where)


@pytest.mark.parametrize("text, problem", [
    ("", "the expression is empty"), ("   ", "the expression is empty"),
    ("album =", "expected a value, found the end"),
    ("album = = trip", "expected a value, found `=`"),
    ("= trip", "expected a field name"), ("and", "expected a field name, found `and`"),
    ("album trip", "expected a comparison"), ("(album = trip", "expected `)`"),
    ("album = trip)", "expected `and`, `or` or the end"),
    ("album in []", "expected a value, found `]`"), ("album in trip", "expected a list"),
    ("width between 1 and x", "both ends of a range"), ("width between 1 or 2", "expected `and`"),
    ("name like 5", "`like` takes a text pattern"), ("album ! trip", "unexpected '!'"),
    ("album = 'open", "a quote is never closed"), ("x = 1e999", "numbers must be finite"),
    ("album = a;b", "expected a value"), ("album not = x", "expected `in`, `between` or"),
])
def test_bad_expressions_say_where_and_what(text: str, problem: str) -> None:
    with pytest.raises(WhereError) as raised:
        Where.parse(text)
    assert problem in str(raised.value) and "^" in str(raised.value)


def test_limits_and_junk_never_raise_anything_but_a_clear_error() -> None:
    with pytest.raises(WhereError, match="nests deeper"):
        Where.parse("not " * (MAX_DEPTH + 1) + "a = 1")
    with pytest.raises(WhereError, match="characters long"):
        Where.parse("a = " + "x" * 5000)
    with pytest.raises(WhereError, match="at most 1000 values"):
        Where.parse("a in [" + ",".join(str(i % 10) for i in range(1001)) + "]")
    rng = random.Random(5)
    alphabet = "ab =!<>()[],'\"`*?-.:0123456789 andornotinlikeexistsbetween\\\x00é"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        try:
            where = Where.parse(text)
        except WhereError:
            continue
        where.matches(FIELDS)
        where.sql("sqlite", "fields", "images.id")


def test_sql_binds_every_key_and_value() -> None:
    where = Where.parse("""`a'; DROP TABLE images; --` = "x' OR 1=1 --" or b like "[x]%_*\"""")
    for dialect in ("sqlite", "postgres"):
        sql, params = where.sql(dialect, "fields", "images.id")
        assert "DROP" not in sql and "1=1" not in sql and "OR 1" not in sql
        assert "a'; DROP TABLE images; --" in params and "x' OR 1=1 --" in params
    assert Where.parse('b like "[x]%_*"').sql("postgres", "f", "i")[1] == ["b", r"[x]\%\_%"]


def test_metadata_flattens_to_fields_and_max_per_parses() -> None:
    flat = list(flatten({"a": {"b": 1, "c": [True, "x", None, {"d": 1}]}, "e": None,
                         "f": float("nan"), "g": "t" * 3000}))
    assert flat == [("a.b", 1.0), ("a.c", 1.0), ("a.c", "x"), ("g", "t" * 2000)]
    assert parse_max_per("album=2") == ("album", 2) and parse_max_per(None) is None
    assert parse_max_per("a=b=3") == ("a=b", 3)
    for bad in ["album", "album=0", "=2", "album=x", "album=-1"]:
        with pytest.raises(Exception, match="max_per takes"):
            parse_max_per(bad)
