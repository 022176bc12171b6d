"""A writer process for the concurrent-writers test: writes batches to a PostgreSQL store.

    python pg_writer.py URI NAME BATCHES SEED

Each batch mixes uris shared with the other writer (so both retire each other's rows) and its
own; now and then it removes one of its images. Prints the ids it wrote and the number of write
transactions, as JSON, when done.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from lookalike.storage import NewImage
from lookalike.storage.postgres import PostgresStore
from lookalike.storage.uri import PostgresURI

DIM = 8


def main(uri: str, name: str, batches: int, seed: int) -> None:
    store = PostgresStore(PostgresURI.parse(uri), DIM)
    rng = np.random.default_rng(seed)
    written: list[int] = []
    transactions = 0
    for n in range(batches):
        rows = []
        for k in range(int(rng.integers(1, 6))):
            shared = rng.random() < 0.5
            uri_ = f"/shared/{int(rng.integers(0, 20))}.jpg" if shared else f"/{name}/{n}-{k}.jpg"
            vector = rng.standard_normal(DIM).astype(np.float32)
            rows.append(NewImage(uri_, 1, n, f"{name}-{n}-{k}", 1, 1,
                                 vector / np.linalg.norm(vector)))
        ids = store.write(rows)
        assert ids == sorted(ids), ids
        written += ids
        transactions += 1
        if n % 7 == 3:
            store.mark_removed([int(rng.choice(written))])
            transactions += 1
    store.close()
    print(json.dumps({"ids": written, "transactions": transactions}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
