"""The web page's duplicate review in real headless Chromium against a real server: the groups
of a collection with planted copies, their labels and suggested keeps, "Not duplicates" and
"Keep this one" (remembered across reloads), and the keyboard."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Locator, Page

from test_web import browser, open_page, page, pytestmark

__all__ = ["browser", "page", "pytestmark"]  # test_web.py's fixtures and markers, shared

SCREENSHOT = Path(__file__).resolve().parents[1] / "benchmarks" / "out" / "web-duplicates.png"
ORIGINALS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "moon"]
HALVED = ["chelsea", "coffee", "rocket"]  # each gets a half-size JPEG re-encode: a near copy

@pytest.fixture(scope="module")
def planted(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collection of six sample photos, a byte-identical copy of the astronaut and half-size
    re-encodes of three others, indexed once with the default model (copy it to change it)."""
    from lookalike.collection import Collection

    root = tmp_path_factory.mktemp("planted")
    photos = root / "photos"
    photos.mkdir()
    for name in ORIGINALS:
        shutil.copyfile(sample_dir / f"{name}.jpg", photos / f"{name}.jpg")
    shutil.copyfile(photos / "astronaut.jpg", photos / "astronaut-copy.jpg")
    for name in HALVED:
        with Image.open(photos / f"{name}.jpg") as image:
            image.reduce(2).save(photos / f"{name}-half.jpg", quality=85)
    path = root / "planted.lookalike"
    with Collection.create(path) as col:
        col.index([photos], workers=0, show_progress=False)
    return path


@pytest.fixture
def server(planted: Path, tmp_path: Path, start_server: Callable[..., Any]) -> Any:
    """A server over a private copy of the planted collection (decisions change it)."""
    path = tmp_path / "planted.lookalike"
    shutil.copytree(planted, path)
    return start_server(path)


def loaded(page: Page) -> None:
    """Wait until the review has answered and shows what it got."""
    page.wait_for_selector("#dup-view:not([hidden])")
    page.wait_for_function("document.getElementById('dup-status').textContent.includes('among')")
    page.wait_for_selector("#dup-groups[aria-busy=false]", state="attached")


def reloaded(page: Page, action: Callable[[], Any]) -> None:
    """Run ``action`` and wait for the groups it makes the page load again."""
    with page.expect_response(lambda r: "/duplicates?" in r.url):
        action()
    page.wait_for_selector("#dup-groups[aria-busy=false]", state="attached")


def shown_groups(page: Page) -> list[dict[str, Any]]:
    """The groups on the page: each with its keep's name and reason, and every image's label."""
    return page.evaluate("""() => [...document.querySelectorAll('#dup-groups .dup-group')]
        .map(card => ({
            ids: card.dataset.ids.split(',').map(Number),
            keep: card.querySelector('.dup-image.keeper .name').textContent,
            reason: card.querySelector('.dup-reason').textContent,
            labels: Object.fromEntries([...card.querySelectorAll('.dup-image')].map(tile =>
                [tile.querySelector('.name').textContent,
                 tile.querySelector('.dup-label').firstChild.textContent])),
        }))""")


def group_of(page: Page, name: str) -> Locator:
    return page.locator(".dup-group", has=page.locator(".dup-image .name", has_text=name))


def api_groups(server: Any) -> list[dict[str, Any]]:
    return httpx.get(f"{server.url}/duplicates", timeout=30).json()["groups"]


def names(group: dict[str, Any]) -> set[str]:
    return {Path(image["uri"]).name for image in (group["keep"], *group["members"])}


def test_review_groups_then_decide(page: Page, server: Any, tmp_path: Path) -> None:
    page.goto(f"{server.url}/#duplicates")
    loaded(page)
    assert page.get_attribute("#tab-duplicates", "aria-current") == "page"
    assert page.is_hidden("#main") and page.is_visible("#dup-keys")
    body = httpx.get(f"{server.url}/duplicates").json()
    assert body["total_groups"] == 4 and body["images"] == 10
    status = page.inner_text("#dup-status")
    assert status.startswith("4 groups of near copies among 10 images")
    assert f"cosine ≥ {body['near_threshold']:.3f} and pixels that align (normal preset)" in status

    groups = shown_groups(page)
    assert [g["ids"] for g in groups] == [
        [g["keep"]["id"], *(m["id"] for m in g["members"])] for g in body["groups"]]
    by_names = {frozenset(g["labels"]): g for g in groups}
    exact = by_names[frozenset({"astronaut.jpg", "astronaut-copy.jpg"})]
    copy = ({"astronaut.jpg", "astronaut-copy.jpg"} - {exact["keep"]}).pop()
    assert exact["labels"][copy] == "exact — same bytes"
    assert exact["labels"][exact["keep"]] == "Suggested keep"
    assert group_of(page, "astronaut-copy.jpg").locator(".dup-distinct").is_disabled()
    for name in HALVED:
        group = by_names[frozenset({f"{name}.jpg", f"{name}-half.jpg"})]
        assert group["keep"] == f"{name}.jpg"
        assert group["reason"].startswith("largest resolution (")
        assert group["labels"][f"{name}-half.jpg"] == "near copy"
    # What a person judges by: sizes, and each copy's cosine on demand.
    chelsea = group_of(page, "chelsea-half.jpg")
    keep, half = chelsea.locator(".dup-image").all()
    [listed] = [g for g in body["groups"] if "chelsea.jpg" in names(g)]
    for tile, image in [(keep, listed["keep"]), (half, listed["members"][0])]:
        facts = tile.locator(".dup-facts").inner_text()
        assert facts.startswith(f"{image['width']} × {image['height']} · ")
        assert facts.endswith(" KB")
    assert half.locator(".dup-label").get_attribute("title").startswith("cosine 0.9")
    assert "weakest link 0.9" in chelsea.locator(".dup-group-meta").inner_text()

    page.wait_for_function("[...document.querySelectorAll('#dup-groups img')]"
                           ".every(i => i.complete && i.naturalWidth)")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)

    # "Not duplicates": the group goes, and stays gone.
    reloaded(page, lambda: group_of(page, "coffee-half.jpg").locator(".dup-distinct").click())
    assert "not duplicates" in page.inner_text("#dup-notice")
    assert group_of(page, "coffee-half.jpg").count() == 0
    assert page.inner_text("#dup-status").startswith("3 groups")

    # "Keep this one" on the half-size copy: it is the keep from now on.
    half_id = int(half.get_attribute("data-image-id") or "")
    reloaded(page, lambda: chelsea.locator(f".dup-keep[data-image-id='{half_id}']").click())
    assert "chelsea-half.jpg" in page.inner_text("#dup-notice")
    assert page.evaluate("document.activeElement.dataset.keepId") == str(half_id)

    page.reload()
    loaded(page)
    groups = shown_groups(page)
    assert len(groups) == 3
    assert not any("coffee.jpg" in g["labels"] for g in groups)
    [chosen] = [g for g in groups if "chelsea.jpg" in g["labels"]]
    assert chosen["keep"] == "chelsea-half.jpg" and chosen["reason"] == "chosen by you"
    assert chosen["labels"]["chelsea.jpg"] == "near copy"
    assert group_of(page, "chelsea.jpg").locator(".dup-image.keeper .dup-keep").is_disabled()
    # The server remembers both decisions.
    groups = api_groups(server)
    assert not any("coffee.jpg" in names(g) for g in groups)
    [chosen] = [g for g in groups if "chelsea.jpg" in names(g)]
    assert chosen["keep"]["id"] == half_id and chosen["reason"] == "chosen by you"

    # Narrow screens: no sideways scrolling.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=tmp_path / "narrow.png", full_page=True)


def test_keyboard_and_switching_views(page: Page, server: Any) -> None:
    count = open_page(page, server.url)
    assert count == 10 and page.is_visible("#dropzone")
    page.keyboard.press("j")  # the review's keys do nothing on the search view
    assert page.is_visible("#main") and page.is_hidden("#dup-view")

    page.click("#tab-duplicates")
    loaded(page)
    assert page.evaluate("location.hash") == "#duplicates"
    cards = page.locator(".dup-group")
    ids = [cards.nth(i).get_attribute("data-ids") for i in range(cards.count())]
    focused = "document.activeElement.dataset.ids"

    page.keyboard.press("j")
    assert page.evaluate(focused) == ids[0]
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("j")
    page.keyboard.press("j")
    assert page.evaluate(focused) == ids[2]
    page.keyboard.press("k")
    assert page.evaluate(focused) == ids[1]
    page.keyboard.press("ArrowDown")
    assert page.evaluate(focused) == ids[2]

    # 2 keeps the second image of the focused group; focus stays on that group.
    copy_id = int((ids[2] or "").split(",")[1])
    reloaded(page, lambda: page.keyboard.press("2"))
    card = page.locator(".dup-group:focus")
    assert card.get_attribute("data-keep-id") == str(copy_id)
    assert card.locator(".dup-reason").inner_text() == "chosen by you"

    # n: not duplicates; focus moves on to the group that took its place.
    page.keyboard.press("k")
    other = page.evaluate(focused)
    reloaded(page, lambda: page.keyboard.press("n"))
    assert other not in [c.get_attribute("data-ids") for c in cards.all()]
    assert page.evaluate(focused) == cards.nth(1).get_attribute("data-ids")
    groups = api_groups(server)
    assert len(groups) == 3
    assert any(g["keep"]["id"] == copy_id and g["reason"] == "chosen by you" for g in groups)

    # Back to the search, and the browser's Back returns to the review.
    page.click("#tab-search")
    assert page.is_visible("#dropzone") and page.is_hidden("#dup-view")
    assert page.evaluate("location.hash") == ""
    page.go_back()
    loaded(page)
    assert page.is_visible("#dup-view") and len(shown_groups(page)) == 3


def test_controls_link_and_api_key(
    page: Page, planted: Path, tmp_path: Path, start_server: Callable[..., Any]
) -> None:
    path = tmp_path / "planted.lookalike"
    shutil.copytree(planted, path)
    server = start_server(path, api_key="s3cret")
    page.goto(f"{server.url}/#duplicates?tier=exact")
    page.wait_for_selector("#api-key-form:not([hidden])")
    assert page.is_visible("#dup-view #error") and "API key" in page.inner_text("#error-message")

    # With the key the review loads what the link asked for, thumbnails fetched with the key.
    page.fill("#api-key", "s3cret")
    page.click("#api-key-form button[type=submit]")
    loaded(page)
    assert page.is_hidden("#error") and page.input_value("#dup-tier") == "exact"
    assert page.inner_text("#dup-status").startswith("1 group of exact copies among 10 images")
    assert set(shown_groups(page)[0]["labels"]) == {"astronaut.jpg", "astronaut-copy.jpg"}
    page.wait_for_function("""[...document.querySelectorAll('#dup-groups img')]
        .every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)""")

    # The controls ask again and keep the address linkable; a reload shows the same.
    reloaded(page, lambda: page.select_option("#dup-tier", "near"))
    reloaded(page, lambda: page.select_option("#dup-preset", "strict"))
    assert page.evaluate("location.hash") == "#duplicates?preset=strict"
    assert "(strict preset)" in page.inner_text("#dup-status")
    page.reload()
    loaded(page)
    strict = httpx.get(f"{server.url}/duplicates?preset=strict",
                       headers={"X-API-Key": "s3cret"}).json()
    assert page.input_value("#dup-preset") == "strict"
    assert len(shown_groups(page)) == strict["total_groups"] > 0

    # A custom cosine instead of a preset.
    reloaded(page, lambda: page.select_option("#dup-preset", "custom"))
    assert page.is_visible("#dup-threshold") and page.evaluate("location.hash").startswith(
        "#duplicates?threshold=0.9")
    assert "(your threshold)" in page.inner_text("#dup-status")
    page.fill("#dup-threshold", "0.99")
    reloaded(page, lambda: page.press("#dup-threshold", "Enter"))
    assert page.evaluate("location.hash") == "#duplicates?threshold=0.99"
    assert len(shown_groups(page)) == 1  # only the same bytes are that close

    # Pages: two groups a page; deciding away the last page's groups shows the one before.
    reloaded(page, lambda: page.evaluate("location.hash = '#duplicates?per_page=2'"))
    assert page.inner_text("#dup-page") == "Page 1 of 2" and page.is_disabled("#dup-prev")
    first = [g["ids"] for g in shown_groups(page)]
    reloaded(page, lambda: page.click("#dup-next"))
    assert page.inner_text("#dup-page") == "Page 2 of 2" and page.is_disabled("#dup-next")
    second = [g["ids"] for g in shown_groups(page)]
    assert len(first) == len(second) == 2 and not set(map(tuple, first)) & set(map(tuple, second))
    for _ in second:
        reloaded(page, lambda: page.locator(".dup-distinct").first.click())
    page.wait_for_function("document.getElementById('dup-page').textContent === 'Page 1 of 1'")
    assert [g["ids"] for g in shown_groups(page)] == first and page.is_hidden("#dup-pager")
