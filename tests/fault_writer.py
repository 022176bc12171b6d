"""A writer for the fault-injection test: random index/add/delete/merge operations on a
collection, forever, printing an ACK line only after each operation has returned.

Usage: python fault_writer.py COLLECTION POOL_DIR WORK_DIR SEED
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

from lookalike import Collection


def main() -> None:
    col_dir, pool, work, seed = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    rng = random.Random(seed)
    col = Collection.open_or_create(col_dir, index="Flat")
    col.live.policy = type(col.live.policy)(delta_min=4, delta_fraction=0.0,
                                            tombstone_fraction=0.2)
    pool_files = sorted(pool.glob("*.jpg"))
    col.embedder, col.live  # noqa: B018 - load the model and indexes before the clock starts
    print("READY", flush=True)
    while True:
        op = rng.choice(["add", "add", "index", "delete", "merge"])
        if op in ("add", "index"):
            names = rng.sample(pool_files, rng.randint(1, 4))
            targets = []
            for source in names:
                target = work / f"{rng.getrandbits(40):010x}-{source.name}"
                shutil.copy(source, target)
                targets.append(target)
            if op == "add":
                col.add(targets, workers=0, show_progress=False)
            else:
                col.index([work], workers=0, show_progress=False)
            for target in targets:
                print("ACK add", target, flush=True)
        elif op == "delete":
            victims = [p for p in work.glob("*.jpg") if col.find(p) is not None]
            if victims:
                victim = rng.choice(victims)
                image_id = col.find(victim)
                print("BEGIN del", image_id, victim, flush=True)  # may land before an ACK
                col.remove([victim])
                print("ACK del", image_id, victim, flush=True)
        else:
            col.compact()
            print("ACK merge", flush=True)


if __name__ == "__main__":
    main()
