"""The study report renders from summary.json alone: exact numbers, warnings first, embedded plots, escaping,
and every missing piece (nulls, no curves, no metrics, no base, no samples, no finished cell)."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image
from report_data import known_summary, wide_summary

from storytune.study.report import plots as report
from storytune.study.report import write_report
from storytune.study.report.fmt import arm_colors, fmt_ci, fmt_p, fmt_value, metric_keys, verdict
from storytune.study.report.plots import dodge, mean_series, plot_files

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def render(summary: dict, out: Path) -> tuple[str, str]:
    html_path = write_report(summary, out)
    assert html_path == out / "report.html"
    return html_path.read_text(), (out / "report.md").read_text()


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)]


def test_numbers_are_formatted_to_the_precision_of_their_interval() -> None:
    assert fmt_ci({"mean": 5.41, "ci_low": 5.30, "ci_high": 5.52}) == "5.41 [5.30, 5.52]"
    assert fmt_ci({"diff": 0.012, "ci_low": 0.004, "ci_high": 0.020}, "diff", sign=True) == "+0.012 [0.004, 0.020]"
    assert fmt_ci({"mean": 900.0, "ci_low": 850.0, "ci_high": 950.0}) == "900 [850, 950]"
    assert fmt_ci({"mean": 5.5, "ci_low": None, "ci_high": None}) == "5.50"
    assert fmt_ci({"mean": None}) == fmt_ci(None) == fmt_ci({"mean": math.nan}) == "–"
    assert [fmt_p(p) for p in (0.0002, 0.01, 0.41, None, math.nan)] == ["< 0.001", "0.01", "0.41", "–", "–"]
    assert fmt_value(None) == fmt_value(math.inf) == fmt_value("5") == "–"
    # A direction only when the interval excludes zero, and "better" follows the metric's direction.
    assert verdict({"ci_low": -0.02, "ci_high": -0.004}, higher_is_better=False) == "better"
    assert verdict({"ci_low": -0.02, "ci_high": -0.004}, higher_is_better=True) == "worse"
    assert verdict({"ci_low": -0.004, "ci_high": 0.01}, higher_is_better=False) == ""
    assert verdict({"ci_low": 0.1, "ci_high": 0.2}, higher_is_better=None) == ""


def test_report_shows_the_exact_numbers_in_html_markdown_and_csv(tmp_path: Path) -> None:
    html, markdown = render(known_summary(), tmp_path)
    row = ("| patience2 | 2 | 180 | 140 | 100% | 92,160 | 40% | 5.40 | 5.398 [5.392, 5.404] | "
           "-0.012 [-0.020, -0.004] | < 0.001 | -5.40 [-5.50, -5.30] | 0.001 |")
    assert row in markdown
    assert "| none | 2 | 300 | 300 | 0% | 153,600 | 0% | 5.91 | 5.41 [5.30, 5.52] | – | – | " \
           "-5.39 [-5.45, -5.33] | 0.002 |" in markdown
    assert "| patience3 | 1 (1) | 200 | 140 | 100% | 102,400 | 33% | – | 5.50 | +0.003 [-0.004, 0.010] | – |" \
        in markdown
    assert "| base | – | – | – | – | 0 | – | – | 10.80 [10.75, 10.85] | – | – | – | – |" in markdown
    for text in ("0.812 [0.800, 0.825]", "0.790 [0.780, 0.800]", "23.4 [22.1, 24.9]", "900 [850, 950]",
                 "-0.022 [-0.050, 0.006]", "+0.050 [0.030, 0.070]"):
        assert text in markdown and text in html, text
    # Green/red only where the interval excludes zero.
    assert '<td class="num better">-0.012 [-0.020, -0.004]</td>' in html
    assert '<td class="num">-0.022 [-0.050, 0.006]</td>' in html
    assert '<td class="num better">+0.050 [0.030, 0.070]</td>' in html
    assert '<table id="comparison-table">' in html and "5.398 [5.392, 5.404]" in html
    for finding in known_summary()["findings"]:
        assert f"- {finding}" in markdown
    # Both say what was compared: the base model (random here), the scorer.
    assert "- Base model: sshleifer/tiny-gpt2 (random initialisation)" in markdown
    assert "<dt>Base model</dt><dd>sshleifer/tiny-gpt2 (random initialisation)</dd>" in html
    assert "- Fluency scorer: gpt2-scorer" in markdown
    assert "<li>patience3: not distinguishable from <code>none</code>.</li>" in html

    rows = {r["arm"]: r for r in csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text()))}
    assert list(rows) == ["base", "none", "patience2", "patience3"]
    assert float(rows["none"]["test_loss"]) == 5.41 and float(rows["none"]["test_loss_ci_high"]) == 5.52
    assert float(rows["patience2"]["compute_saved"]) == 0.4
    assert float(rows["patience2"]["test_loss_vs_none_p"]) == 0.0002
    assert rows["patience3"]["selection_eval_loss"] == "" and rows["patience3"]["distinct_2"] == ""
    assert float(rows["base"]["fluency_perplexity"]) == 900.0


def test_warnings_come_first_then_findings_then_the_rest(tmp_path: Path) -> None:
    html, markdown = render(known_summary(), tmp_path)
    warnings = known_summary()["warnings"]
    positions = [html.index(w) for w in warnings]
    sections = [html.index(f'id="{s}"') for s in ("findings", "plots", "comparison", "samples", "provenance")]
    assert html.index('class="warnings"') < min(positions) and max(positions) < sections[0]
    assert sections == sorted(sections)
    assert markdown.index(warnings[1]) < markdown.index("## Findings") < markdown.index("## Comparison")
    assert "Warnings (2)" in html


def test_plots_are_embedded_and_written_as_the_same_valid_pngs(tmp_path: Path) -> None:
    html, _ = render(known_summary(), tmp_path)
    files = sorted((tmp_path / "plots").glob("*.png"))
    assert [f.name for f in files] == sorted(["loss_curves.png", "tradeoff.png", "metrics.png",
                                              "generalization_gap.png"])
    embedded = embedded_pngs(html)
    assert sorted(embedded) == sorted(f.read_bytes() for f in files)
    for png in embedded:
        assert png.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(png)) as image:
            image.load()  # decodes every pixel: a truncated file raises here
            assert image.width >= 1000 and image.height >= 300
    assert "http://" not in html and "https://" not in html and "<link" not in html  # self-contained


def test_samples_are_escaped_and_base_comes_first(tmp_path: Path) -> None:
    html, _ = render(known_summary(), tmp_path)
    assert "<script>" not in html and "<b>ball" not in html
    assert "xq zz &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "they played &lt;b&gt;ball&lt;/b&gt;." in html and "Tom &amp; Lily" in html
    first = html[html.index("Prompt 1:"):html.index("Prompt 2:")]
    titles = re.findall(r"<h4>([^<]+)</h4>", first)
    assert titles == ["reference", "base", "none", "patience2"]


def test_same_arm_same_colour_in_every_plot() -> None:
    summary = known_summary()
    colors = arm_colors(summary)
    assert list(colors) == ["none", "patience2", "patience3"] and len(set(colors.values())) == 3
    figure = report.plot_loss_curves(summary, colors)
    for ax, name in zip(figure.axes, colors):
        arm_lines = {line.get_color() for line in ax.get_lines() if line.get_color() not in ("#bbbbbb", "black")}
        assert arm_lines <= {colors[name]}, name
    tradeoff = report.plot_tradeoff(summary, colors)
    bar_colors = {c.get_color() for c in tradeoff.axes[0].get_lines() if c.get_linestyle() == "None"}
    assert bar_colors == set(colors.values())
    gap = report.plot_gap(summary, colors)
    assert {line.get_color() for line in gap.axes[0].get_lines() if line.get_linewidth() == 2} <= set(colors.values())
    assert len(set(arm_colors(wide_summary(15)).values())) == 15


def test_fifteen_arms_by_three_seeds_have_no_overlapping_labels() -> None:
    summary = wide_summary(15, 3)
    colors = arm_colors(summary)
    for figure in (report.plot_loss_curves(summary, colors), report.plot_tradeoff(summary, colors),
                   report.plot_metrics(summary, colors, metric_keys(summary)),
                   report.plot_gap(summary, colors)):
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        visible = [ax for ax in figure.axes if ax.get_visible()]
        titles = [ax.title.get_window_extent(renderer) for ax in visible if ax.get_title()]
        for i, a in enumerate(titles):
            assert not any(a.overlaps(b) for b in titles[i + 1:])
        (legend,) = figure.legends
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in visible)
        assert not [t for ax in visible for t in ax.texts if "patience" in t.get_text()]  # no per-point labels


def test_mean_curve_uses_only_tokens_every_seed_reached() -> None:
    curves = [{"history": [{"tokens": 10, "eval_loss": 6.0}, {"tokens": 20, "eval_loss": 5.0},
                           {"tokens": 30, "eval_loss": 4.0}]},
              {"history": [{"tokens": 10, "eval_loss": 8.0}, {"tokens": 20, "eval_loss": None}]}]
    assert mean_series(curves, "eval_loss") == ([10.0], [7.0])
    assert mean_series([], "eval_loss") == ([], [])


def test_dodge_separates_only_coinciding_points() -> None:
    spread = dodge([100.0, 100.0, 200.0, 300.0])
    assert spread[0] < 100.0 < spread[1] and spread[2:] == [200.0, 300.0]
    assert spread[1] - spread[0] == pytest.approx(0.006 * 200.0)
    assert dodge([]) == [] and dodge([5.0]) == [5.0]


def test_missing_pieces_render_without_error(tmp_path: Path) -> None:
    summary = known_summary()
    summary["base"] = None
    summary["samples"] = []
    summary["warnings"] = []
    summary["metric_info"] = {}
    for arm in summary["arms"]:
        arm.update(metrics={}, vs_base={}, curves=[], test_loss=None, train_tokens=None, stop_step=None)
    html, markdown = render(summary, tmp_path / "bare")
    assert "No samples." in html and 'class="warnings"' not in html
    assert "| none | 2 | – | 300 | 0% | – | 0% | 5.91 | – | – | – | – | – |" in markdown
    assert sorted(p.name for p in (tmp_path / "bare" / "plots").iterdir()) == [
        "generalization_gap.png", "loss_curves.png", "tradeoff.png"]
    assert "Generation metrics" not in html and "| base |" not in markdown
    # NaN from the statistics (e.g. one story) and an entirely empty dict.
    nan_summary = json.loads(json.dumps(known_summary()).replace("5.398", "NaN"))
    assert "| patience2 | 2 | 180 | 140 | 100% | 92,160 | 40% | 5.40 | – |" in render(nan_summary, tmp_path / "nan")[1]
    html, markdown = render({}, tmp_path / "empty")
    assert "No finished cells" in html and "No finished cells" in markdown


def test_no_finished_cell_gives_a_clear_message_not_plots(tmp_path: Path) -> None:
    summary = known_summary()
    summary["arms"] = [dict(arm, n_seeds=0, seeds=[], curves=[]) for arm in summary["arms"]]
    summary["cells"] = {"expected": 6, "finished": 0, "failed": ["none-seed1-ab12cd34"], "missing_evals": []}
    summary["findings"] = []
    summary["warnings"] = ["6 cells failed"]
    html, markdown = render(summary, tmp_path)
    assert 'id="no-results"' in html and "No finished cells" in html and "none-seed1-ab12cd34" in html
    assert html.index("6 cells failed") < html.index("No finished cells")
    assert "<img" not in html and 'id="comparison-table"' not in html
    assert list((tmp_path / "plots").iterdir()) == [] and plot_files(summary) == {}
    assert "**No finished cells" in markdown and "## Comparison" not in markdown


def test_rerendering_removes_plots_that_no_longer_apply(tmp_path: Path) -> None:
    render(known_summary(), tmp_path)
    assert (tmp_path / "plots" / "metrics.png").exists()
    summary = known_summary()
    summary["base"]["metrics"] = {}
    for arm in summary["arms"]:
        arm["metrics"] = {}
    render(summary, tmp_path)
    assert not (tmp_path / "plots" / "metrics.png").exists()
    assert (tmp_path / "plots" / "tradeoff.png").exists()


def test_rendering_is_deterministic() -> None:
    assert plot_files(known_summary()) == plot_files(known_summary())


def test_holm_p_decides_the_colour_and_fluency_and_set_metrics_are_shown_as_measured() -> None:
    from storytune.study.report.tables import metric_rows, set_metric_rows
    from storytune.study.report.text import render_markdown

    # Raw p < 0.05 but Holm-adjusted above it: not a finding, so no colour.
    assert verdict({"ci_low": -0.02, "ci_high": -0.004, "p_value": 0.01, "p_holm": 0.2}, False) == ""
    assert verdict({"ci_low": -0.02, "ci_high": -0.004, "p_value": 0.001, "p_holm": 0.01}, False) == "better"
    summary = known_summary()
    summary["metric_info"]["fluency_nll"] = {"label": "scorer NLL", "higher_is_better": False, "unit": "nats/token"}
    summary["arms"][0]["metrics"]["fluency_nll"] = {"mean": math.log(20.0), "ci_low": math.log(18.0),
                                                     "ci_high": math.log(22.0)}
    summary["set_metric_info"] = {"self_bleu": {"label": "self-BLEU-4 (set)", "higher_is_better": False, "unit": ""}}
    summary["arms"][0]["set_metrics"] = {"self_bleu": {"mean": 0.31, "ci_low": 0.29, "ci_high": 0.33}}
    header, rows = metric_rows(summary, ["fluency_nll"])
    assert header[1] == "scorer perplexity (exp mean NLL)" and rows[1][1] == "20.0 [18.0, 22.0]"
    s_header, s_rows = set_metric_rows(summary)
    assert s_header == ["arm", "self-BLEU-4 (set)"] and s_rows == [["none", "0.310 [0.290, 0.330]"]]
    assert "### Set-level metrics" in render_markdown(summary)
