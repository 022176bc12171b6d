"""Hostile clients against the real `lookalike serve` (issue 13), one section per attack.

The server runs as a subprocess (``python -m lookalike serve``) with its default settings over a
collection of the first N photos of ``photos-2000`` (benchmarks/photos.py), indexed with the
default model once and cached under ``benchmarks/out/hostile-N.lookalike`` (each run serves a
scratch copy). Sections, each a function printing its own table:

- ``memory``: 8 threads upload a 13,300 x 13,300 1-bit PNG each (37 KB, 177 MP) to
  ``POST /images`` at once: the server's peak RSS and how each upload was answered.
- ``fuzz``: tests/fuzzing's seeded mutants through the decoder: mutants a second, crashes.
- ``stall``: normal requests (``GET /search/similar/{id}?k=10``, a new connection each, from a
  few client threads back to back) quietly, then while 300 connections stall: a third connect
  and send nothing, a third stop inside their headers, a third stop inside a declared body. The
  stallers are re-opened as the server closes them, so 300 stall throughout. The server starts
  with a soft open-file limit of 256 (macOS's default; ``--open-files``), the case that broke.

    python benchmarks/bench_hostile.py                  # every section (about 3 min)
    python benchmarks/bench_hostile.py --only stall
"""

from __future__ import annotations

import argparse
import io
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from common import OUT, Meter, log, machine, percentile_ms, proc_sample, table
from photos import ensure_photos

TIMEOUT = 10.0  # seconds for one normal request: a refused or hung one counts as an error


@dataclass
class Context:
    """What every section gets: the options and a cached collection to copy."""

    args: argparse.Namespace
    collection: Path
    photos: int


# -- the server ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(ctx: Context, *args: str) -> Iterator[tuple[str, int]]:
    """`lookalike serve` over a scratch copy of the collection, with the soft open-file limit of
    ``--open-files``; yields its URL and pid once ready, stops it with SIGINT."""
    def limit() -> None:
        if ctx.args.open_files:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (ctx.args.open_files, hard))

    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as scratch:
        folder = Path(scratch) / "collection"
        shutil.copytree(ctx.collection, folder)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = Path(scratch) / "serve.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lookalike", "serve", "-c", str(folder), "--port",
                 str(port), "--no-auto-compact", *args],
                stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=limit)
        try:
            _wait_ready(url, proc, log_path)
            yield url, proc.pid
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n"
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server was not ready after 600 s")


# -- normal clients ------------------------------------------------------------------------------


@dataclass
class Tally:
    laps: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def normal_load(url: str, ids: list[int], clients: int, seconds: float) -> Tally:
    """``clients`` threads request look-alikes back to back, a new connection each time (as
    curl or a browser's first visit would), for ``seconds``."""
    tally, stop = Tally(), threading.Event()

    def client(first: int) -> None:
        n = first
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection per request
        with httpx.Client(base_url=url, timeout=TIMEOUT, limits=fresh) as http:
            while not stop.is_set():
                _request(http, f"/search/similar/{ids[n % len(ids)]}?k=10", tally)
                n += clients

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return tally


def _request(http: httpx.Client, path: str, tally: Tally) -> None:
    started = time.perf_counter()
    try:
        response = http.get(path)
    except httpx.HTTPError as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")
        return
    if response.status_code == 200:
        tally.laps.append(time.perf_counter() - started)
    else:
        tally.errors.append(f"HTTP {response.status_code}: {response.text[:200]}")


# -- stallers ------------------------------------------------------------------------------------

_STALL = {
    "silent": b"",
    "head": b"GET /stats HTTP/1.1\r\nHost: bench\r\nAccept: */",
    "body": (b"POST /search/visual HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\n"
             b"Content-Length: 1000000\r\n\r\n\xff\xd8\xff\xe0"),
}


class Stallers:
    """``count`` connections that stall (a third of each kind in ``_STALL``), each re-opened as
    soon as the server closes it, so that ``count`` stall throughout; counts the closes."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.closed = {kind: 0 for kind in _STALL}
        self.answers: dict[bytes, int] = {}  # status line of what the server said on closing
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Stallers:
        kinds = list(_STALL)
        for n in range(self.count):
            self._open(kinds[n % len(kinds)])
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def _open(self, kind: str) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        if _STALL[kind]:
            sock.sendall(_STALL[kind])
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, [kind, b""])

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock, state = key.fileobj, key.data
                try:
                    data = sock.recv(65536)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    data = b""
                if data:
                    state[1] += data
                    continue
                self._selector.unregister(sock)
                sock.close()  # type: ignore[union-attr]
                self.closed[state[0]] += 1
                status = state[1].split(b"\r\n", 1)[0] or b"(closed, no answer)"
                self.answers[status] = self.answers.get(status, 0) + 1
                if not self._stop.is_set():
                    self._open(state[0])


# -- sections ------------------------------------------------------------------------------------


def _ms(laps: list[float], q: float) -> str:
    return f"{percentile_ms(laps, q):.1f}" if laps else "-"


def stall_section(ctx: Context) -> None:
    args = ctx.args
    print(f"\n### Normal requests while {args.stalled} connections stall\n")
    ids = list(range(1, ctx.photos + 1))
    rows = []
    quiet_p99 = stalled_p99 = 0.0
    errors = 0
    with served(ctx) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        normal_load(url, ids, args.clients, 2.0)  # warm-up
        for phase in ("quiet", "stalled"):
            log(f"stall: {phase}, {args.seconds:.0f} s")
            with Meter() as meter:
                if phase == "quiet":
                    tally, closed, answers = normal_load(url, ids, args.clients,
                                                         args.seconds), {}, {}
                else:
                    with Stallers(port, args.stalled) as stallers:
                        time.sleep(1.0)  # all of them connected and stalled first
                        tally = normal_load(url, ids, args.clients, args.seconds)
                    closed, answers = stallers.closed, stallers.answers
            p99 = percentile_ms(tally.laps, 99) if tally.laps else float("inf")
            quiet_p99, stalled_p99 = (p99, stalled_p99) if phase == "quiet" else (quiet_p99, p99)
            errors += len(tally.errors) if phase == "stalled" else 0
            rows.append([phase, "0" if phase == "quiet" else str(args.stalled),
                         f"{len(tally.laps) + len(tally.errors):,}", str(len(tally.errors)),
                         _ms(tally.laps, 50), _ms(tally.laps, 99),
                         ", ".join(f"{k} {v}" for k, v in closed.items()) or "-",
                         ", ".join(f"{k.decode(errors='replace')} ×{v}"
                                   for k, v in sorted(answers.items())) or "-",
                         f"{meter.other_cores:.2f}"])
            for error in sorted(set(tally.errors))[:5]:
                log(f"stall: {phase}: {error}")
    print(f"`lookalike serve` (1 worker, default settings: head timeout 10 s, body timeout 30 s, "
          f"at most 1000 connections) over {ctx.photos} photos of photos-2000 indexed with the "
          f"default model; soft open-file limit {args.open_files or 'unchanged'} at start. "
          f"{args.clients} client threads request `GET /search/similar/{{id}}?k=10` back to back, "
          f"a new connection each, for {args.seconds:.0f} s; latencies are client-side. The "
          "stallers are re-opened as the server closes them.\n")
    print(table(["phase", "stalled connections", "requests", "errors", "p50 ms", "p99 ms",
                 "stallers closed by the server", "what they were told", "other load (cores)"],
                rows))
    within = stalled_p99 <= 2 * quiet_p99
    print(f"\n- Target: 0 errors while {args.stalled} stall: {errors} "
          f"({'met' if errors == 0 else '**NOT met**'}).")
    print(f"- Target: p99 within 2x of quiet: {stalled_p99:.1f} vs {quiet_p99:.1f} ms "
          f"({'met' if within else '**NOT met**'}).")


# -- memory: huge images decoded at once --------------------------------------------------------


def one_bit_png(side: int, offset: int) -> bytes:
    """A complete side x side 1-bit PNG of stripes (``offset`` makes each one different): tens
    of KB that decode to side² bytes."""
    row = bytes((0x0F if i % 2 else 0xF0) for i in range((side + 7) // 8))
    mark = offset.to_bytes(4, "big") + row[4:]
    raw = zlib.compress(b"\0" + mark + b"".join(b"\0" + row for _ in range(side - 1)), 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw)
            + chunk(b"IEND", b""))


def memory_section(ctx: Context) -> None:
    args = ctx.args
    side, count = args.side, args.uploads
    print(f"\n### {count} concurrent uploads of a {side:,} x {side:,} 1-bit PNG\n")
    pngs = [one_bit_png(side, n) for n in range(count)]
    answers: list[tuple[int, str, float]] = []
    with served(ctx) as (url, pid):
        httpx.post(f"{url}/search/visual", content=_small_jpeg(), timeout=60)  # warm
        before = proc_sample(pid)[0]
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.01):
                peak[0] = max(peak[0], proc_sample(pid)[0])

        def upload(data: bytes) -> None:
            started = time.perf_counter()
            try:
                response = httpx.post(f"{url}/images", files={"file": ("big.png", data)},
                                      timeout=120)
                code = response.json().get("error", {}).get("code", "") if (
                    response.status_code >= 400) else ""
                answers.append((response.status_code, code, time.perf_counter() - started))
            except httpx.HTTPError as exc:
                answers.append((0, type(exc).__name__, time.perf_counter() - started))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with Meter() as meter:
            started = time.perf_counter()
            uploads = [threading.Thread(target=upload, args=(data,)) for data in pngs]
            for thread in uploads:
                thread.start()
            for thread in uploads:
                thread.join()
            wall = time.perf_counter() - started
        stop.set()
        sampler.join()
        high_water = _high_water(pid)
    counts: dict[str, int] = {}
    for status, code, _ in answers:
        key = f"{status} {code}".strip()
        counts[key] = counts.get(key, 0) + 1
    print(f"`lookalike serve` (1 worker, default decode budget "
          f"{_setting('decode_memory_bytes') // 2**20} MiB, decode wait "
          f"{_setting('decode_wait'):g} s) over {ctx.photos} photos; {count} threads upload "
          f"one PNG each ({len(pngs[0]) / 1024:.0f} KB, {side * side / 1e6:.0f} MP) to "
          "`POST /images` at once. RSS sampled every 10 ms from /proc; the high-water mark is "
          "the kernel's (VmHWM, which includes start-up).\n")
    print(table(["uploads", "answers", "server RSS before", "peak RSS during", "VmHWM",
                 "slowest answer s", "wall s", "other load (cores)"],
                [[str(count), ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items())),
                  f"{before / 2**20:,.0f} MiB", f"{peak[0] / 2**20:,.0f} MiB",
                  f"{high_water / 2**20:,.0f} MiB",
                  f"{max(t for _, _, t in answers):.1f}", f"{wall:.1f}",
                  f"{meter.other_cores:.2f}"]]))
    bad = [s for s, _, _ in answers if s not in (200, 201, 422, 503)]
    print(f"\n- Target: peak server RSS <= 1.5 GB: {peak[0] / 2**30:.2f} GB "
          f"({'met' if peak[0] <= 1.5 * 2**30 else '**NOT met**'}).")
    print(f"- Target: every upload answered 200/201, 422 or 503, no other 5xx: "
          f"{'met' if not bad else f'**NOT met** ({bad})'}.")


def _small_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def _high_water(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def _setting(name: str) -> Any:
    from lookalike import settings

    return settings.resolve(name)


# -- fuzz: mutants of every format through the decoder ------------------------------------------


def fuzz_section(ctx: Context) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from fuzzing import fuzz

    seconds, seed = ctx.args.fuzz_seconds, ctx.args.fuzz_seed
    print(f"\n### Fuzzing the decoder for {seconds:.0f} s (seed {seed})\n")
    with Meter() as meter:
        result = fuzz(seconds, seed, shrink=False)
    print("tests/fuzzing: seeded mutants of small images in every format lookalike reads (and "
          "of their EXIF, ICC and XMP blocks), decoded in a child process capped at 1 GB and "
          "5 s a mutant, one core.\n")
    print(table(["seconds", "mutants", "per second", "decoded", "refused", "kinds of crash",
                 "other load (cores)"],
                [[f"{result.seconds:.0f}", f"{result.executions:,}", f"{result.per_second:,.0f}",
                  f"{result.decoded:,}", f"{result.refused:,}", str(len(result.crashers)),
                  f"{meter.other_cores:.2f}"]]))
    for crasher in result.crashers:
        print(f"- crash: {crasher.signature} ({result.hits[crasher.signature]} mutants; first "
              f"mutant {crasher.index} of {crasher.seed_name})")


#: name -> section
SECTIONS: dict[str, Callable[[Context], None]] = {
    "stall": stall_section, "memory": memory_section, "fuzz": fuzz_section}


# -- the collection ------------------------------------------------------------------------------


def cached_collection(count: int) -> Path:
    """The first ``count`` photos of photos-2000, indexed with the default model (cached)."""
    from lookalike.collection import Collection

    path = OUT / f"hostile-{count}.lookalike"
    if (path / "manifest.json").is_file():
        return path
    photos = ensure_photos(2000)[:count]
    log(f"hostile: indexing {count} photos into {path}")
    building = path.with_name(path.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    with Collection.create(building) as col:
        col.index(photos)
    building.rename(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default: all of "
                             f"{', '.join(SECTIONS)})")
    parser.add_argument("--photos", type=int, default=200,
                        help="photos in the collection (default 200)")
    parser.add_argument("--seconds", type=float, default=35.0,
                        help="measured seconds per phase (default 35: past the 30 s body "
                             "timeout, so every kind of staller is closed at least once)")
    parser.add_argument("--clients", type=int, default=2,
                        help="normal client threads (default 2)")
    parser.add_argument("--stalled", type=int, default=300,
                        help="stalled connections (default 300)")
    parser.add_argument("--side", type=int, default=13_300,
                        help="memory: side of the 1-bit PNGs (default 13,300: 177 MP)")
    parser.add_argument("--uploads", type=int, default=8,
                        help="memory: concurrent uploads (default 8)")
    parser.add_argument("--fuzz-seconds", type=float, default=60.0,
                        help="fuzz: seconds of fuzzing (default 60)")
    parser.add_argument("--fuzz-seed", type=int, default=2026, help="fuzz: the run's seed")
    parser.add_argument("--open-files", type=int, default=256,
                        help="the server's soft open-file limit at start (0: this shell's; "
                             "default 256, macOS's default)")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(SECTIONS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, cached_collection(args.photos), args.photos)
    print(f"## Hostile clients ({machine()})")
    for name in chosen:
        SECTIONS[name](ctx)


if __name__ == "__main__":
    main()
