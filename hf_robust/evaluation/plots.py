"""Figures of evaluation results, written as PNG files with matplotlib's Agg canvas (no display, no pyplot state)."""

import math
import os
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path

BUDGET_UNITS = {"embedding": "attack steps", "gcg": "GCG iterations", "universal-gcg": "GCG iterations"}


def _checked_rows(rows) -> list[dict]:
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence) or len(rows) == 0:
        raise ValueError("`rows` must be a non-empty list of {'eps', 'steps', 'asr'} mappings "
                         "(what attack_budget_sweep returns).")
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping) or not all(
            isinstance(row.get(key), Real) and not isinstance(row.get(key), bool) and math.isfinite(row[key])
            for key in ("eps", "steps", "asr")
        ):
            raise ValueError(f"`rows[{index}]` must have finite numbers 'eps', 'steps' and 'asr', got {row!r}.")
    return list(rows)


def plot_budget_sweep(rows: Sequence[Mapping], path: str | os.PathLike, title: str | None = None) -> Path:
    """Attack success rate against attack steps, one line per eps, written to `path` as a PNG.

    Args:
        rows: {"eps", "steps", "asr"} mappings, as `attack_budget_sweep` returns.
        path: The PNG file to write (its folder is created); the format is PNG whatever the suffix.
        title: Figure title; none by default.

    Returns:
        `path` as a `Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _checked_rows(rows)
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"`path` must be a file path, got {path!r}.")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"`title` must be a string or None, got {type(title).__name__}.")
    path = Path(path)
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)  # attaches the Agg canvas: no GUI backend is ever touched
    axes = figure.add_subplot()
    for eps in sorted({row["eps"] for row in rows}):
        points = sorted((row["steps"], row["asr"]) for row in rows if row["eps"] == eps)
        axes.plot([steps for steps, _ in points], [asr for _, asr in points], marker="o", label=f"eps {eps:g}")
    axes.set_xlabel("attack steps")
    axes.set_ylabel("attack success rate")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _figure(rows: int, columns: int, width: float = 5.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height * rows), dpi=100)
    FigureCanvasAgg(figure)  # Agg only: no display, no pyplot state
    return figure


def _panels(outcomes: list, path: str | os.PathLike, empty: str, draw) -> Path:
    """One panel per outcome, drawn by `draw(axes, outcome)`, saved as a PNG (a note instead when there is none)."""
    figure = _figure(1, max(1, len(outcomes)))
    for column, outcome in enumerate(outcomes):
        axes = figure.add_subplot(1, len(outcomes), column + 1)
        draw(axes, outcome)
        axes.set_xlabel(BUDGET_UNITS[outcome.kind])
        axes.grid(alpha=0.3)
    if not outcomes:
        axes = figure.add_subplot()
        axes.text(0.5, 0.5, empty, ha="center", va="center")
        axes.set_axis_off()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def plot_budget_curves(outcomes: dict, path: str | os.PathLike) -> Path:
    """Attack success rate against the attack's budget (steps or iterations), one panel per attack.

    Args:
        outcomes: {name: `AttackOutcome`}, as `evaluate_robustness` returns.
        path: The PNG file to write (its folder is created).
    """
    def draw(axes, outcome):
        axes.step(outcome.budget, outcome.budget_success_rate, where="post")
        axes.set_ylabel("attack success rate")
        axes.set_ylim(-0.02, 1.02)
        axes.set_title(outcome.name)

    attacked = [outcome for outcome in outcomes.values() if outcome.budget]
    return _panels(attacked, path, "no attack with a budget was run", draw)


def plot_loss_curves(outcomes: dict, path: str | os.PathLike) -> Path:
    """Each behaviour's attack loss (target cross-entropy) against steps/iterations, one panel per attack."""
    def draw(axes, outcome):
        seen = set()
        for row in outcome.rows:
            history = row["loss_history"]
            if id(history) in seen:  # a universal attack shares one curve
                continue
            seen.add(id(history))
            axes.plot(range(len(history)), history, color="tab:red" if row["success"] else "tab:blue", alpha=0.5,
                      linewidth=1)
        axes.set_ylabel("target cross-entropy")
        axes.set_title(f"{outcome.name} (red: broken)")

    attacked = [outcome for outcome in outcomes.values() if outcome.kind != "clean"]
    return _panels(attacked, path, "only the clean attack was run", draw)
