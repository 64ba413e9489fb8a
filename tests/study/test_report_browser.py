"""report.html in a real headless Chromium (Debian's `chromium` driven by Playwright for Python).

Playwright's own browser download cannot be reached here, so the system Chromium is launched through
`executable_path`; without it (or without the playwright package) the test is skipped, not faked.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from report_data import known_summary, wide_summary

from storytune.study.report import write_report

pytestmark = pytest.mark.browser

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chromium_path() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"], headless=True)
        yield browser
        browser.close()


def open_report(browser, html: Path) -> tuple[object, list[str], list[str]]:
    """The loaded page, the console errors and page errors it produced, and requests that left the file."""
    page = browser.new_page(viewport={"width": 1200, "height": 1500})
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda req: outside.append(req.url) if not req.url.startswith(("file:", "data:")) else None)
    page.goto(html.as_uri(), wait_until="load")
    return page, errors, outside


@pytest.mark.parametrize("make_summary", [known_summary, wide_summary], ids=["known", "15x3"])
def test_report_opens_in_chromium_with_table_and_decoded_plots(browser, tmp_path: Path, make_summary) -> None:
    html = write_report(make_summary(), tmp_path / "report")
    page, errors, outside = open_report(browser, html)
    try:
        rows = page.locator("#comparison-table tbody tr")
        assert rows.count() == len(make_summary()["arms"]) + 1  # every arm and the base model
        assert page.locator("#comparison-table th").first.inner_text() == "arm"
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
        assert len(images) == len(list((tmp_path / "report" / "plots").glob("*.png"))) >= 3
        assert all(complete and width > 0 and height > 0 for complete, width, height in images), images
        assert page.locator("#warnings").is_visible()
        assert page.locator("script").count() == 0  # the escaped `<script>` sample stayed text
        assert errors == [] and outside == []
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=False)
        data = shot.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    finally:
        page.close()


def test_no_finished_cell_page_shows_the_message(browser, tmp_path: Path) -> None:
    summary = known_summary()
    summary["arms"], summary["cells"]["finished"] = [], 0
    page, errors, _ = open_report(browser, write_report(summary, tmp_path))
    try:
        assert "No finished cells" in page.locator("#no-results").inner_text()
        assert page.locator("img").count() == 0 and errors == []
    finally:
        page.close()
