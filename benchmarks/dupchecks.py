"""The Dup set's pixel checks and exact pairs, computed once and cached under its folder: what
benchmarks/calibrate_dedup.py calibrates the product's rules on.

* :func:`checked`: `lookalike.dedup.verify`'s (aligned, detail) scores of pairs of files, in
  worker processes, cached by the set's version and verify.py's source (a change to the check
  recomputes them).
* :func:`exact_pairs`: which pairs the product calls exact by the files alone: the same bytes,
  or the same decoded pixels.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dupset import DUP_SET_VERSION, FOLDER  # noqa: E402  (benchmarks are scripts)
from lookalike.dedup import verify  # noqa: E402
from lookalike.dedup.pairs import pixel_digest  # noqa: E402
from lookalike.imaging import content_hash  # noqa: E402
from lookalike.thresholds import SAME_PIXELS_COSINE  # noqa: E402

WORKERS, CHUNK, THUMBS_KEPT = 2, 250, 1500
CHECKS = FOLDER / "checks"


_thumbs: OrderedDict[str, verify.Thumb | None] = OrderedDict()  # a worker's latest thumbnails


def _check_chunk(images: str, chunk: list[tuple[str, str]]) -> tuple[list, float]:
    """(aligned, detail) of each pair of files, and the CPU seconds it took."""
    started = time.process_time()
    out = []
    for pair in chunk:
        for path in pair:
            if path in _thumbs:
                _thumbs.move_to_end(path)
            else:
                _thumbs[path] = verify.thumb((Path(images) / path).read_bytes(), 10**9)
                if len(_thumbs) > THUMBS_KEPT:
                    _thumbs.popitem(last=False)
        a, b = (_thumbs[p] for p in pair)
        out.append((-2.0, -2.0) if a is None or b is None else verify.scores(a, b))
    return out, time.process_time() - started


def checked(images: Path, paths: list[str], pairs: np.ndarray) -> tuple[np.ndarray, dict]:
    """(aligned, detail) of ``pairs`` (rows of file indices), computed where not cached."""
    key = hashlib.sha256(f"dup-v{DUP_SET_VERSION}".encode()
                         + Path(verify.__file__).read_bytes()).hexdigest()[:12]
    cache = CHECKS / f"verify-{key}.npz"
    known, stats = {}, {"seconds": 0.0, "count": 0}
    if cache.is_file():
        with np.load(cache) as z:
            known = {(int(i), int(j)): tuple(v)
                     for (i, j), v in zip(z["pairs"], z["checks"], strict=True)}
            stats = {"seconds": float(z["seconds"]), "count": int(z["count"])}
    todo = [(int(i), int(j)) for i, j in pairs if (int(i), int(j)) not in known]

    def save() -> None:
        CHECKS.mkdir(parents=True, exist_ok=True)
        done = sorted(known)
        np.savez(cache.with_suffix(".tmp.npz"), pairs=np.array(done, np.int32).reshape(-1, 2),
                 checks=np.array([known[p] for p in done], np.float32).reshape(-1, 2),
                 seconds=stats["seconds"], count=stats["count"])
        os.replace(cache.with_suffix(".tmp.npz"), cache)

    started = time.perf_counter()
    if todo:
        print(f"checking {len(todo)} pairs' pixels ({len(pairs) - len(todo)} cached) in "
              f"{WORKERS} processes", flush=True)
        chunks = [todo[k:k + CHUNK] for k in range(0, len(todo), CHUNK)]
        with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = pool.map(_check_chunk, [str(images)] * len(chunks),
                            [[(paths[i], paths[j]) for i, j in c] for c in chunks])
            for n, (chunk, (found, seconds)) in enumerate(zip(chunks, jobs, strict=True), 1):
                known.update(zip(chunk, found, strict=True))
                stats["seconds"] += seconds
                stats["count"] += len(chunk)
                if n % 20 == 0 or n == len(chunks):
                    save()
                    print(f"  {min(n * CHUNK, len(todo))}/{len(todo)} pairs, "
                          f"{time.perf_counter() - started:.0f} s", flush=True)
    stats.update(pairs=len(pairs), new=len(todo), wall=time.perf_counter() - started)
    return np.array([known[(int(i), int(j))] for i, j in pairs], np.float32), stats


def exact_pairs(images: Path, paths: list[str], pairs: np.ndarray,
                top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which ``pairs`` the product calls exact by files alone: the same bytes, or the same
    pixels (only where ``top``, their highest cosine, reaches SAME_PIXELS_COSINE; per model the
    caller also requires it of the model's own cosine)."""
    hashes = [content_hash((images / p).read_bytes()) for p in paths]
    same_bytes = np.array([hashes[i] == hashes[j] for i, j in pairs], bool)
    cache = CHECKS / "pixels.json"
    digests = json.loads(cache.read_text()) if cache.is_file() else {}
    wanted = {paths[k] for k in pairs[top >= SAME_PIXELS_COSINE].ravel()}
    for path in sorted(wanted - set(digests)):
        digests[path] = pixel_digest((images / path).read_bytes(), 10**9)
    CHECKS.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(digests))
    same_pixels = np.array([digests.get(paths[i]) is not None and
                            digests.get(paths[i]) == digests.get(paths[j]) for i, j in pairs])
    return same_bytes, same_pixels
