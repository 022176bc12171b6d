"""`lookalike learn`: learn a collection's own invariances from its images and copies of them.

A random sample of the collection's images is read again and each is edited the way people
edit a photo before re-posting it (a chain of 2-4 of: crop, rotation, JPEG, colour, grey, blur,
downscaling, mirror, text, border; :mod:`lookalike.edits`). The copy is embedded and
paired with the image's stored vector, and :class:`~lookalike.index.whitening.LearnedWhitening`
is fitted from the pairs: no labels, no data from outside the collection. The index then holds
projected vectors, as after `lookalike reduce`; the stored vectors stay as the model made them,
so it can be redone or turned off at any time.

`lookalike index` and `lookalike compact` learn by themselves once the collection holds
``learn_min_images`` images, and again each time it has doubled since (:func:`learning_due`).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .. import settings
from ..edits import HEAVY, chain
from ..embedders import Embedder
from ..errors import UsageError
from ..index.whitening import LearnedWhitening
from ..ingest.local import decoded_chunks
from ..settings import MIN_LEARN_PAIRS
from ..types import LearnReport
from .manifest import Manifest, PcaEntry

if TYPE_CHECKING:
    from .collection import Collection

_CHUNK = 16  # images per decoding task
#: Stored vectors the mean (and a reduced projection's rotation) is learnt from, at most.
_SAMPLE = 200_000


def _edited(seed: int, side: int, image: Image.Image, content_hash: str) -> Image.Image:
    # Edited at the model's input size (shorter side ``side``): twice as fast as at the size
    # decoding left (up to 2x that), and measured to learn as well.
    scale = side / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.Resampling.BILINEAR)
    # The same copy of the same content for the same seed, in whatever order images come.
    rng = np.random.default_rng([seed, int(content_hash[:16], 16)])
    return chain(image, rng, HEAVY)[0]


def copy_vectors(uris: Sequence[str], hashes: Sequence[str | None], embedder: Embedder, *,
                 seed: int, workers: int, max_pixels: int, max_bytes: int,
                 batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """An edited copy of each file, embedded: (made, vectors), where ``made[i]`` says whether
    file ``i`` could be read and still has content hash ``hashes[i]`` (None: any content), and
    rows of files that could not are zero. Decoding and editing run in ``workers`` processes
    while this one embeds."""
    made = np.zeros(len(uris), bool)
    vectors = np.zeros((len(uris), embedder.dim), np.float32)
    chunks = [list(uris[i:i + _CHUNK]) for i in range(0, len(uris), _CHUNK)]
    stages = {"decode": 0.0, "decode_wait": 0.0}
    rows: list[int] = []
    pixels: list[np.ndarray] = []

    def embed() -> None:
        if rows:
            vectors[rows] = embedder.embed_pixels(np.stack(pixels))
            made[rows] = True
            rows.clear()
            pixels.clear()

    start = 0
    edit = functools.partial(_edited, seed, embedder.preprocess.size)
    for decoded in decoded_chunks(chunks, embedder.preprocess, max_pixels, max_bytes, workers,
                                  stages, edit=edit):
        for offset, item in enumerate(decoded):
            expected = hashes[start + offset]
            if item.pixels is not None and expected in (None, item.content_hash):
                rows.append(start + offset)
                pixels.append(item.pixels)
            if len(rows) >= batch_size:
                embed()
        start += len(decoded)
    embed()
    return made, vectors


def learning_due(manifest: Manifest, images: int) -> bool:
    """Whether index and compact should learn now: learning is on for the collection and in the
    settings, no PCA was chosen by hand (`lookalike reduce`), and the collection holds
    ``learn_min_images`` images, twice as many as when it last learnt."""
    threshold = settings.resolve("learn_min_images")
    entry = manifest.pca
    if not manifest.learn or threshold <= 0 or images < threshold:
        return False
    if entry is None:
        return True
    return entry.learned and images >= 2 * entry.trained_on


def learn_if_due(collection: Collection, *, wait: float = 0.0) -> LearnReport | None:
    """See :meth:`lookalike.Collection.learn_if_due`."""
    if not learning_due(collection.manifest, collection.store.counts().get("active", 0)):
        return None
    try:
        return learn(collection, wait=wait)
    except UsageError as exc:  # too few files could be read again: the run itself is fine
        warnings.warn(f"Not learning this collection's invariances: {exc}", stacklevel=3)
        return None


def learn(collection: Collection, *, dim: int | None = None, pairs: int | None = None,
          seed: int = 0, off: bool = False, wait: float = 0.0,
          workers: int | None = None) -> LearnReport:
    """See :meth:`lookalike.Collection.learn`."""
    pairs = settings.resolve("learn_pairs", pairs)
    if pairs < MIN_LEARN_PAIRS:
        raise UsageError(f"--pairs (setting learn_pairs) must be at least {MIN_LEARN_PAIRS}, got "
                         f"{pairs}.")
    indexes, store = collection.indexes, collection.store
    entry = collection.manifest.pca
    if off:
        if entry is None or not entry.learned:  # nothing learnt (a PCA of `reduce` stays)
            indexes.stop_learning()
            dim = collection.index_dim
            return LearnReport(0, 0, 0, dim, dim, 0, 0.0, 0.0, 0.0, off=True)
        _, switch = indexes.switch_projection(lambda: (None, None), wait=wait, learn=False)
        return LearnReport(0, 0, 0, switch.dim_before, switch.dim_after, switch.vectors, 0.0,
                           switch.fit_seconds, switch.build_seconds, off=True)
    if dim is None and entry is not None:
        dim = entry.dim  # keep the dimension `reduce` or an earlier `learn --dim` chose
    started = time.perf_counter()
    active = [r for r in store.file_states().values() if r.status == "active"]
    if len(active) < MIN_LEARN_PAIRS:
        raise UsageError(f"Learning needs at least {MIN_LEARN_PAIRS} images in the collection, it "
                         f"holds {len(active)}; index more images first.")
    picked = np.random.default_rng(seed).choice(len(active), min(pairs, len(active)),
                                                replace=False)
    records = [active[i] for i in np.sort(picked)]
    made, copies = copy_vectors(
        [r.uri for r in records], [r.content_hash for r in records], collection.embedder,
        seed=seed, workers=settings.resolve("workers", workers),
        max_pixels=collection.limits.max_pixels, max_bytes=collection.limits.max_file_bytes)
    stored = store.vectors([r.id for r in records])
    kept = [i for i, r in enumerate(records) if made[i] and r.id in stored]
    if len(kept) < MIN_LEARN_PAIRS:
        raise UsageError(
            f"Only {len(kept)} of {len(records)} images drawn could be read again unchanged; "
            f"learning needs {MIN_LEARN_PAIRS}. Run `lookalike index` on the folders first, so "
            "that the collection matches its files.")
    originals = np.stack([stored[records[i].id] for i in kept])
    copy_seconds = time.perf_counter() - started

    def fit() -> tuple[LearnedWhitening, PcaEntry]:
        learned = LearnedWhitening.fit(store.sample_vectors(_SAMPLE, seed=seed), originals,
                                       copies[kept], dim=dim)
        return learned, PcaEntry(learned.dim, True, "", len(active), seed, None,
                                 LearnedWhitening.kind, learned.pairs)

    learned, switch = indexes.switch_projection(fit, wait=wait, learn=True)
    return LearnReport(learned.pairs, len(records) - len(kept), learned.trained_on,
                       switch.dim_before, switch.dim_after, switch.vectors, copy_seconds,
                       switch.fit_seconds, switch.build_seconds)
