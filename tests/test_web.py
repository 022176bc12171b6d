"""The web page in real headless Chromium against a real server: search by upload, paste and
drop, click through to look-alikes, errors, adding to the collection, the keyboard, API keys."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "benchmarks" / "out" / "web-page.png"

# CI installs Chromium (make test does, with apt-get): there a missing browser is a failure.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason=f"the web page tests need Chromium at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page (own storage); fails the test on any uncaught script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(15_000)
    yield page
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


def edited_copy(edited: list[tuple[str, Path, Path]], photo: str, edit: str) -> tuple[Path, Path]:
    """(original, edited copy) of one sample photo."""
    return next((o, c) for e, o, c in edited if e == edit and o.stem == photo)


def open_page(page: Page, url: str) -> int:
    """Load the page; returns the image count it shows in its header."""
    page.goto(url)
    page.wait_for_function("document.getElementById('image-count').dataset.count !== ''")
    return int(page.get_attribute("#image-count", "data-count") or "")


def searched(page: Page, action: Callable[[], Any], route: str) -> Any:
    """Run ``action``, wait for the search request it makes and for the page to show it;
    returns the response's JSON."""
    with page.expect_response(lambda r: route in r.url and r.request.method != "OPTIONS") as info:
        action()
    page.wait_for_selector("#results[aria-busy=false]", state="attached")
    return info.value.json()


def result_ids(page: Page) -> list[int]:
    return [int(i) for i in page.eval_on_selector_all(
        "#results .result", "nodes => nodes.map(n => n.dataset.imageId)")]


def wait_for_thumbnails(page: Page) -> None:
    """Scroll through the grid so lazy thumbnails load, then wait until every one has."""
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function(
        "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth)")
    page.evaluate("window.scrollTo(0, 0)")


def paste(page: Page, path: Path) -> None:
    """A synthetic paste of an image file, as the browser makes for Ctrl+V of a copied image."""
    page.evaluate("""({b64, name}) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], name, {type: "image/jpeg"}));
        document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data, bubbles: true}));
    }""", {"b64": base64.b64encode(path.read_bytes()).decode(), "name": "image.png"})


def drop(page: Page, path: Path) -> None:
    page.evaluate("""({b64, name}) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], name, {type: "image/jpeg"}));
        const zone = document.getElementById("dropzone");
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true,
                                                    cancelable: true}));
        }
    }""", {"b64": base64.b64encode(path.read_bytes()).decode(), "name": path.name})


def test_search_by_upload_then_by_clicking_results(
    page: Page, live_server: Any, edited: list[tuple[str, Path, Path]], sample_dir: Path,
    tmp_path: Path,
) -> None:
    count = open_page(page, live_server.url)
    assert count == len(list(sample_dir.glob("*.jpg")))
    assert page.inner_text("#image-count") == f"{count} images indexed"
    assert page.is_visible("#empty") and result_ids(page) == []
    page.screenshot(path=tmp_path / "start.png", full_page=True)

    # An edited copy of a photo finds the original first.
    original, copy = edited_copy(edited, "chelsea", "text")
    body = searched(page, lambda: page.set_input_files("#file-input", copy), "/search/visual")
    first = page.locator("#results .result").first
    assert first.get_attribute("data-uri") == str(original)
    assert result_ids(page) == [hit["image_id"] for hit in body["results"]]
    assert len(body["results"]) == count  # k=24 asks for more than there are
    assert page.inner_text("#status").startswith(f"{count} results in ")
    assert page.inner_text("#status").endswith(" ms")
    assert page.inner_text("#query-name") == copy.name
    assert page.is_visible("#query-image") and page.is_hidden("#empty")
    assert page.is_enabled("#add-button")
    top = page.locator("#results .card").first
    assert top.locator(".name").inner_text() == original.name
    # Its match label comes first; the score only on demand (never as a percentage).
    labels = {"exact": "Exact", "copy": "Copy", "similar": "Similar", None: "—"}
    assert top.locator(".match").inner_text() == labels[body["results"][0]["match"]]
    assert top.locator(".score").is_hidden() and "%" not in top.inner_text()
    assert first.get_attribute("title").startswith(str(original))  # full path on hover
    wait_for_thumbnails(page)
    page.screenshot(path=tmp_path / "results.png", full_page=True)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / "results.png", SCREENSHOT)

    # Clicking the second result searches by it; it is the new query and not among its results.
    second = page.locator("#results .result").nth(1)
    second_id = int(second.get_attribute("data-image-id") or "")
    body = searched(page, second.click, f"/search/similar/{second_id}?k=24")
    assert body["query"]["image_id"] == second_id
    assert result_ids(page) == [hit["image_id"] for hit in body["results"]]
    assert second_id not in result_ids(page)
    assert page.inner_text("#query-kind") == f"Image #{second_id}"
    assert page.evaluate("location.hash") == f"#similar/{second_id}"
    assert page.is_disabled("#add-button")  # it is in the collection already
    page.wait_for_function("document.getElementById('query-image').naturalWidth > 0")

    # Enter on a focused result does the same; Back returns to the previous query.
    third = page.locator("#results .result").first
    third_id = int(third.get_attribute("data-image-id") or "")
    third.focus()
    searched(page, lambda: page.keyboard.press("Enter"), f"/search/similar/{third_id}")
    assert page.inner_text("#query-kind") == f"Image #{third_id}"
    searched(page, page.go_back, f"/search/similar/{second_id}")
    assert page.inner_text("#query-kind") == f"Image #{second_id}"

    # A smaller k asks for fewer.
    body = searched(page, lambda: page.select_option("#k", "12"),
                    f"/search/similar/{second_id}?k=12")
    assert len(result_ids(page)) == len(body["results"]) == 12

    # Paste and drop search too.
    original, copy = edited_copy(edited, "coffee", "crop")
    searched(page, lambda: paste(page, copy), "/search/visual?k=12")
    assert page.locator("#results .result").first.get_attribute("data-uri") == str(original)
    assert page.inner_text("#query-name") == "Pasted image"
    original, copy = edited_copy(edited, "rocket", "colour")
    searched(page, lambda: drop(page, copy), "/search/visual")
    assert page.locator("#results .result").first.get_attribute("data-uri") == str(original)
    assert page.inner_text("#query-name") == copy.name

    # Narrow screens: one column, no sideways scrolling.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=tmp_path / "narrow.png")


def test_keyboard_errors_and_adding(
    page: Page, live_server: Any, edited: list[tuple[str, Path, Path]], tmp_path: Path
) -> None:
    # Playwright turns on file-chooser interception when the first listener is added, and not
    # always before the next key press reaches the page; listening from the start avoids that.
    page.on("filechooser", lambda _: None)
    count = open_page(page, live_server.url)

    # The keyboard reaches the drop zone with Tab, shows where focus is, and Enter opens the
    # file picker.
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "dropzone":
            break
    assert page.evaluate("document.activeElement.id") == "dropzone"
    assert page.evaluate("getComputedStyle(document.activeElement).boxShadow") != "none"
    original, copy = edited_copy(edited, "astronaut", "grey")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    searched(page, lambda: chooser.value.set_files(copy), "/search/visual")
    assert page.locator("#results .result").first.get_attribute("data-uri") == str(original)
    assert page.is_hidden("#error")

    # A text file named .jpg: the server's message is shown in the alert, nothing breaks.
    notes = {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"shopping list: milk\n"}
    body = searched(page, lambda: page.set_input_files("#file-input", files=[notes]),
                    "/search/visual")
    message = body["error"]["message"]
    assert body["error"]["code"] == "unsupported_media_type" and "not" in message
    alert = page.locator("#error")
    assert alert.is_visible() and alert.get_attribute("role") == "alert"
    assert page.inner_text("#error-message") == message
    assert result_ids(page) == [] and page.inner_text("#status") == ""
    page.screenshot(path=tmp_path / "error.png", full_page=True)
    page.click("#error-dismiss")
    assert alert.is_hidden()

    searched(page, lambda: page.set_input_files("#file-input", copy), "/search/visual")
    assert page.is_hidden("#error") and result_ids(page)

    # "Add to collection" uploads the query; the new image is searchable and counted.
    with page.expect_response(lambda r: r.url.endswith("/images")) as info:
        page.click("#add-button")
    assert info.value.status == 201
    new_id = info.value.json()["image"]["image_id"]
    page.wait_for_selector("#notice:not([hidden])")
    assert page.get_attribute("#notice", "data-image-id") == str(new_id)
    assert f"#{new_id}" in page.inner_text("#notice")
    assert page.is_disabled("#add-button")
    page.wait_for_function(f"document.getElementById('image-count').dataset.count == {count + 1}")
    assert httpx.get(f"{live_server.url}/images/{new_id}").status_code == 200
    body = searched(page, lambda: page.click("#notice button"), f"/search/similar/{new_id}")
    assert body["results"][0]["uri"] == str(original)  # the grey copy's nearest is the original
    page.screenshot(path=tmp_path / "added.png", full_page=True)


def test_api_key_is_asked_for_and_sent(
    page: Page, start_server: Callable[..., Any], served_copy: Path,
    edited: list[tuple[str, Path, Path]],
) -> None:
    server = start_server(served_copy, api_key="s3cret")
    page.goto(server.url)
    page.wait_for_selector("#api-key-form:not([hidden])")
    assert "API key" in page.inner_text("#error-message")

    page.fill("#api-key", "wrong")
    page.click("#api-key-form button[type=submit]")
    page.wait_for_function("document.getElementById('error-message').textContent.includes('key')")

    page.fill("#api-key", "s3cret")
    page.click("#api-key-form button[type=submit]")
    page.wait_for_function("document.getElementById('image-count').dataset.count !== ''")
    assert page.is_hidden("#error")
    assert page.evaluate("localStorage.getItem('lookalike.apiKey')") == "s3cret"
    assert page.is_hidden("#api-key-form") and page.is_visible("#api-key-change")

    # Searches send the key; thumbnails, which an <img src> cannot fetch with it, come as blobs.
    original, copy = edited_copy(edited, "camera", "jpeg")
    searched(page, lambda: page.set_input_files("#file-input", copy), "/search/visual")
    assert page.locator("#results .result").first.get_attribute("data-uri") == str(original)
    page.wait_for_function("""(() => {
        const img = document.querySelector('#results img');
        return img.src.startsWith('blob:') && img.complete && img.naturalWidth > 0;
    })()""")

    # The key is remembered across visits.
    page.reload()
    page.wait_for_function("document.getElementById('image-count').dataset.count !== ''")
    assert page.is_hidden("#error") and page.is_hidden("#api-key-form")
