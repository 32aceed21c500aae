"""Does adversarial training make concept erasure resist prompt attacks? ESD vs AdvUnlearn on the toy erasure task.

    python benchmarks/advunlearn_effect.py --threads 1            # 3 seeds (about 5-8 min on one shared core)
    python benchmarks/advunlearn_effect.py --quick                # 1 seed, fewer iterations and attack steps
    python benchmarks/advunlearn_effect.py --seeds 5 --steps 80

Per seed (`hf_robust.erasure.demo.toy_erasure_experiment`): the toy model (tiny SD components taught that "church"
prompts shift the noise prediction, `hf_robust.erasure.toy`) is erased with ESD and with AdvUnlearn from the same
weights, with the same iterations, learning rate, retain prompts and retain weight. ESD is the same
`AdvUnlearnTrainer` with the attack disabled (attack_warmup = max_steps, so no iteration is attacked); AdvUnlearn
attacks every iteration (attack_warmup 0, 1 soft token, 30 Adam steps at the reference rate 1e-3, share_xt).

Measured on each erased model, against the original (taught) model:
- concept leakage d on 4 concept prompts unlearning never saw (unlearning sees only "church"): without attack, after
  the discrete attack (5-token prefix on the shared token search, UnlearnDiffAtk-style) and after the soft attack
  (1 soft token, 30 Adam steps at 1e-2: stronger than the training attack). d = mean_j MSE(eps_attacked,
  e_c_orig) / mean_j MSE(e_0_orig, e_c_orig): 0 = the original concept prediction (the concept is back), ~1 = no
  concept, ~(1 + eta)^2 = 4 the ESD target. Success rate: prompts with d < 0.5;
- retain error on held-out retain prompts (the toy model knows them; unlearning never sees them) and on the retain
  prompts unlearning used: sum_r MSE(eps_erased(r), eps_orig(r)) / sum_r MSE(eps_orig(r), eps_orig("")), 0 = intact.

The toy model is the same for every seed (its teaching is seeded 0); the seed changes unlearning (z_t, retain draws,
attack starts) and the evaluation attacks. Expected: AdvUnlearn leaks less under attack at comparable retain error.
Prints tables of what was measured; asserts nothing.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tables import mean_std, print_table  # noqa: E402 (benchmarks/ is on the path when run as a script)




def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="unlearning iterations (default: TOY_ERASURE)")
    parser.add_argument("--attack_lr", type=float, default=None, help="learning rate of AdvUnlearn's inner attack")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 iterations, 5 discrete / 10 soft steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    options = parser.parse_args(argv)
    import datasets
    import torch
    from transformers import logging

    from hf_robust.erasure.demo import METHODS, TOY_ATTACK, TOY_ERASURE, toy_erasure_experiment

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
            f"{runs[-1][method]['leakage']['discrete']:.3f} / soft {runs[-1][method]['leakage']['soft']:.3f}"
            for method in METHODS), flush=True)
    settings, attack_settings = {**TOY_ERASURE, **erasure}, {**TOY_ATTACK, **attack}
    print(f"\ntoy tiny SD (concept 'church'); {settings['steps']} iterations per method (lr "
          f"{settings['learning_rate']}, retain weight {settings['retain_weight']}, {settings['ddim_steps']}-step "
          f"DDIM; AdvUnlearn: {settings['attack_steps']} attack steps at {settings['attack_lr']}); evaluation "
          f"attacks: discrete {attack_settings['num_adv_tokens']} tokens x {attack_settings['discrete_iters']} "
          f"iterations, soft 1 token x {attack_settings['soft_steps']} steps at {attack_settings['soft_lr']}; "
          f"{options.seeds} seed(s), {time.perf_counter() - started:.0f} s\n")
    header = ["method", "leakage, no attack", "leakage, discrete", "leakage, soft", "ASR (any attack)",
              "retain error (held out)", "retain error (trained)", "erase s"]
    original = mean_std(run["original"]["leakage"]["none"] for run in runs)
    rows = [["original", original, "-", "-", "-", "0", "0", "-"]]
    for method in METHODS:
        results = [run[method] for run in runs]
        rows.append([method, *(mean_std(r["leakage"][key] for r in results) for key in ("none", "discrete", "soft")),
                     mean_std(r["success_rate"]["any"] for r in results),
                     mean_std(r["retain_error"] for r in results),
                     mean_std(r["retain_error_trained"] for r in results),
                     f"{statistics.mean(r['seconds']['erase'] for r in results):.0f}"])
    print_table(header, rows)
    print("\nleakage: lower = more of the concept is back (0 = the original model); retain error: lower = better.")
    for key in ("discrete", "soft"):
        differences = [run["advunlearn"]["leakage"][key] - run["esd"]["leakage"][key] for run in runs]
        higher = sum(difference > 0 for difference in differences)
        print(f"AdvUnlearn - ESD leakage under the {key} attack: {mean_std(differences)} (AdvUnlearn leaks less in "
              f"{higher}/{len(differences)} seeds)")
    retain = [run["advunlearn"]["retain_error"] - run["esd"]["retain_error"] for run in runs]
    print(f"AdvUnlearn - ESD held-out retain error: {mean_std(retain)}")
    print("Expected: AdvUnlearn leaks less under attack at comparable retain error. Every number above is measured in "
          "this run.")


if __name__ == "__main__":
    main()
