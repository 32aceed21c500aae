"""Does adversarial training make concept erasure resist prompt attacks? ESD vs AdvUnlearn on the toy erasure task.

    python benchmarks/advunlearn_effect.py --results benchmarks/results/advunlearn_matched_cpu   # 5 seeds, ~10 min
    python benchmarks/advunlearn_effect.py --quick                # 1 seed, fewer iterations and attack steps
    python benchmarks/advunlearn_effect.py --seeds 10 --steps 80

Per seed (`hf_robust.erasure.demo.toy_erasure_experiment`): the toy model (tiny SD components taught that "church"
prompts shift the noise prediction, `hf_robust.erasure.toy`) is erased with ESD and with AdvUnlearn from the same
weights, with the same iterations, learning rate, retain prompts and retain weight. ESD is the same
`AdvUnlearnTrainer` with the attack disabled (attack_warmup = max_steps, so no iteration is attacked); AdvUnlearn
attacks every iteration (attack_warmup 0, 1 soft token, 30 Adam steps at the reference rate 1e-3, share_xt).

ESD is also read off at AdvUnlearn's retain error (`hf_robust.erasure.matching`): one ESD run per seed, up to 3x the
iterations, records its held-out retain error every iteration, and the iteration count whose retain error is nearest
AdvUnlearn's is the "matched" ESD; where the error jumps past AdvUnlearn's within one iteration, the weights are set
between the two iterations by bisection (a fractional iteration count, as if the last step were taken at a smaller
rate). Within ±10% counts as matched; the table says how many seeds were. So three
models per seed: ESD after the same iterations, ESD at AdvUnlearn's retain error, AdvUnlearn.

Measured on each erased model, against the original (taught) model:
- concept leakage d on 4 concept prompts unlearning never saw (unlearning sees only "church"): without attack, after
  the discrete attack (5-token prefix on the shared token search, UnlearnDiffAtk-style) and after the soft attack
  (1 soft token, 30 Adam steps at 1e-2: stronger than the training attack). d = mean_j MSE(eps_attacked,
  e_c_orig) / mean_j MSE(e_0_orig, e_c_orig): 0 = the original concept prediction (the concept is back), ~1 = no
  concept, ~(1 + eta)^2 = 4 the ESD target. Success rate: prompts with d < 0.5;
- retain error on held-out retain prompts (the toy model knows them; unlearning never sees them) and on the retain
  prompts unlearning used: sum_r MSE(eps_erased(r), eps_orig(r)) / sum_r MSE(eps_orig(r), eps_orig("")), 0 = intact.

The toy model is the same for every seed (its teaching is seeded 0); the seed changes unlearning (z_t, retain draws,
attack starts) and the evaluation attacks. Expected (the paper's direction): AdvUnlearn leaks less under attack at a
matched retain error. Prints tables of what was measured (`--results`: also JSON and a PNG of leakage under each
attack against retain error); asserts nothing.
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tables import mean_std, print_table  # noqa: E402 (benchmarks/ is on the path when run as a script)




LABELS = {"esd": "ESD, same iterations", "advunlearn": "AdvUnlearn, same iterations",
          "esd_matched": "ESD, matched pair", "advunlearn_matched": "AdvUnlearn, matched pair"}
ATTACKS = ("none", "discrete", "soft")


def plot(runs: list[dict], path: Path) -> None:
    """Leakage under each attack (one panel each) against held-out retain error: one point per seed and model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(ATTACKS), sharey=True)
    styles = {"esd": ("tab:gray", "s"), "advunlearn": ("tab:pink", "v"), "esd_matched": ("tab:blue", "o"),
              "advunlearn_matched": ("tab:red", "^")}
    for axis, attack in zip(axes, ATTACKS):
        for method in LABELS:
            color, marker = styles[method]
            axis.scatter([run[method]["retain_error"] for run in runs],
                         [run[method]["leakage"][attack] for run in runs], color=color, marker=marker,
                         label=LABELS[method], alpha=0.8)
        axis.set_title(f"attack: {attack}")
        axis.set_xlabel("retain error, held out (lower = better)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("concept leakage d (lower = concept back)")
    axes[-1].legend(fontsize=8)
    figure.suptitle("Toy erasure: ESD vs AdvUnlearn, one point per seed and model")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="unlearning iterations (default: TOY_ERASURE)")
    parser.add_argument("--attack_lr", type=float, default=None, help="learning rate of AdvUnlearn's inner attack")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 iterations, 5 discrete / 10 soft steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--results", default=None,
                        help="write RESULTS.json (every run) and RESULTS.png (leakage vs retain error), e.g. "
                             "benchmarks/results/advunlearn_matched_cpu")
    options = parser.parse_args(argv)
    import datasets
    import torch
    from transformers import logging

    from hf_robust.erasure.demo import COMPARED, TOY_ATTACK, TOY_ERASURE, describe_match, toy_erasure_experiment
    from hf_robust.erasure.matching import MATCH_TOLERANCE

    torch.set_num_threads(options.threads)
    datasets.disable_progress_bar()
    logging.set_verbosity_error()
    erasure, attack = {}, {}
    if options.quick:
        options.seeds = 1
        erasure, attack = {"steps": 20}, {"discrete_iters": 5, "soft_steps": 10}
    if options.steps is not None:
        erasure["steps"] = options.steps
    if options.attack_lr is not None:
        erasure["attack_lr"] = options.attack_lr
    runs, started = [], time.perf_counter()
    for seed in range(options.seeds):
        runs.append(toy_erasure_experiment(seed, erasure, attack))
        print(f"seed {seed}: " + ", ".join(
            f"{method} leakage {runs[-1][method]['leakage']['none']:.3f} / discrete "
            f"{runs[-1][method]['leakage']['discrete']:.3f} / soft {runs[-1][method]['leakage']['soft']:.3f} "
            f"(retain {runs[-1][method]['retain_error']:.3f})" for method in COMPARED)
            + f"; {describe_match(runs[-1])}", flush=True)
    settings, attack_settings = {**TOY_ERASURE, **erasure}, {**TOY_ATTACK, **attack}
    print(f"\ntoy tiny SD (concept 'church'); {settings['steps']} iterations per method (lr "
          f"{settings['learning_rate']}, retain weight {settings['retain_weight']}, {settings['ddim_steps']}-step "
          f"DDIM; AdvUnlearn: {settings['attack_steps']} attack steps at {settings['attack_lr']}); evaluation "
          f"attacks: discrete {attack_settings['num_adv_tokens']} tokens x {attack_settings['discrete_iters']} "
          f"iterations, soft 1 token x {attack_settings['soft_steps']} steps at {attack_settings['soft_lr']}; "
          f"{options.seeds} seed(s), {time.perf_counter() - started:.0f} s")
    print("matching: per seed, ESD's iterations are tuned to AdvUnlearn's held-out retain error (see the module "
          "docstring); where ESD's retain error never gets there, AdvUnlearn's retain weight is tuned to ESD's")
    print("ESD's iterations: one ESD run per seed up to 3x the iterations, held-out retain error recorded every "
          "iteration; the iteration count whose retain error is nearest AdvUnlearn's, landed between two iterations "
          f"by bisection where it jumped past it (matched when within ±{MATCH_TOLERANCE:.0%})\n")
    header = ["model", "iterations", "leakage, no attack", "leakage, discrete", "leakage, soft", "ASR (any attack)",
              "retain error (held out)", "retain error (trained)"]
    original = mean_std(run["original"]["leakage"]["none"] for run in runs)
    rows = [["original", "0", original, "-", "-", "-", "0", "0"]]
    for method in COMPARED:
        results = [run[method] for run in runs]
        rows.append([LABELS[method], mean_std(r["steps"] for r in results),
                     *(mean_std(r["leakage"][key] for r in results) for key in ATTACKS),
                     mean_std(r["success_rate"]["any"] for r in results),
                     mean_std(r["retain_error"] for r in results),
                     mean_std(r["retain_error_trained"] for r in results)])
    print_table(header, rows)
    matched = sum(run["esd_matched"]["match"]["matched"] for run in runs)
    by_weight = sum(run["esd_matched"]["match"]["how"] == "advunlearn_retain_weight" for run in runs)
    print(f"\nleakage: lower = more of the concept is back (0 = the original model); retain error: lower = better. "
          f"Matched pairs within ±{MATCH_TOLERANCE:.0%} in {matched}/{len(runs)} seeds ({by_weight} by AdvUnlearn's "
          f"retain weight) "
          f"(gaps {', '.join(format(run['esd_matched']['match']['relative_gap'], '+.1%') for run in runs)}).")
    comparison = {}
    for pair in (("advunlearn", "esd"), ("advunlearn_matched", "esd_matched")):
        for key in ("discrete", "soft"):
            differences = [run[pair[0]]["leakage"][key] - run[pair[1]]["leakage"][key] for run in runs]
            higher = sum(difference > 0 for difference in differences)
            comparison[f"{pair[0]} - {pair[1]}, {key}"] = {"differences": differences, "advunlearn_higher": higher}
            print(f"{LABELS[pair[0]]} - {LABELS[pair[1]]} leakage under the {key} attack: {mean_std(differences)} "
                  f"(AdvUnlearn leaks less in {higher}/{len(differences)} seeds)")
    retain = [run["advunlearn"]["retain_error"] - run["esd"]["retain_error"] for run in runs]
    print(f"AdvUnlearn - ESD (same iterations) held-out retain error: {mean_std(retain)}")
    print("Expected (the paper's direction): AdvUnlearn leaks less under attack at a matched retain error. Every "
          "number above is measured in this run.")
    if options.results:
        path = Path(options.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"settings": {"erasure": settings, "attack": attack_settings, "seeds": options.seeds,
                               "match_tolerance": MATCH_TOLERANCE, "threads": options.threads,
                               "seconds": time.perf_counter() - started},
                  "runs": runs, "comparison": comparison}
        path.with_suffix(".json").write_text(json.dumps(record, indent=1))
        plot(runs, path.with_suffix(".png"))
        print(f"wrote {path.with_suffix('.json')} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
