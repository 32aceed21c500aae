"""Time-to-quality for `gaslite_effect.py`: held-out appeared@1/@10 and MRR@10 of an attack's passage against the
seconds the attack had spent when it held that passage, and what GASLITE's patience rule would have stopped at.

A searched attack's result (`GasliteResult`) carries `passage_history[t]` (the passage after iteration t),
`iteration_seconds` and `seconds`; the passage held at time s is the last one reached by s, where iteration t is
reached at `overhead + sum(iteration_seconds[:t])` (overhead = `seconds - sum(iteration_seconds)`: set-up, token
filter, initial scoring). Early stop only truncates a search (same seed, same trajectory: tested in
tests/retrieval/test_gaslite.py), so the patience rule applied to a full run's history gives the early-stopped run's
passage and time exactly.
"""

import math

PATIENCE_GRID = (1, 2, 3, 4, 5, 6, 8)
MIN_DELTA_GRID = (0.0005, 0.001, 0.002, 0.005)


def reached_at(result) -> list[float]:
    """Seconds since the attack started at which each entry of its history was reached: (iterations + 1,)."""
    times = [result.seconds - sum(result.iteration_seconds)]
    for seconds in result.iteration_seconds:
        times.append(times[-1] + seconds)
    return times


def held_at(times: list[float], grid: list[float]) -> list[int]:
    """For each time of `grid`, the index of the last history entry reached by then (0 if none yet)."""
    indices, index = [], 0
    for moment in grid:
        while index + 1 < len(times) and times[index + 1] <= moment:
            index += 1
        indices.append(index)
    return indices


class HeldOutScorer:
    """Held-out appeared@1/@10 and MRR@10 of single passages, each unique text encoded once."""

    def __init__(self, model, corpus_embeddings, queries, prompts):
        from hf_robust.retrieval.evaluate import encode_queries

        self.model, self.prompts, self.cache = model, prompts, {}
        query_embeddings = encode_queries(model, queries, prompt=prompts["query_prompt"])
        self.queries = query_embeddings
        self.clean = model.similarity(query_embeddings, corpus_embeddings)

    def __call__(self, passages: list[str]) -> list[dict]:
        from hf_robust.retrieval.evaluate import encode_corpus, report_from_scores

        new = sorted({text for text in passages if text not in self.cache})
        if new:
            embeddings = encode_corpus(self.model, new, prompt=self.prompts["document_prompt"])
            scores = self.model.similarity(self.queries, embeddings)
            for column, text in enumerate(new):
                report = report_from_scores(self.clean, scores[:, [column]], ks=(1, 10))
                self.cache[text] = {"appeared@1": report.appeared_at[1], "appeared@10": report.appeared_at[10],
                                    "MRR@10": report.mrr_at_10}
        return [self.cache[text] for text in passages]


def curve(scorer, result, grid: list[float] | None = None) -> list[dict]:
    """Points {seconds, iteration, objective, appeared@1, appeared@10, MRR@10} of one attack's passage over time:
    at every iteration (grid None) or at the times of `grid` (for long searches such as HotFlip's)."""
    times = reached_at(result)
    indices = list(range(len(times))) if grid is None else sorted(set(held_at(times, grid)) | {len(times) - 1})
    metrics = scorer([result.passage_history[index] for index in indices])
    return [{"seconds": times[index], "iteration": index, "objective": result.objective_history[index], **values}
            for index, values in zip(indices, metrics)]


def stop_iteration(history: list[float], patience: int, min_delta: float) -> int | None:
    """The iteration at which `GasliteConfig(patience, min_delta)` stops a search whose similarity history (iterations
    + 1 values, non-decreasing) is `history`; None if it would run past the end of `history`. Uses the library's rule
    (`TokenSearchConfig.plateaued`) on the loss -similarity."""
    from hf_robust.attacks import TokenSearchConfig

    rule = TokenSearchConfig(patience=patience, min_delta=min_delta)
    best = []
    for value in history:
        best.append(min(best[-1], -value) if best else -value)
        if rule.plateaued(best):
            return len(best) - 1
    return None


def rule_table(points: list[dict], history: list[float]) -> list[list[str]]:
    """Rows of the patience grid: stop iteration, seconds, its share of the whole run, held-out metrics there and
    their change against the end of the run (`points` at every iteration, as `curve(grid=None)` gives)."""
    end = points[-1]
    rows = []
    for patience in PATIENCE_GRID:
        for min_delta in MIN_DELTA_GRID:
            stop = stop_iteration(history, patience, min_delta)
            if stop is None:
                rows.append([str(patience), f"{min_delta:g}", f"> {len(history) - 1}", "-", "-", "-", "-", "-"])
                continue
            point = points[stop]
            rows.append([str(patience), f"{min_delta:g}", str(stop), f"{point['seconds']:.0f}",
                         f"{point['seconds'] / end['seconds']:.0%}", f"{point['appeared@1']:.0%}",
                         f"{point['appeared@10']:.0%} ({100 * (point['appeared@10'] - end['appeared@10']):+.0f})",
                         f"{point['MRR@10']:.3f}"])
    return rows


def time_table(curves: dict[str, list[dict]], grid: list[float]) -> list[list[str]]:
    """Rows {attack} x {time of grid}: the held-out metrics of the passage each attack held at that time."""
    rows = []
    for name, points in curves.items():
        for moment in grid:
            held = [point for point in points if point["seconds"] <= moment]
            if not held:
                rows.append([name, f"{moment:.3g}", "-", "-", "-", "-"])
                continue
            point = held[-1]
            rows.append([name, f"{moment:.3g}", str(point["iteration"]), f"{point['appeared@1']:.0%}",
                         f"{point['appeared@10']:.0%}", f"{point['MRR@10']:.3f}"])
    return rows


def time_grid(end: float, count: int = 6) -> list[float]:
    """`count` times from about end / 2^(count - 1) to `end`, doubling (a log scale: early progress matters)."""
    return [end / 2 ** (count - 1 - index) for index in range(count)]


def plot(curves: dict[str, list[dict]], stops: dict[str, dict], path: str, title: str) -> None:
    """PNG: held-out appeared@1, appeared@10 and MRR@10 against seconds (log scale), one line per attack; `stops`
    marks early-stop points {label: point}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for axis, metric in zip(axes, ("appeared@1", "appeared@10", "MRR@10")):
        for name, points in curves.items():
            seconds = [max(point["seconds"], 1e-3) for point in points]
            axis.step(seconds, [point[metric] for point in points], where="post", label=name)
        for label, point in stops.items():
            axis.plot([point["seconds"]], [point[metric]], marker="o", linestyle="none", markersize=8, label=label)
        axis.set_xscale("log")
        axis.set_xlabel("seconds (attack's own wall-clock)")
        axis.set_ylabel(f"held-out {metric}")
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_histories(results, path: str, title: str) -> None:
    """PNG: each searched passage's objective against the seconds its search had spent (one line per cluster), its
    stop marked (X) and its reason (`patience`, `n_iters`, `time_limit`) in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    for index, result in enumerate(results):
        times = reached_at(result)
        line = axis.plot(times, result.objective_history, marker=".", markersize=4,
                         label=f"cluster {index + 1}: stop {result.stop_reason} @ {result.iterations}")[0]
        axis.plot(times[-1:], result.objective_history[-1:], marker="X", markersize=9, color=line.get_color())
    axis.set_xlabel("seconds (the search's own wall-clock)")
    axis.set_ylabel("objective (mean similarity to the cluster's queries)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def finite(value: float) -> float | None:
    """JSON-safe float."""
    return value if math.isfinite(value) else None


def time_to_quality(model, corpus_embeddings, held_out, results, config, rule, png, searched):
    """Tables (patience rule, quality against seconds) and a PNG for the 1-passage searches `results` {name:
    [GasliteResult]} (`searched[0]` GASLITE, the others HotFlips); `rule` (patience, min_delta). Returns the
    JSON-ready points."""
    from tables import print_table

    prompts = {"document_prompt": config.document_prompt, "query_prompt": config.query_prompt}
    scorer = HeldOutScorer(model, corpus_embeddings, held_out, prompts)
    (gaslite,) = results[searched[0]]
    full = curve(scorer, gaslite)
    end = full[-1]["seconds"]
    grid = time_grid(end)
    lines = {f"GASLITE, no early stop ({gaslite.iterations} it.)": full}
    for name in [name for name in searched[1:] if name in results]:
        (run,) = results[name]
        every = run.iterations <= 1000 and len(run.passage_history) == run.iterations + 1
        points = curve(scorer, run, None if every else time_grid(end, 100))
        lines[name.replace("same wall-clock", f"{run.iterations} it.")] = points
    print(f"\nPatience rule read off the GASLITE trajectory ({gaslite.iterations} iterations, {end:.0f} s, "
          f"{gaslite.stop_reason}): held-out metrics where it stops; (+x) = points against the end of the run")
    print_table(["patience", "min_delta", "stop iteration", "seconds", "share of run", "appeared@1", "appeared@10",
                 "MRR@10"], rule_table(full, gaslite.objective_history))
    stop = stop_iteration(gaslite.objective_history, *rule)
    stops, plotted = {}, dict(lines)
    if stop is not None:
        stops[f"GASLITE, early stop (patience {rule[0]}, min_delta {rule[1]:g}): iteration {stop}"] = full[stop]
        lines[f"GASLITE, early stop (patience {rule[0]}, min_delta {rule[1]:g})"] = full[: stop + 1]
    print("\nTime to quality: held-out metrics of the passage each attack held after that many seconds "
          "(iteration = the attack's own)")
    print_table(["attack", "seconds", "iteration", "appeared@1", "appeared@10", "MRR@10"],
                time_table(lines, grid))
    if png:
        plot(plotted, stops, png, f"all-MiniLM-L6-v2, 1 passage, {len(held_out)} held-out queries; GASLITE "
                    f"L={config.trigger_len}, n_grad={config.n_grad}, n_flip={config.n_flip}")
        print(f"curves written to {png}")
    return {"lines": lines, "rule": {"patience": rule[0], "min_delta": rule[1], "stop_iteration": stop}}
