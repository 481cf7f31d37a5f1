"""The upload page of ``hematune serve`` in a real browser: Debian's Chromium driven by Playwright
(``executable_path``; nothing downloaded), against a real server started with a token.

The page asks for the token, shows the model panel, and classifies two real cell images from the
reference set plus a text file: the classes and confidences shown must be ``hematune predict``'s, and
the text file gets an error row. The release is promoted from a one-epoch CNN study on a slice of the
reference set, or, to refresh the README's screenshot with a real model, the release named by
HEMATUNE_SERVE_RELEASE (e.g. releases/wbc-cnn); HEMATUNE_SCREENSHOT_DIR=docs writes docs/serve.png.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from reports import release
from reports.study import load
from search.runner import SearchConfig, run_search
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS
from tests.test_serve import TOKEN, Server, expected


@pytest.fixture(scope="module")
def cell_release(reference_slice, tmp_path_factory):
    if os.environ.get("HEMATUNE_SERVE_RELEASE"):
        return Path(os.environ["HEMATUNE_SERVE_RELEASE"]).resolve()
    base = tmp_path_factory.mktemp("serve-browser")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEMATUNE_CACHE", str(base / "cache"))
        run_search(SearchConfig(data=str(reference_slice), model="cnn", study="cells", studies_dir=base / "studies",
                                trials=1, max_epochs=1, fixed={"image_size": 32, "blocks": 2}, pruner="none"))
        promoted = release.promote(load("cells", studies_dir=base / "studies"), name="wbc-cnn",
                                   releases_dir=base / "releases", reports_dir=base / "reports")
    return promoted.path.parent


def _percent(p: float) -> str:
    return f"{100 * p:.1f} %"  # as app.js writes it


def test_upload_page_classifies_real_cells_and_shows_the_error_row(cell_release, reference_slice, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"chromium not found at {CHROMIUM}: install Debian's chromium (apt-get install -y chromium; "
                    ".ci/run does) or set HEMATUNE_CHROMIUM")
    from playwright.sync_api import expect, sync_playwright

    test_dir = reference_slice / "TEST"
    cells = [sorted((test_dir / "EOSINOPHIL").iterdir())[0], sorted((test_dir / "LYMPHOCYTE").iterdir())[0]]
    notes = tmp_path / "notes.txt"
    notes.write_text("not a cell image\n")
    wanted = expected(cell_release, cells)
    checked = release.verify(cell_release)

    server = Server("--release", str(cell_release), env={"HEMATUNE_TOKEN": TOKEN})
    try:
        server.wait_for("ready:")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1360, "height": 760})
            page.goto(f"http://127.0.0.1:{server.port}/")
            expect(page.locator("#token-form")).to_be_visible(timeout=30_000)  # the API needs the token
            page.fill("#token", TOKEN)
            page.click("#token-form button")

            metrics = checked.metrics
            expect(page.locator("#m-name")).to_have_text(metrics["release"], timeout=30_000)
            expect(page.locator("#m-version")).to_contain_text(checked.path.name)
            low, high = metrics["test"]["accuracy_ci95"]
            expect(page.locator("#m-accuracy")).to_contain_text(
                f"{_percent(metrics['test']['accuracy'])} [{_percent(low)}, {_percent(high)}] 95 % CI")
            expect(page.locator("#m-date")).to_have_text(metrics["created"][:10])
            expect(page.locator("#m-limits")).to_contain_text("not a diagnostic device")
            expect(page.locator("#m-use")).to_contain_text("Research and method development")
            expect(page.locator("#token-form")).to_be_hidden()

            page.set_input_files("#files", [str(p) for p in cells] + [str(notes)])
            rows = page.locator("#results tbody tr")
            expect(rows).to_have_count(3)
            expect(page.locator("#status")).to_contain_text("3 file(s): 2 classified, 1 could not be read",
                                                            timeout=60_000)
            for i, (cell, want) in enumerate(zip(cells, wanted)):
                row = rows.nth(i)
                expect(row.locator("td.file")).to_have_text(cell.name)
                expect(row.locator("td.label")).to_have_text(want["label"])
                expect(row.locator("td.confidence")).to_have_text(_percent(want["confidence"]))
                assert float(row.get_attribute("data-confidence")) == pytest.approx(want["confidence"], abs=1e-6)
                bars = row.locator(".bars > span:not(.pct)")
                assert bars.all_text_contents() == [label for label, _ in want["top3"]]
                assert row.locator("td.thumb img").evaluate("img => img.complete && img.naturalWidth > 0")
            error = rows.nth(2)
            expect(error.locator("td.label")).to_have_text("ERROR")
            expect(error.locator("td.file")).to_have_text("notes.txt")
            expect(error.locator("td.top3")).to_have_text("notes.txt: unreadable image (cannot identify image file)")

            shots = [tmp_path / "serve.png"]
            if os.environ.get("HEMATUNE_SCREENSHOT_DIR"):
                shots.append(Path(os.environ["HEMATUNE_SCREENSHOT_DIR"]) / "serve.png")
            for shot in shots:
                shot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert shots[0].stat().st_size > 10_000
    finally:
        assert server.stop() == 0, server.output[-2000:]
