from __future__ import annotations

import pytest

from storytune.study.compare import ExpectedCell, compare, to_console, to_csv, to_markdown


def result(tokens: int, stop: int, loss: float, early: bool) -> dict:
    return {"train_tokens_seen": tokens, "stop_step": stop, "stopped_early": early, "best_eval_loss": loss,
            "final_eval_loss": loss + 0.1, "wall_time_s": stop / 10, "base_eval_loss": 10.0}


def test_compute_saved_is_relative_to_none_and_failures_are_listed() -> None:
    expected = [ExpectedCell("n1", "none", 1), ExpectedCell("n2", "none", 2),
                ExpectedCell("p1", "patience2", 1), ExpectedCell("p2", "patience2", 2)]
    results = {"n1": result(1000, 100, 5.0, False), "n2": result(1000, 100, 5.2, False),
               "p1": result(400, 40, 5.1, True)}
    evals = {"n1": {"metrics": {"diversity": {"mean": 0.5}}}, "p1": {"metrics": {"diversity": {"mean": 0.7}}}}
    base = {"metrics": {"diversity": {"mean": 0.9}}}
    comparison = compare(expected, results, evals, base)
    none, patience = comparison.rows
    assert none.compute_saved == pytest.approx(0.0)
    assert patience.compute_saved == pytest.approx(0.6)
    assert patience.seeds_done == 1 and patience.seeds_failed == ["p2"]
    assert comparison.failed == ["p2"]
    assert none.kept_eval_loss == pytest.approx(5.2)
    assert patience.metric_deltas["diversity"] == pytest.approx(-0.2)
    assert comparison.base_eval_loss == 10.0
    markdown = to_markdown(comparison, "t")
    assert "| base |" in markdown and "Failed cells" in markdown and "60%" in markdown
    assert to_csv(comparison).splitlines()[0].startswith("variant,seeds,stop step")
    assert "patience2" in to_console(comparison)


def test_no_none_arm_means_no_saving_figure() -> None:
    comparison = compare([ExpectedCell("p", "patience1", 1)], {"p": result(10, 1, 1.0, True)}, {}, None)
    assert comparison.rows[0].compute_saved is None
