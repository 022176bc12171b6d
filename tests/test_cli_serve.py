"""`lookalike serve` as a real process: start, answer, stop on Ctrl-C; several workers share one
collection and every worker sees an upload as soon as it is acknowledged."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(collection: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lookalike", "serve", "-c", str(collection), "--port", str(port),
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise TimeoutError(process.communicate())


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
