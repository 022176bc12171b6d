"""Random metadata and random filter expressions of the whole grammar, for the property tests
of the store's SQL, the expression language and filtered search (seeded ``random.Random``)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

KEYS = ["a", "b", "n", "tags", "nest.x", "flag", "missing", "format", "width", "name"]
TEXTS = ["x", "y", "X", "x y", "ä", "", "[x]", "50%", "a_b", "2021-06-01", "x*"]
NUMBERS: list[float] = [-1, 0, 1, 2.5, 3, 64, 1e6]
PATTERNS = ["x*", "?", "*y*", "[x]*", "50%", "a_b", "*", "x?y", "ä", "*.jpg"]


def random_value(rng: random.Random) -> object:
    """A metadata value: text, a number, a boolean, null, or a list of them."""
    kind = rng.random()
    if kind < 0.4:
        return rng.choice(TEXTS)
    if kind < 0.7:
        return rng.choice(NUMBERS)
    if kind < 0.8:
        return rng.random() < 0.5
    if kind < 0.9:
        return None
    return [rng.choice(TEXTS + NUMBERS) for _ in range(rng.randint(0, 3))]


def random_metadata(rng: random.Random) -> str:
    """A JSON object with some of :data:`KEYS` (``nest.x`` nested) and random values."""
    found: dict[str, object] = {}
    for key in KEYS:
        if rng.random() < 0.45:
            if key == "nest.x":
                found["nest"] = {"x": random_value(rng), "y": 1}
            else:
                found[key] = random_value(rng)
    return json.dumps(found)


def literal(value: object) -> str:
    """``value`` as an expression writes it."""
    if isinstance(value, str):
        return json.dumps(value)
    return str(value).lower() if isinstance(value, bool) else repr(value)


def random_expression(rng: random.Random, keys: Sequence[str] = KEYS,
                      texts: Sequence[str] = TEXTS, numbers: Sequence[float] = NUMBERS,
                      patterns: Sequence[str] = PATTERNS, depth: int = 0) -> str:
    """An expression of every form the grammar has (comparisons, lists, ranges, patterns,
    existence, not/and/or), over ``keys`` (``nest.x`` sometimes in backticks) and values."""
    roll = rng.random() if depth < 3 else 0.0
    if roll > 0.85:
        return f"not {random_expression(rng, keys, texts, numbers, patterns, depth + 1)}"
    if roll > 0.6:
        joiner = rng.choice([" and ", " or "])
        return "(" + joiner.join(random_expression(rng, keys, texts, numbers, patterns,
                                                   depth + 1)
                                 for _ in range(rng.randint(2, 3))) + ")"
    key = rng.choice(keys)
    key = f"`{key}`" if "." in key and rng.random() < 0.5 else key
    scalar = [*texts, *numbers, True, False]
    test = rng.randrange(6)
    if test == 0:
        op = rng.choice(["=", "==", "!=", "<", "<=", ">", ">="])
        return f"{key} {op} {literal(rng.choice(scalar))}"
    if test == 1:
        values = ", ".join(literal(rng.choice(scalar)) for _ in range(rng.randint(1, 3)))
        return f"{key} {rng.choice(['in', 'not in'])} [{values}]"
    if test == 2:
        if rng.random() < 0.5:
            low, high = sorted(rng.sample(list(texts), 2))
        else:
            low, high = sorted(rng.sample(list(numbers), 2))
        return f"{key} between {literal(low)} and {literal(high)}"
    if test == 3:
        pattern = rng.choice(patterns)
        return f"{key} {rng.choice(['like', 'not like'])} {json.dumps(pattern)}"
    return f"exists {key}"
