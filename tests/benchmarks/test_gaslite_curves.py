"""`benchmarks/gaslite_curves.py`: the times at which a search reached each passage, and the per-search plot."""

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gaslite_curves as curves  # noqa: E402


def search(history, iteration_seconds, overhead, reason):
    return SimpleNamespace(objective_history=history, iteration_seconds=iteration_seconds,
                           seconds=overhead + sum(iteration_seconds), stop_reason=reason,
                           iterations=len(iteration_seconds))


def test_reached_at_starts_after_the_overhead_and_adds_each_iteration():
    assert curves.reached_at(search([0.1, 0.5, 0.6], [2.0, 3.0], 1.5, "patience")) == [1.5, 3.5, 6.5]


def test_plot_histories_writes_one_png_for_all_searches(tmp_path):
    path = tmp_path / "histories.png"
    results = [search([0.1, 0.5, 0.6, 0.6], [2.0, 3.0, 1.0], 1.0, "patience"),
               search([0.2, 0.7], [4.0], 0.5, "time_limit")]
    curves.plot_histories(results, str(path), "two searches")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
