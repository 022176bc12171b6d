"""The HTTP server under load: `lookalike serve` over 100,000 vectors and concurrent clients.

The collection is bench_query.py's (cached under benchmarks/out/query-100000: the real
embeddings of its 50 query photos and synthetic unit vectors for the rest, HNSW32), copied to a
scratch folder so this run's uploads never reach the cache. The real server runs as a
subprocess (``python -m lookalike serve -c DIR --port P``, with and without ``--no-batching``).

1. Search load: N client threads (one ``httpx.Client`` each) post the >= 1 MP query photos
   (multipart field ``file``) to ``/search/visual?k=10`` back to back for a fixed time after a
   warm-up; client-side latency, throughput, errors, the model's mean batch (from ``/stats``)
   and the server's own ``took_ms`` stages.
2. Add to searchable: one client uploads fresh photos (seeded crops of the query photos, none
   seen before) to ``POST /images`` and, as soon as each returns, searches with the same bytes
   (k=1): the top hit must be the new image. Then 4 uploaders do the same while 4 clients search.

    python benchmarks/bench_serve.py             # 2.5 min once the collection is cached
    python benchmarks/bench_serve.py --quick     # smoke test: 5 s per load, fewer uploads
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

import bench_query
from common import OUT, Meter, log, machine, percentile_ms, proc_sample, run_child, table
from photos import ensure_photos, make_photo

QUERIES = 50  # bench_query.py's default, so its cached collection is the one reused
UPLOAD_SEED = 4321
TIMEOUT = 60.0  # seconds for one request: a hung server shows up as errors, not as a hang here
STAGES = ("read", "decode", "embed", "search", "total")
TARGET_P99_MS = 150.0


# -- the server ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``lookalike serve`` in a subprocess: ready on entry, stopped (SIGINT first) on exit."""

    def __init__(self, folder: Path, log_path: Path, *, batching: bool) -> None:
        self.folder, self.log_path, self.batching = folder, log_path, batching
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.load_seconds = 0.0
        self.stop_seconds = 0.0
        self.exit_code: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        command = [sys.executable, "-m", "lookalike", "serve", "-c", str(self.folder),
                   "--host", "127.0.0.1", "--port", str(self.port)]
        if not self.batching:
            command.append("--no-batching")
        started = time.monotonic()
        with open(self.log_path, "wb") as log_file:
            self._proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(started)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, started: float, timeout: float = 600.0) -> None:
        assert self._proc is not None
        while time.monotonic() - started < timeout:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self._proc.returncode}) before it was "
                                   f"ready:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5.0).status_code == 200:
                    self.load_seconds = time.monotonic() - started
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.2)
        raise RuntimeError(f"the server was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def __exit__(self, *_: object) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:  # never started, or died on its own
            self.exit_code = proc.returncode if proc is not None else None
            return
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: lifespan, saves the delta
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log(f"serve: the server did not stop within 60 s of SIGINT; terminating\n"
                f"{self.log_tail()}")
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.stop_seconds = time.monotonic() - started
        self.exit_code = proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (all its threads)."""
        return proc_sample(self._proc.pid)[1] if self._proc is not None else 0.0

    def stats(self) -> dict[str, Any]:
        try:
            response = httpx.get(f"{self.url}/stats", timeout=TIMEOUT)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            died = self._proc is not None and self._proc.poll() is not None
            state = f"died (exit {self._proc.returncode})" if died and self._proc else "is up"
            raise RuntimeError(f"GET /stats failed ({exc}); the server {state}; its log:\n"
                               f"{self.log_tail()}") from exc
        return response.json()


# -- clients -------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What some clients saw: latencies of the good answers, and every failure."""

    laps: list[float] = field(default_factory=list)
    took: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    self_hits: int = 0
    missed: int = 0  # uploads not the top hit of a search with their own bytes

    @classmethod
    def total(cls, tallies: list[Tally]) -> Tally:
        return cls([x for t in tallies for x in t.laps], [x for t in tallies for x in t.took],
                   [x for t in tallies for x in t.errors], sum(t.self_hits for t in tallies),
                   sum(t.missed for t in tallies))


def _jpeg(data: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"file": ("photo.jpg", data, "image/jpeg")}


def _search(client: httpx.Client, data: bytes, k: int, tally: Tally) -> dict[str, Any] | None:
    started = time.perf_counter()
    try:
        response = client.post("/search/visual", params={"k": k}, files=_jpeg(data))
    except httpx.HTTPError as exc:
        tally.errors.append(f"search: {type(exc).__name__}: {exc}")
        return None
    lap = time.perf_counter() - started
    if response.status_code != 200:
        tally.errors.append(f"search: HTTP {response.status_code}: {response.text[:300]}")
        return None
    body = response.json()
    if len(body["results"]) != k:
        tally.errors.append(f"search: {len(body['results'])} results for k={k}")
        return None
    tally.laps.append(lap)
    tally.took.append(body["took_ms"])
    return body


def _searcher(url: str, photos: list[tuple[str, bytes]], first: int, k: int,
              stop: threading.Event, tally: Tally) -> None:
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        i = first
        while not stop.is_set():
            uri, data = photos[i % len(photos)]
            i += 1
            body = _search(client, data, k, tally)
            if body is not None:
                tally.self_hits += body["results"][0]["uri"] == uri


def _run_threads(targets: list[tuple[Any, tuple[Any, ...]]]) -> float:
    threads = [threading.Thread(target=fn, args=args, daemon=True) for fn, args in targets]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def _search_load(url: str, photos: list[tuple[str, bytes]], clients: int, seconds: float,
                 k: int) -> tuple[Tally, float]:
    """``clients`` threads search back to back for ``seconds``; the tally and the wall time."""
    stop, tallies = threading.Event(), [Tally() for _ in range(clients)]
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:  # each client starts at another photo, so concurrent queries differ
        wall = _run_threads([(_searcher, (url, photos, i * len(photos) // clients, k, stop, t))
                             for i, t in enumerate(tallies)])
    finally:
        timer.cancel()
        stop.set()
    return Tally.total(tallies), wall


def _images_embedded(stats: dict[str, Any]) -> tuple[int, float]:
    batching = stats["batching"]
    return (batching["model_calls"], batching["images"]) if batching["model_calls"] else (0, 0.0)


def measure_load(server: Server, photos: list[tuple[str, bytes]], clients: int,
                 seconds: float, warmup: float, k: int) -> dict[str, Any]:
    log(f"serve: {clients} client(s), batching {'on' if server.batching else 'off'}: "
        f"{warmup:.0f} s warm-up, {seconds:.0f} s measured")
    _search_load(server.url, photos, clients, warmup, k)
    calls0, images0 = _images_embedded(server.stats())
    server0, client0 = server.cpu_seconds(), _own_cpu_seconds()
    with Meter() as meter:
        tally, wall = _search_load(server.url, photos, clients, seconds, k)
    server_cpu, client_cpu = server.cpu_seconds() - server0, _own_cpu_seconds() - client0
    calls1, images1 = _images_embedded(server.stats())
    calls = calls1 - calls0
    return {"tally": tally, "wall": wall, "other_cores": meter.other_cores,
            "mean_batch": (images1 - images0) / calls if calls else None,
            "server_cpu_ms": 1000 * server_cpu / max(1, len(tally.laps)),
            "client_cores": client_cpu / wall}


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _uploader(url: str, uploads: list[bytes], k_check: int, tally: Tally,
              ids: list[int]) -> None:
    """Upload each photo, then search with its bytes at once: it must be the top hit."""
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        for i, data in enumerate(uploads):
            started = time.perf_counter()
            try:
                response = client.post("/images", files=_jpeg(data),
                                       data={"metadata": json.dumps({"bench": i})})
            except httpx.HTTPError as exc:
                tally.errors.append(f"upload: {type(exc).__name__}: {exc}")
                continue
            lap = time.perf_counter() - started
            if response.status_code != 201 or not response.json().get("created"):
                tally.errors.append(f"upload: HTTP {response.status_code}: "
                                    f"{response.text[:300]}")
                continue
            tally.laps.append(lap)
            image_id = response.json()["image"]["image_id"]
            ids.append(image_id)
            check = Tally()
            body = _search(client, data, k_check, check)
            tally.errors += check.errors
            if body is not None and body["results"][0]["image_id"] != image_id:
                tally.missed += 1


def add_to_searchable(server: Server, uploads: list[bytes]) -> dict[str, Any]:
    log(f"serve: {len(uploads)} uploads, each searched for as soon as it returns")
    tally, ids = Tally(), []
    with Meter() as meter:
        _uploader(server.url, uploads, 1, tally, ids)
    return {"tally": tally, "ids": ids, "other_cores": meter.other_cores,
            "count": len(uploads)}


def concurrent_writes(server: Server, uploads: list[bytes], photos: list[tuple[str, bytes]],
                      writers: int, searchers: int, k: int) -> dict[str, Any]:
    log(f"serve: {len(uploads)} uploads from {writers} threads while {searchers} clients search")
    stop, ids = threading.Event(), []
    writes, reads = [Tally() for _ in range(writers)], [Tally() for _ in range(searchers)]

    def upload_then_stop() -> None:
        try:
            _run_threads([(_uploader, (server.url, uploads[i::writers], 1, t, ids))
                          for i, t in enumerate(writes)])
        finally:
            stop.set()  # the searchers run as long as the uploads do

    searching = [(_searcher, (server.url, photos, i * 7, k, stop, t)) for i, t in enumerate(reads)]
    with Meter() as meter:
        _run_threads([(upload_then_stop, ()), *searching])
    return {"writes": Tally.total(writes), "reads": Tally.total(reads),
            "ids": ids, "other_cores": meter.other_cores, "count": len(uploads)}


# -- inputs --------------------------------------------------------------------------------------


def _fresh_photo(source: Path, index: int) -> bytes:
    """A seeded crop/flip/jitter of a query photo, >= 1 MP: bytes the collection has never seen."""
    with Image.open(source) as im:
        image, quality, subsampling = make_photo(im.convert("RGB"),
                                                 np.random.default_rng([UPLOAD_SEED, index]))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue()


def fresh_photos(queries: list[str], count: int) -> list[bytes]:
    with ThreadPoolExecutor() as pool:
        return list(pool.map(lambda i: _fresh_photo(Path(queries[i % len(queries)]), i),
                             range(count)))


# -- report --------------------------------------------------------------------------------------


def _ms(seconds: list[float], q: float) -> str:
    return f"{percentile_ms(seconds, q):.0f}" if seconds else "-"


def _load_row(size_label: str, batching: bool, clients: int, result: dict[str, Any]) -> list[str]:
    tally, wall = result["tally"], result["wall"]
    took = {s: float(np.median([t.get(s, 0.0) for t in tally.took])) if tally.took else 0.0
            for s in STAGES}
    batch = result["mean_batch"]
    return [size_label, "on" if batching else "**off**", str(clients), f"{len(tally.laps):,}",
            f"{len(tally.laps) / wall:.1f}", _ms(tally.laps, 50), _ms(tally.laps, 95),
            _ms(tally.laps, 99), str(len(tally.errors)),
            f"{batch:.2f}" if batch is not None else "1 (off)",
            *(f"{took[s]:.1f}" for s in STAGES), f"{result['server_cpu_ms']:.1f}",
            f"{result['client_cores']:.2f}", f"{result['other_cores']:.2f}"]


def _verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def _rate(result: dict[str, Any]) -> float:
    return len(result["tally"].laps) / result["wall"]


def print_load(size_label: str, args: argparse.Namespace, loads: dict[tuple[bool, int], Any],
               servers: list[Server]) -> None:
    print(f"`lookalike serve` (1 worker) over {size_label} vectors, on this machine with the "
          f"clients; each client a thread with its own `httpx.Client` posting a >= 1 MP query "
          f"photo (multipart) to `/search/visual?k={args.k}` back to back, "
          f"{args.seconds:.0f} s after {args.warmup:.0f} s of warm-up. Latencies are "
          "client-side; stage columns are the medians of the server's `took_ms` (embed includes "
          "the wait for the model); mean batch = images per model call, from `/stats`. The clients "
          f"share the machine's {os.cpu_count()} cores with the server: their CPU has its own "
          "column.\n")
    rows = [_load_row(size_label, batching, clients, result)
            for (batching, clients), result in loads.items()]
    print(table(["vectors (index)", "batching", "clients", "requests", "req/s", "p50 ms",
                 "p95 ms", "p99 ms", "errors", "mean batch",
                 *(f"server {s} p50 ms" for s in STAGES), "server CPU ms/req",
                 "clients' CPU (cores)", "other load (cores)"], rows))
    errors = sum(len(r["tally"].errors) for r in loads.values())
    notes = [f"\n- Target: 0 errors: {errors} ({_verdict(errors == 0)})."]
    n4, n16 = loads.get((True, 4)), loads.get((True, 16))
    if n4:
        p99 = percentile_ms(n4["tally"].laps, 99)
        notes.append(f"- Target: p99 < {TARGET_P99_MS:.0f} ms at 4 clients: {p99:.0f} ms "
                     f"({_verdict(p99 < TARGET_P99_MS)}).")
    if n4 and n16:
        notes.append(f"- Target: throughput at 16 clients >= at 4: {_rate(n16):.1f} vs "
                     f"{_rate(n4):.1f} req/s ({_verdict(_rate(n16) >= _rate(n4))}).")
    for (batching, clients), off in loads.items():
        on = loads.get((True, clients))
        if not batching and on and on["tally"].laps and off["tally"].laps:
            notes.append(f"- Batching at {clients} clients: {_rate(on) / _rate(off):.2f}x the "
                         f"throughput, p99 {percentile_ms(on['tally'].laps, 99):.0f} vs "
                         f"{percentile_ms(off['tally'].laps, 99):.0f} ms without.")
    searches = sum(len(r["tally"].laps) for r in loads.values())
    self_hits = sum(r["tally"].self_hits for r in loads.values())
    notes.append(f"- {self_hits:,}/{searches:,} searches returned the query photo itself first.")
    notes += [f"- Server with batching {'on' if server.batching else 'off'}: ready "
              f"{server.load_seconds:.1f} s after start (process start, model and index), "
              f"stopped {server.stop_seconds:.1f} s after SIGINT (exit {server.exit_code})."
              for server in servers]
    print("\n".join(notes))


def print_uploads(single: dict[str, Any], parallel: dict[str, Any], k: int,
                  stats: dict[str, Any]) -> None:
    print("\n### Add to searchable\n")
    print("Each upload is a photo the collection has never seen (a seeded crop of a query "
          "photo, >= 1 MP, multipart with a `metadata` field); as soon as `POST /images` "
          "returns, the client searches with the same bytes (k=1) and the top hit must be "
          "the new image.\n")
    alone, writes, reads = single["tally"], parallel["writes"], parallel["reads"]
    rows = [["1 uploader, alone", f"{len(alone.laps)}/{single['count']}", _ms(alone.laps, 50),
             _ms(alone.laps, 99), str(alone.missed), str(len(alone.errors)), "", "", "", "",
             f"{single['other_cores']:.2f}"],
            [f"4 uploaders + 4 searching clients (k={k})",
             f"{len(writes.laps)}/{parallel['count']}", _ms(writes.laps, 50),
             _ms(writes.laps, 99), str(writes.missed), str(len(writes.errors)),
             f"{len(reads.laps):,}", _ms(reads.laps, 50), _ms(reads.laps, 99),
             str(len(reads.errors)), f"{parallel['other_cores']:.2f}"]]
    print(table(["load", "uploads", "upload p50 ms", "upload p99 ms", "not the top hit at once",
                 "upload errors", "searches", "search p50 ms", "search p99 ms", "search errors",
                 "other load (cores)"], rows))
    missed = alone.missed + writes.missed
    errors = len(alone.errors) + len(writes.errors) + len(reads.errors)
    found = ("0 (every upload was the top hit of the very next search)" if not missed
             else f"**{missed} uploads were not found at once**")
    print(f"\n- Time from `POST /images` returning to searchable: {found}; errors {errors} "
          f"({_verdict(missed == 0 and errors == 0)}); "
          f"{len(set(single['ids'] + parallel['ids']))} distinct image ids.")
    index = stats["index"]
    print(f"- After the run the server counted {stats['images']:,} images (index: "
          f"{index['main_vectors']:,} main + {index['delta_vectors']:,} delta vectors); its own "
          "latencies: " + "; ".join(
              f"`{route}` {r['requests']:,} requests, {r['errors']} errors, p50 "
              f"{r['p50_ms']:.0f} / p99 {r['p99_ms']:.0f} ms"
              for route, r in stats["requests"].items() if route.startswith("POST")) + ".")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000,
                        help="vectors in the collection (bench_query.py's cache; default 100000)")
    parser.add_argument("--clients", default="1,4,16",
                        help="concurrent clients with batching on (default 1,4,16)")
    parser.add_argument("--no-batching-clients", default="4,16",
                        help="concurrent clients with --no-batching (default 4,16; '' to skip)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="measured seconds per load (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="warm-up seconds before each (default 3)")
    parser.add_argument("--uploads", type=int, default=50,
                        help="uploads searched for one at a time (default 50)")
    parser.add_argument("--concurrent-uploads", type=int, default=100,
                        help="uploads from 4 threads while 4 clients search (default 100)")
    parser.add_argument("-k", type=int, default=10, help="results per search (default 10)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 5 s loads, 1 s warm-up, 10 + 20 uploads")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.uploads, args.concurrent_uploads = 5.0, 1.0, 10, 20
    plan = ((False, [int(n) for n in args.no_batching_clients.split(",") if n]),
            (True, [int(n) for n in args.clients.split(",") if n]))

    OUT.mkdir(parents=True, exist_ok=True)
    queries = [str(p) for p in ensure_photos(2000)[:QUERIES]]
    log(f"serve: the collection of {args.size:,} vectors (bench_query.py's, cached)")
    built = run_child(bench_query.__file__, {"kind": "build", "size": args.size,
                                             "queries": queries}, timeout=7200)
    photos = [(q, Path(q).read_bytes()) for q in queries]
    log(f"serve: making {args.uploads + args.concurrent_uploads} fresh photos to upload")
    uploads = fresh_photos(queries, args.uploads + args.concurrent_uploads)

    loads: dict[tuple[bool, int], dict[str, Any]] = {}
    servers, problems = [], []
    with tempfile.TemporaryDirectory(dir=OUT, prefix="serve-") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "collection"
        started = time.monotonic()
        shutil.copytree(bench_query.collection_dir(args.size), folder)
        log(f"serve: copied the collection in {time.monotonic() - started:.0f} s")
        # Searches do not change the collection, so both servers share the copy; the one
        # without batching goes first, before any upload.
        for batching, counts in plan:
            if not counts and not batching:
                continue
            name = "on" if batching else "off"
            log(f"serve: starting the server, batching {name}")
            server = Server(folder, tmp / f"server-{name}.log", batching=batching)
            servers.append(server)
            with server:
                for clients in counts:
                    loads[batching, clients] = measure_load(server, photos, clients,
                                                            args.seconds, args.warmup, args.k)
                if batching:
                    single = add_to_searchable(server, uploads[:args.uploads])
                    parallel = concurrent_writes(server, uploads[args.uploads:], photos, 4, 4,
                                                 args.k)
                    final_stats = server.stats()
            text = server.log_path.read_text(errors="replace")
            if "Traceback" in text or "ERROR" in text or server.exit_code != 0:
                problems.append(f"server (batching {name}) exit {server.exit_code}, log:\n"
                                f"{server.log_tail(60)}")

    print(f"## HTTP server under load ({machine()})\n")
    print_load(f"{args.size:,} ({built['index_kind']})", args, loads, servers)
    print_uploads(single, parallel, args.k, final_stats)
    errors = [e for r in loads.values() for e in r["tally"].errors]
    errors += single["tally"].errors + parallel["writes"].errors + parallel["reads"].errors
    if errors or problems:
        print("\n### Problems\n")
        print("\n".join(f"- {message}" for message in sorted(set(errors))[:20]))
        print("".join(f"\n```\n{problem}\n```\n" for problem in problems))


if __name__ == "__main__":
    main()
