"""`lookalike serve` as a real process: start, answer, stop on Ctrl-C; several workers share one
collection and every worker sees an upload as soon as it is acknowledged."""

from __future__ import annotations

import io
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

from conftest import free_port, wait_ready


def serve(collection: Path, *args: str, open_files: int | None = None,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """`lookalike serve` in a subprocess, with ``env`` added to its environment;
    ``open_files`` sets its soft open-file limit (the hard one stays), as a shell's
    `ulimit -Sn` would: 256 is macOS's default."""
    def limit() -> None:
        if open_files is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, hard))

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lookalike", "serve", "-c", str(collection), "--port", str(port),
         *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, alive=lambda: process.poll() is None)
    except (AssertionError, TimeoutError):
        process.kill()
        raise AssertionError(process.communicate()) from None
    return process, url


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return err


def test_serve_answers_and_stops_cleanly_on_ctrl_c(served_copy: Path, sample_dir: Path) -> None:
    process, url = serve(served_copy)
    try:
        photo = sorted(sample_dir.glob("*.jpg"))[5]
        response = httpx.post(f"{url}/search/visual", files={"file": photo.read_bytes()})
        assert response.json()["results"][0]["uri"] == str(photo)
        assert "lookalike" in httpx.get(f"{url}/").text
    finally:
        err = stop(process)
    assert "Serving" in err and "Traceback" not in err


def test_serve_with_two_workers_every_worker_sees_an_upload_at_once(served_copy: Path) -> None:
    process, url = serve(served_copy, "--workers", "2")
    try:
        pids = set()
        for n in range(6):
            buffer = io.BytesIO()
            Image.new("RGB", (80, 60 + n), (30 * n, 250 - 30 * n, 90)).save(buffer, "PNG")
            data = buffer.getvalue()
            # A new connection each time, so the kernel spreads requests over the workers.
            image_id = httpx.post(f"{url}/images", files={"file": data}).json()["image"]["image_id"]
            for _ in range(4):
                with httpx.Client() as client:
                    response = client.post(f"{url}/search/visual?k=1", content=data)
                    assert response.json()["results"][0]["image_id"] == image_id
                    pids.add(client.get(f"{url}/stats").json()["pid"])
        assert len(pids) == 2, "both workers should have answered"
    finally:
        stop(process)


def test_serve_refuses_a_missing_collection(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "lookalike", "serve", "-c",
                           str(tmp_path / "nothing")], capture_output=True, text=True,
                          timeout=60, env={**os.environ})
    assert done.returncode == 2
    assert "lookalike index" in done.stderr and "Traceback" not in done.stderr


def test_kill_9_during_uploads_and_deletes_loses_nothing_acknowledged(served_copy: Path) -> None:
    from lookalike.collection import Collection

    rng = random.Random(5)
    acknowledged: dict[int, bytes] = {}
    deleted: set[int] = set()
    for round_ in range(3):
        process, url = serve(served_copy, "--no-auto-compact")
        stop_at = time.monotonic() + rng.uniform(0.5, 2.0)
        with httpx.Client(base_url=url, timeout=30) as client:
            n = 0
            try:
                while time.monotonic() < stop_at or n < 3:
                    buffer = io.BytesIO()
                    # A colour of its own: solid images of one colour embed identically.
                    colour = (n % 256, (7 * round_ + 29 * (n // 256)) % 256, 99)
                    Image.new("RGB", (50 + n, 40 + round_), colour).save(buffer, "PNG")
                    response = client.post("/images", files={"file": buffer.getvalue()})
                    image_id = response.json()["image"]["image_id"]
                    acknowledged[image_id] = buffer.getvalue()
                    if n % 3 == 2:
                        client.delete(f"/images/{image_id}").raise_for_status()
                        deleted.add(image_id)
                    n += 1
                    if time.monotonic() >= stop_at and n >= 3:
                        # kill while the next upload is in flight
                        threading.Thread(target=upload_unacknowledged,
                                         args=(url, jpeg_noise(n))).start()
                        time.sleep(rng.uniform(0.0, 0.05))
                        break
            finally:
                process.send_signal(signal.SIGKILL)
                process.communicate()
        with Collection.open(served_copy) as col:
            assert col.verify().ok, col.verify().problems
            for image_id, data in acknowledged.items():
                if image_id in deleted:
                    assert not any(h.image_id == image_id for h in col.search(data, k=30))
                else:
                    assert col.search(data, k=1)[0].image_id == image_id
                    with col.open_file(image_id).file as fh:
                        assert fh.read() == data


def upload_unacknowledged(url: str, data: bytes) -> None:
    try:
        httpx.post(f"{url}/images", files={"file": data}, timeout=30)
    except httpx.TransportError:
        pass  # the server was killed before answering: never acknowledged


def jpeg_noise(seed: int) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    noise = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG")
    return buffer.getvalue()
