"""Hostile images never stop the pipeline or the server (issue 13): a seeded fuzzer's mutants of
small images in every format lookalike reads, and of their EXIF, ICC and XMP blocks, go through
decoding, `index`, `search` and both upload routes.

No exception but a DecodeError leaves decoding, no file takes more than a gigabyte or five
seconds to refuse, no request answers 5xx, and every valid image is still indexed. Every crasher
ever found is kept in ``tests/data/hostile/`` and replayed on every run.

``LOOKALIKE_FUZZ_SECONDS`` is how long the fast loop decodes mutants (45 s by default: about a
minute in all with the end-to-end run); ``LOOKALIKE_TEST_SEED`` picks the mutants. A failure
prints the seed and the mutant's number: ``python -m fuzzing SECONDS SEED --start N`` in
``tests/`` makes the same mutants again.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import TINY
from fuzzing import Crasher, FuzzResult, Verdict, check, fuzz, mutant, seeds
from fuzzing.loop import MAX_PIXELS, PREPROCESS
from fuzzing.seeds import HEIF_AVAILABLE
from lookalike import Collection
from lookalike.cli import main
from lookalike.errors import DecodeError
from lookalike.imaging import IMAGE_EXTENSIONS, decode_bytes

SEED = int(os.environ.get("LOOKALIKE_TEST_SEED", "2026"))
FUZZ_SECONDS = float(os.environ.get("LOOKALIKE_FUZZ_SECONDS", "45"))
HOSTILE = Path(__file__).parent / "data" / "hostile"
CORPUS = sorted(p for p in HOSTILE.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
E2E_MUTANTS_PER_SEED = 3


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Pillow's IM format (a sniffed seed)
def test_every_format_lookalike_reads_has_a_seed_and_every_seed_decodes() -> None:
    writable = IMAGE_EXTENSIONS - (set() if HEIF_AVAILABLE else {".heic", ".heif"})
    assert writable <= {seed.suffix for seed in seeds() if not seed.sniffed}
    for seed in seeds():
        if seed.sniffed:  # formats lookalike does not list: they may be refused
            continue
        decoded = decode_bytes(seed.data, PREPROCESS, MAX_PIXELS)
        assert decoded.pixels is not None and decoded.pixels.shape == (32, 32, 3), seed.name


def test_a_mutant_is_the_same_bytes_for_the_same_seed_and_number() -> None:
    again = [mutant(SEED, n).data for n in range(60)]
    assert [mutant(SEED, n).data for n in range(60)] == again
    assert [mutant(SEED + 1, n).data for n in range(60)] != again
    assert {mutant(SEED, n).seed.name for n in range(60)} == {seed.name for seed in seeds()}


def test_every_kept_crasher_is_refused_or_decoded_never_a_crash() -> None:
    assert CORPUS, f"no regression files in {HOSTILE}"
    verdicts = check([p.read_bytes() for p in CORPUS])
    crashes = {p.name: v.detail for p, v in zip(CORPUS, verdicts, strict=True)
               if v.kind == "crash"}
    assert not crashes, "kept crashers crash again:\n" + "\n".join(
        f"  {name}: {detail}" for name, detail in crashes.items())


def test_mutants_of_every_format_never_crash_the_decoder(tmp_path: Path) -> None:
    result = fuzz(FUZZ_SECONDS, SEED)
    print(f"\nfuzz: {result.executions} mutants in {result.seconds:.1f} s "
          f"({result.per_second:.0f}/s), {result.decoded} decoded, {result.refused} refused, "
          f"{len(result.crashers)} kinds of crash (LOOKALIKE_TEST_SEED={SEED})")
    if result.crashers:
        pytest.fail(_explain(result, tmp_path), pytrace=False)
    assert result.executions >= 2 * len(seeds()) and result.decoded and result.refused


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")  # Pillow's
def test_mutants_go_through_index_search_and_both_upload_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fast loop's pixel limit everywhere (CLI and server included): a mutant may claim
    # megapixels, and this test is about hostile bytes, not about big images.
    monkeypatch.setenv("LOOKALIKE_MAX_PIXELS", str(MAX_PIXELS))
    files, verdicts = _mixed_folder(tmp_path / "photos")
    decodable = {name for name, v in verdicts.items() if v.kind == "decoded"}
    assert {f"valid-{s.name}{s.suffix}" for s in seeds() if not s.sniffed} <= decodable
    assert decodable != set(files), "no mutant was refused: the mutator is not mutating"
    folder = tmp_path / "photos"

    # index and search, the library
    with Collection.create(tmp_path / "lib.lookalike", model=TINY) as col:
        report = col.index([folder], workers=0, show_progress=False)
        failed = {Path(f.uri).name: f.reason for f in report.failed}
        assert {n for n in files if col.find(folder / n) is not None} == decodable
        assert set(failed) == set(files) - decodable and all(failed.values())
        for name, data in files.items():
            try:
                hits = col.search(data, k=3)
            except DecodeError:
                assert name not in decodable, f"{name} was indexed, yet search refuses it"
            else:
                assert name in decodable and hits, name

    # index and search, the CLI (decoding in a worker process, as `lookalike index` does)
    cli_col = str(tmp_path / "cli.lookalike")
    assert _cli("index", str(folder), "-c", cli_col, "-m", TINY, "--workers", "1",
                "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert {Path(f["uri"]).name for f in printed["failed"]} == set(failed)
    queries = tmp_path / "queries"
    queries.mkdir()
    for name in sorted(set(files) - decodable)[:4] + sorted(decodable)[:4]:
        (queries / name).write_bytes(files[name])
        code = _cli("search", str(queries / name), "-c", cli_col, "-k", "3")
        assert code == (0 if name in decodable else 1), name
        assert "Error:" in capsys.readouterr().err or name in decodable

    # both upload routes, through the ASGI application
    from lookalike.server import ServeConfig, create_app

    app = create_app(ServeConfig(collection=str(tmp_path / "lib.lookalike"),
                                 background_load=False, auto_compact=False))
    answers, images = asyncio.run(_upload_all(app, files))
    for name, status, body in answers:
        assert status < 500, (name, status, body)
        if name in decodable:
            assert status in (200, 201), (name, status, body)
        else:
            _assert_error_shape(status, body, name)
    created = sum(1 for _, status, _ in answers if status == 201)
    assert images == len(decodable) + created
    print(f"\nend to end: {len(files)} files, {len(decodable)} decodable, "
          f"{len(failed)} failed rows, {created} uploads stored, no 5xx")


# -- helpers -----------------------------------------------------------------------------------


def _mixed_folder(folder: Path) -> tuple[dict[str, bytes], dict[str, Verdict]]:
    """Every seed, a hundred mutants and every kept crasher, written to ``folder``;
    with what the isolated decoder did with each. Files it could not refuse within its limits
    are left out: the fast tests report them, and here they would only take the memory."""
    files = {f"{'sniffed' if seed.sniffed else 'valid'}-{seed.name}{seed.suffix}": seed.data
             for seed in seeds()}
    seen = set(files.values())
    for index in range(E2E_MUTANTS_PER_SEED * len(seeds())):
        m = mutant(SEED + 1, index)
        if m.data not in seen:
            seen.add(m.data)
            files[f"mutant-{index:03d}-{m.seed.name}{m.seed.suffix}"] = m.data
    for path in CORPUS:
        files[f"kept-{path.name}"] = path.read_bytes()
    verdicts = dict(zip(files, check(list(files.values())), strict=True))
    files = {name: data for name, data in files.items() if verdicts[name].kind != "crash"}
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files, verdicts


def _cli(*args: str) -> int:
    """`lookalike ARGS` in this process (the test model is registered only here): its exit
    status. Any exception but SystemExit escapes, and fails the test."""
    try:
        main(list(args))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


async def _upload_all(app: Any, files: dict[str, bytes]) -> tuple[list[tuple[str, int, Any]], int]:
    """Each file to POST /search/visual (raw body) and POST /images (multipart): (name, status,
    JSON body) for every answer, and the image count /stats gives at the end."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    answers = []
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://lookalike.test", timeout=60) as client:
        for name, data in files.items():
            for response in (
                await client.post("/search/visual", content=data,
                                  headers={"Content-Type": "application/octet-stream"}),
                await client.post("/images", files={"file": (name, data)}),
            ):
                body = (response.json() if response.headers.get("content-type")
                        == "application/json" else response.text)
                answers.append((name, response.status_code, body))
        images = (await client.get("/stats")).json()["images"]
    return answers, images


def _assert_error_shape(status: int, body: Any, name: str) -> None:
    assert 400 <= status < 500, (name, status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, (name, body)
    assert set(body["error"]) == {"code", "message"}, (name, body)
    assert body["error"]["code"] and body["error"]["message"], (name, body)


def _explain(result: FuzzResult, folder: Path) -> str:
    lines = [f"{len(result.crashers)} kinds of crash in {result.executions} mutants "
             f"(LOOKALIKE_TEST_SEED={result.run_seed}); each file is in {folder}: copy it to "
             f"{HOSTILE} to keep it as a regression test."]
    for crasher in result.crashers:
        path = folder / _file_name(crasher)
        path.write_bytes(crasher.data)
        lines.append(f"- {crasher.signature} ({result.hits[crasher.signature]} mutants), first: "
                     f"mutant {crasher.index} of {crasher.seed_name} {crasher.edits} -> {path}"
                     f"\n  {crasher.error[:300]}")
    return "\n".join(lines)


def _file_name(crasher: Crasher) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in crasher.signature.lower())[:60]
    return f"{slug}-{crasher.seed_name}-{crasher.index}{crasher.suffix}"
