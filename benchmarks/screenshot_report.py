"""Screenshot the top of a study report in headless Chromium (for the README's docs/report-screenshot.png).

Uses Playwright for Python driving Debian's system Chromium (`apt-get install chromium`): Playwright's own
browser download is not reachable here, so `playwright install` is never needed.

    python benchmarks/screenshot_report.py runs/demo docs/report-screenshot.png
    python benchmarks/screenshot_report.py runs/demo/report/report.html /tmp/shot.png --height 1400

The viewport (not the whole page) is captured, so the image shows the header, warnings, findings and the
first plot. When the PNG comes out larger than --max-kb, the viewport is cut shorter until it fits.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storytune.paths import REPORT_HTML as HTML_FILE  # noqa: E402
from storytune.paths import GridDir  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def find_report(path: Path) -> Path:
    """report.html itself, a report folder, or a grid (run) directory holding report/report.html."""
    candidates = [path, path / HTML_FILE, GridDir(path).report / HTML_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SystemExit(f"no {HTML_FILE} at {path} (looked for: {', '.join(map(str, candidates))})")


def screenshot(html: Path, width: int, height: int, executable: str) -> bytes:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(html.resolve().as_uri(), wait_until="load")
            return page.screenshot(type="png", full_page=False)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="RUN_DIR (grid directory), its report/ folder, or report.html")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--width", type=int, default=1200, help="viewport width in CSS pixels")
    parser.add_argument("--height", type=int, default=1500, help="viewport height in CSS pixels (the crop)")
    parser.add_argument("--max-kb", type=int, default=300, help="largest PNG allowed, in KiB")
    parser.add_argument("--chromium", default=shutil.which("chromium") or CHROMIUM)
    args = parser.parse_args()
    html = find_report(args.report)
    height = args.height
    png = screenshot(html, args.width, height, args.chromium)
    while len(png) > args.max_kb * 1024 and height > 400:  # a shorter crop keeps the image under the limit
        height = int(height * 0.85)
        png = screenshot(html, args.width, height, args.chromium)
    if len(png) > args.max_kb * 1024:
        raise SystemExit(f"screenshot is {len(png) / 1024:.0f} KiB even at {height} px high (limit {args.max_kb})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"{args.out}: {args.width}x{height} px, {len(png) / 1024:.0f} KiB, from {html}")


if __name__ == "__main__":
    main()
