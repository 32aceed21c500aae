"""CAT's training budget against robustness and over-refusal: the trade-off across `cat_real.py` records that differ
only in the training attack (`--eps`, `--attack-steps`) and in the training length (`--steps`), read on the seeds they
share (so every point starts from the same safety-tuned checkpoints). Each training length's control (the same rows,
no attack; from the first record of that length that has one) is its no-attack point.

    python benchmarks/cat_budget.py --records cat_effect_smollm2_papermix_cpu cat_effect_smollm2_papermix_eps05_cpu \
        --name cat_budget_smollm2_papermix_cpu

writes RESULTS/NAME.{json,md,png}. Every model is scored with the same `strong` attack (eps 1.0 relative, 100 Adam
steps), at least as strong as every training attack here; `training-attack ASR` is each model's own training attack.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from hf_robust.cat.arguments import AttackArguments
from hf_robust.evaluation.presets import require_at_least_as_strong

sys.path.insert(0, str(Path(__file__).parent))
from cat_real_record import RESUMED_SETTINGS  # noqa: E402
from cat_real_report import steps_to_reach  # noqa: E402
from tables import write_result  # noqa: E402

# Settings that may differ between the records compared (everything else must agree; of "steps", the safety tuning's).
VARIED = ("training_attack", "steps")
# The metrics of each point, in table order, with their column headers.
METRICS = {
    "strong_asr": "strong emb. ASR", "strong_judged_asr": "strong emb. ASR, target or judge",
    "strong_extended_judged_asr": "strong emb. ASR, target or extended judge",
    "strong_steps_to_50": "strong steps to 50%", "strong_20_asr": "strong at 20 steps",
    "strong_20_judged_asr": "strong at 20 steps, target or judge",
    "strong_20_extended_judged_asr": "strong at 20 steps, target or extended judge",
    "training_attack_asr": "own training-attack ASR",
    "training_attack_judged_asr": "own training-attack ASR, target or judge",
    "training_attack_extended_judged_asr": "own training-attack ASR, target or extended judge",
    "gcg_asr": "GCG ASR", "over_refusal": "over-refusal", "over_refusal_extended": "over-refusal, extended judge",
    "clean_refusal": "clean refusal", "clean_refusal_extended": "clean refusal, extended judge",
    "utility_nll": "utility NLL",
}


def shared_seeds(records: list[dict]) -> list[str]:
    """The seeds whose safety-tuned checkpoint every record measured a CAT model from."""
    seeds = [{seed for seed, models in record["seeds"].items() if "cat" in models} for record in records]
    return sorted(set.intersection(*seeds), key=int) if seeds else []


def check_comparable(records: list[dict], names: list[str]) -> None:
    """The records must differ only in the training attack and length (and in how many behaviours GCG ran on, a
    separate column): else their points are not one trade-off."""
    safety = {record["steps"]["safety"] for record in records}
    if len(safety) > 1:
        raise SystemExit(f"--records: {names} differ in the safety tuning's steps {sorted(safety)}; every point must "
                         "start from the same safety-tuned checkpoint")
    for key in RESUMED_SETTINGS:
        if key in VARIED:
            continue
        values = {json.dumps(record.get(key), sort_keys=True) if key != "evaluation" else
                  json.dumps({**record[key], "gcg_behaviours": None}, sort_keys=True) for record in records}
        if len(values) > 1:
            raise SystemExit(f"--records: {names} differ in {key!r}; only the training attack and steps may differ")


def point(models: list[dict], training_steps: int, eps: float, attack_steps: int, label: str) -> dict:
    """Mean over seeds of one model's measurements, with the strong attack's steps to 50% success per seed."""
    result = {"training_steps": training_steps, "training_eps": eps, "training_attack_steps": attack_steps,
              "model": label, "seeds": len(models)}
    for key in METRICS:
        if key == "strong_steps_to_50":
            values = [steps_to_reach(model["strong_budget"], 0.5) for model in models if "strong_budget" in model]
            if None in values:  # a seed the attack never took to 50%: no mean of steps
                result[key] = None
                continue
        elif key == "strong_20_asr":  # the full attack's curve at 20 steps (its iterates are the short attack's)
            values = [model["strong_budget"][20] for model in models if len(model.get("strong_budget", ())) > 20]
        else:
            values = [model[key] for model in models if key in model]
        if values:
            result[key] = statistics.fmean(values)
    return result


def tradeoff(records: list[dict], names: list[str]) -> dict:
    """Each training length's control (no attack) and each record's CAT, on their shared seeds, by budget."""
    check_comparable(records, names)
    for record, name in zip(records, names):  # the yardstick must not be weaker than any training attack
        require_at_least_as_strong("strong", AttackArguments(**record["training_attack"]).attack_config(),
                                   f"--records {name}")
    seeds = shared_seeds(records)
    if not seeds:
        raise SystemExit(f"--records: {names} share no seed with a measured CAT model")
    points, controls = [], set()
    for record in records:
        length = record["steps"]["variants"]
        if length not in controls and all("control" in record["seeds"][seed] for seed in seeds):
            controls.add(length)
            points.append(point([record["seeds"][seed]["control"] for seed in seeds], length, 0.0, 0, "control"))
        eps, attack_steps = record["training_attack"]["attack_eps"], record["training_attack"]["attack_steps"]
        points.append(point([record["seeds"][seed]["cat"] for seed in seeds], length, eps, attack_steps,
                            f"CAT eps {eps:g}, {attack_steps} attack steps"))
    first = records[0]
    return {"records": names, "seeds": seeds, "data_mix": first.get("data_mix"), "evaluation": first["evaluation"],
            "points": sorted(points, key=budget)}


def budget(item: dict) -> tuple[int, float, int]:
    return item["training_steps"], item["training_eps"], item["training_attack_steps"]


def budget_label(item: dict, lengths: int = 1) -> str:
    """The tick of one point: "control" or "eps / attack steps", and its training steps where lengths differ."""
    label = "control" if item["training_attack_steps"] == 0 else \
        f"{item['training_eps']:g} / {item['training_attack_steps']}"
    return label if lengths == 1 else f"{label}\n{item['training_steps']} steps"


AXIS = "CAT training attack (eps relative / Adam steps; 0 = control SFT)"


def plot(result: dict, path: Path):
    """Rates and the strong attack's steps to 50% against the training budget, one tick per point in budget order
    (training steps, radius, attack steps); a line per training length. Returns the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(11.0, 1.6 * len(result["points"])), 4.8), dpi=100)  # room for every tick
    FigureCanvasAgg(figure)
    rates, steps = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    points = result["points"]
    lengths = sorted({item["training_steps"] for item in points})
    positions, labels = range(len(points)), [budget_label(item, len(lengths)) for item in points]

    def lines(axes, key, color, name=None):
        labelled = False  # the legend names a metric once, from the first length that measured it
        for group, length in enumerate(lengths):  # no line joins two training lengths
            xy = [(position, item[key]) for position, item in zip(positions, points)
                  if item["training_steps"] == length and item.get(key) is not None]
            if xy:
                axes.plot(*zip(*xy), marker="os^D"[group % 4], color=color, label=None if labelled else name)
                labelled = True

    for index, (key, name) in enumerate([("strong_asr", "strong embedding ASR"),
                                         ("strong_judged_asr", "strong embedding ASR, target or judge"),
                                         ("strong_20_judged_asr", "strong at 20 steps, target or judge"),
                                         ("strong_20_extended_judged_asr",
                                          "strong at 20 steps, target or extended judge"),
                                         ("gcg_asr", "GCG ASR"), ("training_attack_asr", "own training-attack ASR"),
                                         ("training_attack_judged_asr", "own training-attack ASR, target or judge"),
                                         ("over_refusal", "benign over-refusal"), ("clean_refusal", "clean refusal"),
                                         ("clean_refusal_extended", "clean refusal, extended judge")]):
        lines(rates, key, f"C{index}", name)
    rates.set_xlabel(AXIS)
    rates.set_ylabel("rate")
    rates.set_ylim(-0.02, 1.05)
    rates.set_xticks(positions, labels, fontsize=8)
    rates.grid(alpha=0.3)
    figure.legend(loc="lower center", ncol=5, fontsize=8)  # below the axes: it hid points inside them
    lines(steps, "strong_steps_to_50", "C0")
    steps.set_xlabel(AXIS)
    steps.set_ylabel("strong-attack steps to 50% success")
    steps.set_xticks(positions, labels, fontsize=8)
    steps.grid(alpha=0.3)
    figure.suptitle(f"SmolLM2-135M-Instruct, {result['data_mix']} mix, seed(s) {', '.join(result['seeds'])}: "
                    "CAT's training budget against robustness and over-refusal")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, format="png")
    return figure


def markdown(result: dict) -> str:
    header = ["model", "training steps", "training eps", "attack steps", *METRICS.values()]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for item in result["points"]:
        cells = [item["model"], str(item["training_steps"]), f"{item['training_eps']:g}",
                 str(item["training_attack_steps"])]
        for key in METRICS:
            value = item.get(key)
            if key == "strong_steps_to_50" and key in item and value is None:
                cells.append("not reached")
                continue
            rate = key.endswith(("asr", "refusal", "refusal_extended"))
            cells.append("–" if value is None else f"{value:.0%}" if rate
                         else f"{value:.2f}" if key == "utility_nll" else f"{value:g}")
        lines.append("| " + " | ".join(cells) + " |")
    strong = result["evaluation"]["strong"]["description"].rstrip(".")
    return (f"# CAT's training budget: robustness against over-refusal (SmolLM2-135M-Instruct)\n\n"
            f"Records: {', '.join(f'`{name}`' for name in result['records'])}; seeds {', '.join(result['seeds'])} "
            f"(the ones they share, so every model starts from the same safety-tuned checkpoint); data mix "
            f"`{result['data_mix']}`. Each model trains for the training steps shown; its attack takes the attack "
            f"steps shown (Adam), in the L2 ball of the radius shown (relative to each token's embedding norm). "
            f"Every model is scored with the `strong` attack ({strong}), the same for all and at least as strong as "
            f"every training attack; `own training-attack ASR` is each CAT model's own training attack (the "
            f"control's: that of the record it comes from); GCG where measured. An embedding attack breaks a "
            f"behaviour when at some iterate every target token is the argmax (target forcing; the steps to 50% "
            f"count this); \"target or judge\" also when the refusal judge passes the greedy reply under its last "
            f"iterate (it also passes broken refusals and incoherent replies: the two bracket the attack's success; "
            f"each record's JSON keeps the replies); \"extended judge\": the stricter `refusal-substrings-extended` "
            f"judge (GCG's list, plus phrases such as \"can't help\" in any case; empty replies refused), applied "
            f"to the kept replies and to fresh clean answers. \"Strong at 20 steps\": the strong attack stopped after "
            f"20 steps (target forcing read from the full attack's curve; judged on a 20-step run, whose iterates are "
            f"the full attack's first). Means over the seeds.\n\n"
            + "\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", nargs="+", required=True, help="record names in --results-dir (JSON)")
    parser.add_argument("--name", required=True, help="output: RESULTS_DIR/NAME.{json,md,png}")
    parser.add_argument("--results-dir", dest="results_dir", default=str(Path(__file__).parent / "results"))
    options = parser.parse_args()
    results = Path(options.results_dir)
    paths = [results / f"{name}.json" for name in options.records]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise SystemExit(f"--records: no such record {missing}")
    result = tradeoff([json.loads(path.read_text()) for path in paths], options.records)
    write_result(results, options.name, result, markdown(result), plot)


if __name__ == "__main__":
    main()
