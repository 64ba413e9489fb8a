"""Pure rendering: a grid's `report/summary.json` dict -> `report.html`, `report.md`, `summary.csv`, plots.

Everything here reads the summary dict ALONE (no run directories), so a report can be re-rendered
anywhere from one JSON file. Any number may be null and any section may be missing: a grid with failed
cells, no generation metrics, no base model or no finished cell still gets a report, never a traceback.

Numbers with an interval are printed to the precision the interval supports: the decimals show two
significant digits of the interval's width ("5.41 [5.30, 5.52]", "+0.012 [0.004, 0.020]").
"""

from __future__ import annotations

from pathlib import Path

from storytune.paths import REPORT_CSV, REPORT_HTML, REPORT_MARKDOWN, REPORT_PLOTS, write_text_atomic
from storytune.study.report.page import render_html
from storytune.study.report.plots import plot_files
from storytune.study.report.text import render_csv, render_markdown


def write_report(summary: dict, out_dir: Path) -> Path:
    """Write report.html, report.md, summary.csv and plots/*.png into out_dir; return report.html's path.

    report.html is written last (atomically), so its presence means the rest is there too.
    """
    out_dir = Path(out_dir)
    plots_dir = out_dir / REPORT_PLOTS
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_files(summary)
    for stale in plots_dir.glob("*.png"):
        if stale.name not in plots:  # e.g. metrics.png after evaluation was switched off
            stale.unlink()
    for name, png in plots.items():
        (plots_dir / name).write_bytes(png)
    write_text_atomic(out_dir / REPORT_MARKDOWN, render_markdown(summary))
    write_text_atomic(out_dir / REPORT_CSV, render_csv(summary))
    html_path = out_dir / REPORT_HTML
    write_text_atomic(html_path, render_html(summary, plots))
    return html_path
