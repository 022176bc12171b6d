"""The filter queries both stores run (:class:`FieldQueries`), phrased so that the database
reads the matching entries of the fields indexes and scans the images table only for a
negation.

:meth:`Where.sql` tests an id with ``ID IN (SELECT image_id FROM fields WHERE key = ? AND
...)`` per comparison. Testing every active image that way reads them all, so the query
*drives* from a subquery that holds every passing image and only active ones (only active
images have fields rows, see :mod:`.fields`): for one comparison, its own; for ``and``, that of
the part that matches fewest images (SQLite: counted up to :data:`CAP`, which costs at most a
millisecond or two at 1M images; PostgreSQL, which keeps statistics and weighs the rest
itself: guessed from its kind); for ``or``, the union of its parts'. What the driver leaves
open is checked on each of its rows, the cheapest way for each comparison (SQLite):

- an equality (``=``, ``in``) seeks its (key, value, image_id) index entry: ``EXISTS``;
- any other (range, ``like``, ``exists``) lists the images passing it once (``IN``), unless
  reading the fields rows of each driver row costs less (the image_id index, ``EXISTS``).

Without that choice, SQLite at 1,000,000 images took 0.3 s for ``tenant = t42 and format =
jpeg`` (listing every jpeg) and 27 s for ``category = c2 and bucket between 0 and 5``
(scanning the range once per driver row); with it, 1.3 ms and 8 ms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..where import All, Any_, Compare, Dialect, Exists, In, Node, Not, Value, Where, comparison_sql
from .fields import checked, top_values

#: Estimates count a subquery's rows up to this many: enough to tell selective from not.
CAP = 20_000
#: Checking one image by reading its fields rows costs about as much as listing this many ids
#: from an index (SQLite, 1M images: 2 us against 0.25 us).
PROBE_COST = 8
#: Facets of fewer passing images than this read those images' fields rows; of more, scan
#: each key's index entries (SQLite, 1M images: the two cost the same near 100,000).
FACET_DRIVE = 50_000

Run = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]  # a query's rows


class FieldQueries:
    """The filter queries of a store, run with ``run``; ``schema``: what its table names
    start with (``""``, or a quoted schema name and a dot)."""

    def __init__(self, dialect: Dialect, schema: str, run: Run) -> None:
        self.dialect, self.run = dialect, run
        self.fields, self.images, self.counts = (f"{schema}{table}" for table in (
            "fields", "images", "field_counts"))
        self.mark = "?" if dialect == "sqlite" else "%s"

    def matching(self, where: Where) -> np.ndarray:
        found = self.run(*self.matching_sql(checked(where)))
        return np.sort(np.fromiter((r[0] for r in found), np.int64, count=len(found)))

    def count_matching(self, where: Where) -> int:
        query, params = self.matching_sql(checked(where))
        return int(self.run(f"SELECT count(*) FROM ({query}) m", params)[0][0])

    def matching_sql(self, where: Where) -> tuple[str, list[Any]]:
        """A query of the ids (each once, in no order) of the active images passing
        ``where``, and its parameters."""
        return _Planner(self.dialect, self.fields, self._count).query(where, self.images)

    def facets(self, keys: Sequence[str], where: Where | None,
               top: int) -> dict[str, list[tuple[Value, int]]]:
        keys = list(dict.fromkeys(keys))
        where = where and checked(where)
        if where is None:
            return {key: self._key_facet(key, "", [], top) for key in keys}
        query, params = self.matching_sql(where)
        passing = self._count(f"SELECT count(*) FROM ({query} LIMIT {FACET_DRIVE}) m", params)
        if passing >= FACET_DRIVE or not keys:
            condition = f" AND f.image_id IN ({query})"
            return {key: self._key_facet(key, condition, params, top) for key in keys}
        # Few images pass: read their own rows, every key in one query.
        marks = ", ".join([self.mark] * len(keys))
        found: dict[str, list[tuple[Value, int]]] = {key: [] for key in keys}
        for key, text, num, n in self.run(
                f"SELECT key, text, num, n FROM (SELECT f.key, f.text, f.num, count(*) AS n, "
                "row_number() OVER (PARTITION BY f.key ORDER BY count(*) DESC, "
                "f.text IS NOT NULL, f.num, f.text) AS r "
                f"FROM ({query}) m JOIN {self.fields} f ON f.image_id = m.image_id "
                f"WHERE f.key IN ({marks}) GROUP BY f.key, f.text, f.num) t "
                f"WHERE r <= {self.mark}", [*params, *keys, top]):
            found[key].append((num if text is None else text, n))
        return {key: top_values(pairs, top) for key, pairs in found.items()}

    def _key_facet(self, key: str, condition: str, params: list[Any],
                   top: int) -> list[tuple[Value, int]]:
        # Strings and numbers apart, each from its covering index; a value is on an image
        # once (fields.rows), so rows are images.
        return top_values([pair for column in ("num", "text") for pair in self.run(
            f"SELECT f.{column}, count(*) AS n FROM {self.fields} f WHERE f.key = {self.mark} "
            f"AND f.{column} IS NOT NULL{condition} GROUP BY f.{column} "
            f"ORDER BY n DESC, f.{column} LIMIT {self.mark}", [key, *params, max(top, 0)])],
            top)

    def field_keys(self) -> list[tuple[str, int]]:
        found = self.run(f"SELECT key, images FROM {self.counts} ORDER BY images DESC, key", [])
        return [(key, int(n)) for key, n in found]

    def _count(self, query: str, params: list[Any]) -> int:
        return int(self.run(query, params)[0][0])


class _Driver:
    def __init__(self, query: str, params: list[Any], rest: Node | None,
                 size: Callable[[], int]) -> None:
        self.query, self.params, self.rest, self._size = query, params, rest, size
        self._known: int | None = None

    @property
    def size(self) -> int:
        """How many rows it has, counted up to CAP (or a sum of such counts)."""
        if self._known is None:
            self._known = self._size()
        return self._known


class _Planner:
    def __init__(self, dialect: Dialect, fields: str,
                 count: Callable[[str, list[Any]], int]) -> None:
        self.dialect, self.fields, self.count = dialect, fields, count

    def query(self, where: Where, images: str) -> tuple[str, list[Any]]:
        driver = self.driver(where.root)
        if driver is None:  # a negation: test every active image
            condition, params = where.sql(self.dialect, self.fields, "i.id")
            return (f"SELECT i.id AS image_id FROM {images} i WHERE i.status = 'active' "
                    f"AND {condition}", params)
        query, params = f"SELECT DISTINCT d.image_id FROM ({driver.query}) d", driver.params
        if driver.rest is None:
            return query, params
        condition, more = self.check(driver.rest, "d.image_id", driver)
        return f"{query} WHERE {condition}", params + more

    def driver(self, node: Node) -> _Driver | None:
        """A query of image ids (repeats allowed) holding every active image passing ``node``
        and no inactive one, and what is left to check on its rows; None for a negation."""
        if isinstance(node, Not):
            return None
        if isinstance(node, Any_):
            parts = [self.driver(part) for part in node.parts]
            found = [part for part in parts if part is not None]
            if len(found) < len(parts):
                return None
            return _Driver(" UNION ALL ".join(d.query for d in found),
                           [p for d in found for p in d.params],
                           node if any(d.rest is not None for d in found) else None,
                           lambda: sum(d.size for d in found))
        if isinstance(node, All):
            drivable = [(part, d) for part in node.parts if (d := self.driver(part)) is not None]
            if not drivable:
                return None
            part, best = min(drivable, key=lambda pair: pair[1].size)
            left = [p for p in node.parts if p is not part] + ([] if best.rest is None else [part])
            rest = None if not left else left[0] if len(left) == 1 else All(tuple(left))
            return _Driver(best.query, best.params, rest, lambda: best.size)
        query, params = comparison_sql(node, self.dialect, self.fields)
        if self.dialect == "postgres":  # it keeps statistics: a guess is enough to drive
            return _Driver(query, params, None, lambda: _guess(node))
        return _Driver(query, params, None, lambda: self.count(
            f"SELECT count(*) FROM ({query} LIMIT {CAP}) c", params))

    def check(self, node: Node, id_column: str, driver: _Driver) -> tuple[str, list[Any]]:
        """An SQL condition on ``id_column`` (a row of ``driver``) true when it passes
        ``node``."""
        if isinstance(node, Not):
            condition, params = self.check(node.part, id_column, driver)
            return f"NOT ({condition})", params
        if isinstance(node, (All, Any_)):
            parts = [self.check(part, id_column, driver) for part in node.parts]
            joiner = " AND " if isinstance(node, All) else " OR "
            return ("(" + joiner.join(c for c, _ in parts) + ")",
                    [p for _, params in parts for p in params])
        equality = isinstance(node, In) or (isinstance(node, Compare) and node.op == "=")
        if equality or self.probe_pays(node, driver):
            # SQLite would seek a range by its value, then scan it for the id, on every row.
            table = self.fields if equality or self.dialect != "sqlite" else \
                f"{self.fields} INDEXED BY fields_image"
            found = self.subquery(node, table)
            if found is not None:
                query, params = found
                return f"EXISTS (SELECT 1 FROM ({query}) s WHERE s.image_id = {id_column})", params
        return Where(node).sql(self.dialect, self.fields, id_column)

    def probe_pays(self, node: Node, driver: _Driver) -> bool:
        """Whether reading the rows of each of ``driver``'s images costs less than listing
        the images passing ``node``: measured, a probe costs about 8 listed ids."""
        if self.dialect == "postgres" or driver.size >= CAP:  # PostgreSQL weighs it itself
            return False
        leaf = self.subquery(node)
        if leaf is None:
            return False
        query, params = leaf
        limit = PROBE_COST * driver.size + 1
        return self.count(f"SELECT count(*) FROM ({query} LIMIT {limit}) c", params) == limit

    def subquery(self, node: Node, table: str | None = None) -> tuple[str, list[Any]] | None:
        """The query of the images passing one comparison (what :meth:`Where.sql` tests an
        id against); None for anything else."""
        if isinstance(node, (Not, All, Any_)):
            return None
        return comparison_sql(node, self.dialect, table or self.fields)


def _guess(node: Node) -> int:
    """How many images a comparison passes, as PostgreSQL's driver choice guesses it from its
    kind: its planner then weighs the rest of the query with its own statistics."""
    if isinstance(node, In) or (isinstance(node, Compare) and node.op == "="):
        return 1
    return 3 if isinstance(node, Exists) else 2
