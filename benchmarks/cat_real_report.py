"""The report of `cat_real.py`'s record: the Markdown table (mean ± std over seeds, the targets beside, what each
model trained on) and the PNG (rates per model, the strong attack's success against its steps)."""

from pathlib import Path


def plot(record: dict, path: Path) -> None:
    """Bars of the four rates per model (mean over seeds, points per seed) and the strong attack's success against
    its steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variants = [v for v in ("base", "safety-tuned", "control", "cat", "capo")
                if any(v in s for s in record["seeds"].values())]
    metrics = [("clean_refusal", "clean refusal"), ("training_attack_asr", "training-attack ASR"),
               ("strong_asr", "strong embedding ASR"), ("gcg_asr", "GCG ASR"), ("over_refusal", "benign over-refusal")]
    figure = Figure(figsize=(12, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    bars, curves = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    width = 0.8 / len(variants)
    for index, variant in enumerate(variants):
        runs = [s[variant] for s in record["seeds"].values() if variant in s]
        for position, (key, _) in enumerate(metrics):
            values = [run[key] for run in runs if key in run]
            if values:
                x = position + (index - (len(variants) - 1) / 2) * width
                bars.bar(x, sum(values) / len(values), width, color=f"C{index}",
                         label=variant if position == 0 else None)
                bars.scatter([x] * len(values), values, color="black", s=8, zorder=3)
        budgets = [run["strong_budget"] for run in runs if "strong_budget" in run]
        if budgets:
            budget = [sum(values) / len(values) for values in zip(*budgets)]
            curves.plot(range(len(budget)), budget, color=f"C{index}", label=variant)
    bars.set_xticks(range(len(metrics)), [name for _, name in metrics], fontsize=8)
    bars.set_ylim(0, 1.05)
    bars.set_ylabel("rate")
    bars.legend(fontsize=8)
    if not curves.lines:
        curves.text(0.5, 0.5, "strong attack not measured in this run", ha="center", va="center")
    curves.set_xlabel("strong embedding attack steps")
    curves.set_ylabel("attack success rate (held-out AdvBench)")
    curves.set_ylim(-0.02, 1.02)
    if curves.lines:
        curves.legend(fontsize=8)
    curves.grid(alpha=0.3)
    figure.suptitle("SmolLM2-135M-Instruct: control SFT vs CAT vs CAPO from one safety-tuned checkpoint")
    figure.tight_layout()
    figure.savefig(path, format="png")


def table(record: dict) -> str:
    """Markdown: one row per model, mean ± std over seeds, the targets beside."""
    import statistics

    keys = [("clean_refusal", "clean refusal"), ("training_attack_asr", "training-attack ASR"),
            ("strong_asr", "strong emb. ASR"), ("gcg_asr", "GCG ASR"),
            ("over_refusal", "over-refusal"), ("utility_nll", "utility NLL"), ("seconds_per_step", "s/step")]
    lines = ["| model | " + " | ".join(name for _, name in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for variant in ("base", "safety-tuned", "control", "cat", "capo"):
        runs = [seed[variant] for seed in record["seeds"].values() if variant in seed]
        if not runs:
            continue
        cells = []
        for key, _ in keys:
            values = [run[key] for run in runs if key in run]
            if not values:
                cells.append("–")
                continue
            mean = statistics.fmean(values)
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{mean:.0%}{spread}" if key.endswith(("asr", "refusal")) else f"{mean:.2f}{spread}")
        lines.append(f"| {variant} ({len(runs)} seed{'s' if len(runs) > 1 else ''}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def data_description(mix: str) -> str:
    """What each model trains on under `mix` (`training_data`), so a reader can weigh the rows of the table."""
    if mix == "paper":
        return ("Rows per model (`--paper-mix`, the reference code's mixing): the control and CAT draw each row "
                "harmful with probability 0.125 (an AdvBench-train prompt: a refusal for the control; for CAT toward "
                "its refusal and away from its affirmative target, under the training attack), else a self-distilled "
                "benign answer. CAPO trains on (refusal preferred over the affirmative target) pairs of "
                "AdvBench-train prompts only, as the reference's IPO config does (no utility rows): the same data "
                "under either mix, so from the same checkpoint and seed it is the same model, measured in the "
                "`control-rows` record (`cat_effect_smollm2_cpu.md`) and not trained again here.")
    return ("Rows per model: the control is SFT on the AdvBench-train refusals and the self-distilled benign answers, "
            "shuffled together (416 refusals, 138 benign: 75% refusals). CAT draws each row adversarial with "
            "probability 0.5 (an AdvBench-train prompt: toward its refusal and away from its affirmative target, "
            "under the training attack), else a utility row from the control's rows, so about 12.5% of its rows are "
            "benign answers (the control: 25%; the reference code: 87.5%, UltraChat; `--paper-mix` runs that "
            "mixing). CAPO trains on (refusal preferred over the affirmative target) pairs of AdvBench-train prompts "
            "only, as the reference's IPO config does (no utility rows).")


def write_markdown(record: dict, path: Path) -> None:
    """The table, the targets, what was measured how, every machine a model was measured on, and which models are
    not measured yet (a resumable record: `cat_effect.py --model smollm2 --resume`)."""
    runs = [run for seed in record["seeds"].values() for run in seed.values()]
    machines = sorted({run.get("machine", record["machine"]) for run in runs})
    targets = "; ".join(f"{name} {target}" for name, target in record["targets"].items())
    evaluation, attack = record["evaluation"], record["training_attack"]
    first = next(iter(record["seeds"]), None)  # the base model is measured once, with the first seed
    # CAPO's data does not depend on the mix (`data_description`): a `paper` record does not wait for it.
    expected = ("base", "safety-tuned", "control", "cat") + (() if record.get("data_mix") == "paper" else ("capo",))
    missing = {seed: [name for name in expected if name not in models and (name != "base" or seed == first)]
               for seed, models in record["seeds"].items()}
    missing = "; ".join(f"seed {seed}: {', '.join(names)}" for seed, names in missing.items() if names)
    path.write_text(
        f"# CAT / CAPO on SmolLM2-135M-Instruct ({', '.join(machines)})\n\n"
        f"{record['model']}. Safety tuning: {record['steps']['safety']} LoRA steps (r {record['lora']['r']}) on "
        f"AdvBench-train refusals and self-distilled benign answers, merged; then control SFT, CAT and CAPO, "
        f"{record['steps']['variants']} steps each from that checkpoint on the same data (training attack: eps "
        f"{attack['attack_eps']} {attack['attack_eps_mode']}, {attack['attack_steps']} {attack['attack_optimizer']} "
        f"steps). Measured on {evaluation['held_out_behaviours']} held-out behaviours (strong embedding attack "
        f"`{evaluation['strong']['name']}`; GCG `{evaluation['gcg']['name']}` on the first "
        f"{evaluation['gcg_behaviours']}) and {evaluation['benign_test']} benign requests (over-refusal, utility "
        f"NLL); judge {evaluation['judge']}; greedy 32-token answers. Training-attack ASR: the training attack "
        f"itself on the held-out behaviours (as strong as training; the targets are read at the strong attack). "
        f"s/step: training seconds per step.\n\n"
        f"{data_description(record.get('data_mix', 'control-rows'))}\n\n"
        f"{table(record)}\n\nTargets: {targets}.\n"
        + (f"\nNot measured yet ({missing}): no number is claimed for them. Each model is a stage saved in the "
           "work folder, so `benchmarks/cat_effect.py --model smollm2 --resume` (same settings) goes on from the "
           "first missing one.\n" if missing else ""))
