"""The web page's match labels, folded copies and filters in real headless Chromium against a
real server: a collection of sample photos in two folders with album and owner metadata, a
byte-identical and a half-size copy of one photo, a PNG, and an upload whose metadata looks like
markup."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Page

from test_web import browser, open_page, page, pytestmark, result_ids, searched

__all__ = ["browser", "page", "pytestmark"]  # test_web.py's fixtures and markers, shared

SCREENSHOT = Path(__file__).resolve().parents[1] / "benchmarks" / "out" / "web-filters.png"
TRIP = ["astronaut", "rocket", "coffee"]
HOME = ["chelsea", "camera", "clock", "motorcycle"]
ODD = '<img src=x onerror="alert(1)"> & "co"'  # metadata is shown as text, never as markup
LABELS = {"exact": "Exact", "copy": "Copy", "similar": "Similar", None: "—"}


@dataclass(frozen=True)
class Tagged:
    path: Path  # the collection
    photos: Path
    ids: dict[str, int]  # by file name


@pytest.fixture(scope="module")
def tagged(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Tagged:
    """Photos in trip/ and home/, tagged album=trip|home, four with an owner; trip/ also holds
    a byte-identical and a half-size copy of the astronaut, home/ a PNG of the moon."""
    from lookalike.collection import Collection

    root = tmp_path_factory.mktemp("tagged")
    trip, home = root / "photos" / "trip", root / "photos" / "home"
    trip.mkdir(parents=True)
    home.mkdir()
    for folder, names in ((trip, TRIP), (home, HOME)):
        for name in names:
            shutil.copyfile(sample_dir / f"{name}.jpg", folder / f"{name}.jpg")
    shutil.copyfile(trip / "astronaut.jpg", trip / "astronaut-copy.jpg")
    with Image.open(trip / "astronaut.jpg") as image:
        image.reduce(2).save(trip / "astronaut-half.jpg", quality=85)
    with Image.open(sample_dir / "moon.jpg") as image:
        image.save(home / "moon.png")
    path = root / "tagged.lookalike"
    with Collection.create(path) as col:
        col.index([root / "photos"], workers=0, show_progress=False)
        photos = sorted((*trip.iterdir(), *home.iterdir()))
        col.tag([p for p in photos if p.parent == trip], {"album": "trip"})
        col.tag([p for p in photos if p.parent == home], {"album": "home"})
        col.tag([home / "chelsea.jpg", home / "camera.jpg"], {"owner": "Ann"})
        col.tag([trip / "rocket.jpg", home / "clock.jpg"], {"owner": "Bob"})
        ids = {p.name: col.find(p) for p in photos}
    return Tagged(path, root / "photos", {name: i for name, i in ids.items() if i is not None})


@pytest.fixture(scope="module")
def server(tagged: Tagged) -> Iterator[Any]:
    """One server for the module (only the facets test adds an image, with its own owner)."""
    from conftest import LiveServer
    from lookalike.server import ServeConfig, create_app

    live = LiveServer(create_app(ServeConfig(collection=str(tagged.path)))).start()
    yield live
    live.stop()


def shown_facets(page: Page) -> dict[str, dict[str, int]]:
    """Each facet's values as shown (a folder by its last part) with their counts."""
    return page.evaluate("""() => Object.fromEntries(
        [...document.querySelectorAll('#facets .facet')].map(facet => [facet.dataset.key,
            Object.fromEntries([...facet.querySelectorAll('.facet-value')].map(b =>
                [b.querySelector('.facet-text').textContent,
                 Number(b.querySelector('.facet-count').textContent)]))]))""")


def facet(page: Page, key: str, text: str) -> Any:
    return page.locator(f"#facets .facet[data-key='{key}'] .facet-value",
                        has=page.locator(".facet-text", has_text=text))


def albums(server: Any, ids: list[int]) -> set[str]:
    return {httpx.get(f"{server.url}/images/{i}").json()["metadata"]["album"] for i in ids}


def test_labels_first_copies_folded_and_scores_on_demand(
    page: Page, server: Any, tagged: Tagged, tmp_path: Path
) -> None:
    open_page(page, server.url)
    astronaut = tagged.photos / "trip" / "astronaut.jpg"
    with page.expect_request(lambda r: "/search/visual" in r.url) as sent:
        body = searched(page, lambda: page.set_input_files("#file-input", astronaut),
                        "/search/visual")
    assert parse_qs(urlsplit(sent.value.url).query)["collapse"] == ["true"]

    # The same bytes come first, labelled before anything else, its two copies folded into it.
    top = body["results"][0]
    assert top["match"] == "exact" and len(top["copies"]) == 2
    assert sorted(c["match"] for c in top["copies"]) == ["copy", "exact"]
    assert result_ids(page) == [hit["image_id"] for hit in body["results"]]
    first = page.locator("#results .card").first
    assert page.eval_on_selector("#results .meta", "m => m.firstElementChild"
                                 ".firstElementChild.className") == "match match-exact"
    labels = page.eval_on_selector_all("#results .card .match", "ns => ns.map(n => n.textContent)")
    assert labels == [LABELS[hit["match"]] for hit in body["results"]]
    assert "%" not in page.inner_text("#results")  # no score reads as a probability

    # The score is there on demand: in the card's title, and shown with "Show scores".
    score = f"score {top['score']:.3f} · cosine {2 * top['score'] - 1:.3f}"
    assert score in (first.locator(".result").get_attribute("title") or "")
    assert first.locator(".score").is_hidden()
    page.check("#show-scores")
    assert first.locator(".score").inner_text() == score
    page.uncheck("#show-scores")
    assert first.locator(".score").is_hidden()

    # "+2 copies" shows the folded copies right after their result, and hides them again.
    toggle = first.locator(".copies-toggle")
    assert toggle.inner_text().startswith("+2 copies")
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    copies = page.locator("#results .copy-card")
    assert copies.count() == 2
    assert page.eval_on_selector_all("#results .result", "ns => ns.map(n => n.dataset.rank)")[
        :3] == ["1", "1.1", "1.2"]
    assert [copies.nth(i).locator(".match").inner_text() for i in range(2)] == [
        LABELS[c["match"]] for c in top["copies"]]
    page.wait_for_function("[...document.querySelectorAll('#results img')]"
                           ".every(i => i.complete && i.naturalWidth)")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)
    toggle.click()
    assert copies.count() == 0

    # Unfolded, the three astronauts are results of their own; the address keeps the choice.
    with page.expect_request(lambda r: "/search/visual" in r.url) as sent:
        body = searched(page, lambda: page.uncheck("#collapse"), "/search/visual")
    assert parse_qs(urlsplit(sent.value.url).query)["collapse"] == ["false"]
    assert page.evaluate("location.hash") == "#?collapse=0"
    assert [h["match"] for h in body["results"][:3]] == ["exact", "exact", "copy"]
    assert page.locator("#results .copies-toggle").count() == 0
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=tmp_path / "narrow.png", full_page=True)


def test_facet_clicks_filter_the_results_and_survive_a_reload(
    page: Page, server: Any, tagged: Tagged
) -> None:
    chelsea = tagged.ids["chelsea.jpg"]
    similar = f"/search/similar/{chelsea}?"
    # An upload with metadata: the owner's value is shown and filtered on as text.
    png = io.BytesIO()
    with Image.open(tagged.photos / "home" / "clock.jpg") as image:
        image.rotate(90).save(png, format="PNG")
    odd = httpx.post(f"{server.url}/images", files={"file": ("odd.png", png.getvalue())},
                     data={"metadata": json.dumps({"owner": ODD, "album": "home"})})
    odd_id = odd.raise_for_status().json()["image"]["image_id"]
    page.goto(f"{server.url}/#similar/{chelsea}")
    page.wait_for_selector("#results .result")
    page.wait_for_selector("#facets .facet")
    api = httpx.get(f"{server.url}/facets",
                    params={"keys": "album,owner,folder,format"}).json()["facets"]
    shown = shown_facets(page)
    assert list(shown) == ["album", "owner", "folder", "format"]  # metadata first
    assert shown["album"] == {"home": 6, "trip": 5} and shown["format"] == {"jpeg": 9, "png": 2}
    assert shown["owner"] == {v["value"]: v["images"] for v in api["owner"]}
    assert ODD in shown["owner"] and page.locator("#facets img").count() == 0

    # A click on a value narrows the search to it; the markup-like value is only text.
    body = searched(page, lambda: facet(page, "owner", ODD).click(), similar)
    assert page.input_value("#where") == 'owner = "<img src=x onerror=\\"alert(1)\\"> & \\"co\\""'
    assert result_ids(page) == [odd_id]
    assert facet(page, "owner", ODD).get_attribute("aria-pressed") == "true"
    searched(page, lambda: facet(page, "owner", ODD).click(), similar)  # pressed: out again
    assert page.input_value("#where") == ""

    # Every result, and every copy folded into one, is on the trip; the counts follow.
    body = searched(page, lambda: facet(page, "album", "trip").click(), similar)
    assert page.input_value("#where") == 'album = "trip"'
    ids = [h["image_id"] for h in body["results"]]
    ids += [c["image_id"] for h in body["results"] for c in h["copies"]]
    assert result_ids(page) == [h["image_id"] for h in body["results"]]
    assert len(ids) == 5 and albums(server, ids) == {"trip"}
    page.wait_for_function("document.getElementById('facets').ariaBusy === 'false'")
    assert shown_facets(page)["album"] == {"trip": 5}
    assert shown_facets(page)["owner"] == {"Bob": 1}
    assert shown_facets(page)["folder"] == {"trip": 5}
    body = searched(page, lambda: facet(page, "format", "jpeg").click(), similar)
    assert page.input_value("#where") == 'album = "trip" and format = "jpeg"'
    kept = result_ids(page)
    assert kept and albums(server, kept) == {"trip"}

    # The address holds the filter: a reload searches the same, the facets pressed as before.
    assert page.evaluate("location.hash").startswith(f"#similar/{chelsea}?where=")
    body = searched(page, page.reload, similar)
    assert page.input_value("#where") == 'album = "trip" and format = "jpeg"'
    assert result_ids(page) == kept
    page.wait_for_selector("#facets .facet-value[aria-pressed=true]")

    # Clicking a pressed value takes it out again; Clear empties the filter.
    searched(page, lambda: facet(page, "album", "trip").click(), similar)
    assert page.input_value("#where") == 'format = "jpeg"'
    body = searched(page, lambda: page.click("#where-clear"), similar)
    assert "where" not in parse_qs(urlsplit(page.url).fragment.partition("?")[2])
    assert len(result_ids(page)) == len(body["results"]) > len(kept)

    # A value typed by hand is found in the server's form of the filter: pressed, and a click
    # takes it out again.
    searched(page, lambda: (page.fill("#where", "album=trip"), page.press("#where", "Enter")),
             similar)
    page.wait_for_selector("#facets .facet[data-key='album'] .facet-value[aria-pressed=true]")
    searched(page, lambda: facet(page, "album", "trip").click(), similar)
    assert page.input_value("#where") == ""

    # At most one result per album, kept in the address too.
    page.fill("#max-per-n", "1")
    searched(page, lambda: page.select_option("#max-per-key", "album"), similar)
    assert "max_per=album%3D1" in page.evaluate("location.hash")
    assert len(result_ids(page)) == 2 and albums(server, result_ids(page)) == {"home", "trip"}


def test_a_bad_filter_shows_the_servers_message_where_it_is_typed(
    page: Page, server: Any, tagged: Tagged
) -> None:
    open_page(page, server.url)
    bad = "album = trip and width >="
    message = httpx.get(f"{server.url}/facets",
                        params={"keys": "album", "where": bad}).json()["error"]["message"]
    page.fill("#where", bad)
    page.press("#where", "Enter")
    page.wait_for_selector("#where-error:not([hidden])")
    shown = [line.strip() for line in page.inner_text("#where-error").splitlines()]
    assert [line for line in shown if line] == [line.strip() for line in message.splitlines()]
    assert page.get_attribute("#where", "aria-invalid") == "true"
    assert page.is_hidden("#error")  # not the page's generic alert

    # A search with it is refused with the same message, shown in the same place.
    photo = tagged.photos / "home" / "clock.jpg"
    body = searched(page, lambda: page.set_input_files("#file-input", photo), "/search/visual")
    assert body["error"] == {"code": "invalid_filter", "message": message}
    assert page.is_visible("#where-error") and page.is_hidden("#error")
    assert result_ids(page) == [] and "filter" in page.inner_text("#status")
    assert page.is_enabled("#add-button")  # the photo is fine; the filter is not

    # Fixed, the search runs and the message goes.
    searched(page, lambda: (page.fill("#where", "width >= 500"), page.press("#where", "Enter")),
             "/search/visual")
    assert page.is_hidden("#where-error") and page.get_attribute("#where", "aria-invalid") is None
    assert result_ids(page)
    searched(page, lambda: (page.fill("#where", "album = nowhere"), page.press("#where", "Enter")),
             "/search/visual")
    assert result_ids(page) == [] and page.inner_text("#empty") == "No images pass the filter."

