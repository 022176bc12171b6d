"""One settings table: name, default, help and environment variable for every knob.

Precedence: command-line flag > ``LOOKALIKE_*`` environment variable > config file > default.
The config file is TOML at ``$LOOKALIKE_CONFIG`` or ``~/.config/lookalike/config.toml``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from .errors import UsageError


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


#: EfficientNet-Lite0 with GeM pooling: of the packaged models, the best measured accuracy per
#: unit of cost (README, "Retrieval quality"; benchmarks/bench_quality.py).
DEFAULT_MODEL = "efficientnet-lite0-gem"
#: Fewest images `lookalike learn` learns from: below it the learned whitening is mostly its
#: shrinkage.
MIN_LEARN_PAIRS = 16


@dataclass(frozen=True)
class Setting:
    name: str
    default: Callable[[], Any]
    help: str
    parse: Callable[[str], Any] = str

    @property
    def env(self) -> str:
        return "LOOKALIKE_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("collection", lambda: str(_data_home() / "lookalike" / "default"),
            "Collection folder used when --collection is not given."),
    Setting("model", lambda: DEFAULT_MODEL, "Embedding model for new collections."),
    Setting("index", lambda: "auto",
            "Index spec for new collections: auto (Flat, then HNSW32 past 20,000 images), "
            "Flat, HNSW<M>[,SQ8][,efConstruction=<n>], IVF<nlist>,Flat, IVF<nlist>,PQ<m>, "
            "IVF<nlist>,PQ<m>x4fs,RFlat, ScaNN[,leaves=<n>], or a Milvus collection: "
            "milvus://host[:port]/[db/]name[?index=HNSW&M=32&efConstruction=64] or "
            "milvus-lite:[file.db/]name (embedded, inside the collection folder), or a Qdrant "
            "collection: qdrant://host[:port]/name[?m=32&ef_construct=128] or "
            "qdrant-edge:[dir/]name (embedded, inside the collection folder)."),
    Setting("milvus_token", lambda: None,
            "Credentials for a milvus:// index (user:password or an API key); never recorded."),
    Setting("qdrant_api_key", lambda: None,
            "API key for a qdrant:// index (the connection is then HTTPS unless the spec says "
            "https=false); never recorded."),
    Setting("store", lambda: "sqlite",
            "Metadata store for new collections: sqlite (lookalike.db in the collection folder) "
            "or postgresql://user[:password]@host[:port]/db[?schema=name]. The manifest records "
            "it without the password; for an existing collection, a URI naming the same server, "
            "database and user only lends its password (else PGPASSWORD or ~/.pgpass)."),
    Setting("ef_search", lambda: 64, "HNSW efSearch used by searches that do not pass --ef.", int),
    Setting("query_expansion", lambda: 2,
            "Searches re-rank with α query expansion: search again with the query plus its N "
            "best matches, each weighted by similarity^alpha (0: off).", int),
    Setting("query_expansion_alpha", lambda: 3.0,
            "The exponent alpha of query expansion (0: plain average).", float),
    Setting("learn_min_images", lambda: 1_000,
            "index and compact learn the collection's invariances by themselves (`lookalike "
            "learn`) once it holds this many images, and again each time it has doubled (0: "
            "never by themselves).", int),
    Setting("learn_pairs", lambda: 1_000,
            "Images `lookalike learn` edits a copy of to learn from (drawn at random).", int),
    Setting("batch_size", lambda: 32, "Images per model call while indexing.", int),
    Setting("workers", lambda: os.cpu_count() or 1,
            "Decoding worker processes while indexing (0 decodes in the main process).", int),
    Setting("threads", lambda: os.cpu_count() or 1, "Threads the model runtime may use.", int),
    Setting("engine", lambda: "local",
            "Where indexing decodes and embeds: local (this machine's processes), ray (a Ray "
            "cluster; needs the `ray` extra) or spark (a Spark cluster; needs the `spark` extra "
            "and Java)."),
    Setting("ray_address", lambda: None,
            "Ray cluster for --engine ray (ray://HEAD:10001, HEAD:6379 or auto); unset: start a "
            "local Ray for the run."),
    Setting("spark_master", lambda: None,
            "Spark master for --engine spark (spark://HOST:7077, yarn, k8s://..., local[N]); "
            "unset: start a local Spark for the run."),
    Setting("runtime", lambda: "auto",
            "Inference runtime: auto (CPU: OpenVINO for bf16, else ONNX Runtime; PyTorch on "
            "CUDA), openvino, onnxruntime, torch."),
    Setting("precision", lambda: "auto",
            "CPU inference precision: auto (bf16 where the CPU computes it natively and OpenVINO "
            "runs the model, else f32), f32, bf16."),
    Setting("device", lambda: "cpu", "cpu, or cuda for a GPU (PyTorch runtime)."),
    Setting("max_pixels", lambda: 178_956_970,
            "Largest image, in pixels, that will be decoded (decompression-bomb guard).", int),
    Setting("max_file_bytes", lambda: 256 * 1024 * 1024,
            "Largest image file read from disk, in bytes (only regular files are read).", int),
    Setting("decode_memory_bytes", lambda: 768 * 1024 * 1024,
            "serve: memory all decodes at once may take, shared by every worker process; an "
            "image that needs more is refused (422 too_many_pixels).", int),
    Setting("decode_wait", lambda: 10.0,
            "serve: seconds a decode waits for room in that budget before the request is "
            "answered 503 busy.", float),
    Setting("cache_dir", lambda: str(_cache_home() / "lookalike"),
            "Where exported model graphs are cached."),
    Setting("compact_min_delta", lambda: 5_000,
            "Compact automatically once the delta index holds this many vectors ...", int),
    Setting("compact_delta_fraction", lambda: 0.25,
            "... and this fraction of the main index's vectors.", float),
    Setting("compact_tombstone_fraction", lambda: 0.1,
            "Compact automatically once removed images are this fraction of the index.", float),
    Setting("api_key", lambda: None,
            "serve: every route but /healthz, /readyz, the web page and the API description "
            "(/docs, /redoc, /openapi.json) needs this key (header X-API-Key or "
            "Authorization: Bearer)."),
    Setting("write_key", lambda: None,
            "serve: uploads and deletes need this key (reads then accept either key)."),
    Setting("max_upload_bytes", lambda: 20 * 1024 * 1024,
            "serve: largest request body accepted, in bytes.", int),
    Setting("cors_origins", lambda: "",
            "serve: comma-separated origins allowed by CORS (empty: CORS off; * for any)."),
    Setting("head_timeout", lambda: 10.0,
            "serve: seconds a client has to send a request's line and headers, counted from its "
            "first byte (or from connecting); then the connection is closed.", float),
    Setting("body_timeout", lambda: 30.0,
            "serve: seconds to wait for each further piece of a request body; then 408 "
            "request_timeout and the connection is closed.", float),
    Setting("max_connections", lambda: 1000,
            "serve: most open connections per server process; past it a new one takes the "
            "place of the one waiting longest for its headers, or is answered 503 busy when "
            "none is. Kept under the open-file limit (`ulimit -n`), whose soft value is raised "
            "toward the hard one to fit.", int),
)
_BY_NAME = {s.name: s for s in SETTINGS}


def _config_file(environ: Mapping[str, str]) -> dict[str, Any]:
    path = Path(environ.get("LOOKALIKE_CONFIG") or _config_home() / "lookalike" / "config.toml")
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"Cannot read config file {path}: {exc}. Fix or remove it.") from exc
    unknown = sorted(set(data) - set(_BY_NAME))
    if unknown:
        raise UsageError(
            f"Unknown setting(s) {', '.join(unknown)} in {path}. "
            f"Known settings: {', '.join(_BY_NAME)}."
        )
    return data


def resolve(name: str, flag: Any = None, environ: Mapping[str, str] | None = None) -> Any:
    """Setting ``name``: the flag if given, else env, else config file, else the default."""
    setting = _BY_NAME[name]
    if flag is not None:
        return flag
    environ = os.environ if environ is None else environ
    raw = environ.get(setting.env)
    source = f"environment variable {setting.env}"
    if raw is None:
        raw = _config_file(environ).get(name)
        source = f"config file setting {name!r}"
        if raw is None:
            return setting.default()
        if not isinstance(raw, str):
            return raw
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise UsageError(f"Invalid value {raw!r} for {source}: {exc}.") from exc
