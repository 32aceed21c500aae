"""Does SAM make NPO unlearning resist a relearning attack? NPO vs NPO+SAM, recovery of held-out forgotten data.

    python benchmarks/unlearn_relearn.py --results benchmarks/results/unlearn_relearn_tiny_cpu   # tiny, 10 seeds
    python benchmarks/unlearn_relearn.py --seeds 10 --rho 0.02,0.05 --threads 1  # several SAM radii
    python benchmarks/unlearn_relearn.py --model smollm2 --results benchmarks/results/unlearn_relearn_smollm2_cpu

Tiny mode (`hf_robust.unlearning.demo.toy_relearning_experiment`, per seed): a tiny llama memorises 16 forget and
32 retain random token strings; NPO and NPO+SAM unlearn the forget strings from the same weights with the same steps,
learning rate and beta; a relearning attack (AdamW) fine-tunes each unlearned model on 8 of the forget strings; the
other 8, never seen by the attacker, measure forgetting (before the attack) and recovery (after). The comparison is
fair only at matched pre-attack forgetting: the table says whether the mean pre-attack forget NLLs agree within
MATCH_TOLERANCE (relative).

SmolLM2 mode (`unlearn_smollm2.py`, its docstring has the details): known facts of the real SmolLM2-135M-Instruct;
NPO, NPO+SAM (two radii) and NPO+RS each unlearn until the held-out forget facts reach the same answer NLL with
accuracy 0 (matched forgetting, the steps recorded), then a relearning curve (the paper's attacker) on the other
forgotten facts; 5 seeds (which facts are forgotten, the attacker's sample); JSON + PNG with `--results`.

On shared cores pass `--threads 1`: torch's threads fighting another process for the same cores made generation about
three times slower. Prints tables; asserts nothing. Every number printed is measured in this run.
"""

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tables import mean_std, print_table  # noqa: E402 (benchmarks/ is on the path when run as a script)

MATCH_TOLERANCE = 0.10  # pre-attack forget NLLs of the methods count as matched within 10% of NPO's




def compare(names: list[str], pre: dict, recovery: dict, unit: str) -> None:
    """Matched forgetting (mean pre-attack forget NLL within MATCH_TOLERANCE of the first method's) and the per-seed
    (or per-run) difference of recovery against the first method."""
    base = names[0]
    for name in names[1:]:
        gap = statistics.mean(pre[name]) / statistics.mean(pre[base]) - 1
        matched = "matched" if abs(gap) <= MATCH_TOLERANCE else "NOT matched"
        differences = [mine - theirs for mine, theirs in zip(recovery[name], recovery[base])]
        fewer = sum(difference < 0 for difference in differences)
        print(f"{name} vs {base}: pre-attack forget NLL {gap:+.1%} ({matched}, tolerance ±{MATCH_TOLERANCE:.0%}); "
              f"recovery difference {mean_std(differences)} {unit}, less recovery in {fewer}/{len(differences)} runs")


# ------------------------------------------------------------------------------------------------------ tiny mode


def tiny(options) -> None:
    from hf_robust.unlearning.demo import TOY_RELEARNING, TOY_UNLEARNING, toy_relearning_experiment

    methods = {"npo": {"smoothing": "none"}}
    for rho in options.rho:
        methods[f"npo+sam ρ={rho:g}"] = {"smoothing": "sam", "rho": rho}
    unlearning = {"steps": options.steps} if options.steps else {}
    runs, started = [], time.perf_counter()
    for seed in range(options.seeds):
        runs.append(toy_relearning_experiment(seed=seed, methods=methods, unlearning=unlearning))
        print(f"seed {seed}: " + ", ".join(f"{name} recovery {runs[-1][name]['recovery']:.3f}" for name in methods),
              flush=True)
    settings = {**TOY_UNLEARNING, **unlearning}
    print(f"\ntiny llama (hidden 64, 2 layers) memorising 16 forget + 32 retain random strings of 16 tokens; "
          f"{options.seeds} seeds (0..{options.seeds - 1}), {time.perf_counter() - started:.0f} s")
    print(f"unlearning: NPO beta {settings['beta']}, retain weight {settings['retain_weight']}, {settings['steps']} "
          f"AdamW steps, lr {settings['learning_rate']} constant, batch {settings['batch_size']} (all forget rows)")
    print(f"attack: relearning_attack on 8 forget strings, {TOY_RELEARNING['steps']} AdamW steps, lr "
          f"{TOY_RELEARNING['learning_rate']}, batch {TOY_RELEARNING['batch_size']}; measured on the 8 held-out "
          "forget strings (NLL: mean token NLL; EM / ROUGE-L: greedy second half from the first half, model tokens)")
    memorised = [run["memorised"] for run in runs]
    rows = [["memorised (no unlearning)", mean_std(m.forget_nll for m in memorised), "", "",
             mean_std(m.forget_exact_match for m in memorised), mean_std(m.forget_rouge_l for m in memorised),
             mean_std(m.retain_nll for m in memorised), ""]]
    for name in methods:
        before, after = [run[name]["before"] for run in runs], [run[name]["after"] for run in runs]
        rows.append([
            name,
            mean_std(m.forget_nll for m in before),
            mean_std(m.forget_nll for m in after),
            mean_std(run[name]["recovery"] for run in runs),
            f"{mean_std(m.forget_exact_match for m in before)} → {mean_std(m.forget_exact_match for m in after)}",
            f"{mean_std(m.forget_rouge_l for m in before)} → {mean_std(m.forget_rouge_l for m in after)}",
            mean_std(m.retain_nll for m in before),
            mean_std(m.retain_nll for m in after),
        ])
    print()
    print_table(["method", "forget NLL unlearned", "forget NLL relearned", "recovery (NLL drop)",
                 "forget EM unlearned → relearned", "forget ROUGE-L unlearned → relearned", "retain NLL unlearned",
                 "retain NLL relearned"], rows)
    print("mean ± std over seeds; forget = the 8 held-out forget strings")
    pre = {name: [run[name]["before"].forget_nll for run in runs] for name in methods}
    recovery = {name: [run[name]["recovery"] for run in runs] for name in methods}
    compare(list(methods), pre, recovery, "nats")
    seconds = [run[name]["seconds"]["unlearn"] for run in runs for name in methods]
    print(f"time per seed: memorise {statistics.mean(run['seconds']['memorise'] for run in runs):.1f} s, "
          f"unlearn {statistics.mean(seconds):.1f} s per method")
    if options.results:
        path = Path(options.results).with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        measured = ("forget_nll", "forget_exact_match", "forget_rouge_l", "retain_nll")
        path.write_text(json.dumps({
            "settings": {"unlearning": settings, "relearning": TOY_RELEARNING, "methods": methods,
                         "seeds": options.seeds, "machine": options.machine,
                         "seconds": time.perf_counter() - started, "date": time.strftime("%Y-%m-%d")},
            "seeds": [{"seed": seed, **{name: {
                "recovery": run[name]["recovery"],
                "unlearned": {key: getattr(run[name]["before"], key) for key in measured},
                "relearned": {key: getattr(run[name]["after"], key) for key in measured},
            } for name in methods}} for seed, run in enumerate(runs)],
        }, indent=1))
        print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    numbers = lambda kind: lambda text: [kind(value) for value in text.split(",")]  # noqa: E731
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: tiny 10, smollm2 5); "
                        "smollm2: the seed picks the forgotten facts and the attacker's sample")
    parser.add_argument("--seed_list", type=numbers(int), default=None, help="smollm2: these seeds instead, e.g. 3,4")
    parser.add_argument("--steps", type=int, default=None, help="tiny: unlearning steps (default 100)")
    parser.add_argument("--rho", type=numbers(float), default=None,
                        help="SAM radius, or several separated by commas (default: tiny 0.02, smollm2 0.05,0.1)")
    parser.add_argument("--rs_sigma", type=float, default=None, help="smollm2: RS noise std (default 1e-4)")
    parser.add_argument("--methods", type=lambda text: text.split(","), default=None,
                        help="smollm2: only these methods (names as printed, comma-separated)")
    parser.add_argument("--target_nll", type=float, default=None,
                        help="smollm2: held-out answer NLL every method unlearns to (default 4.0)")
    parser.add_argument("--max_steps", type=int, default=None, help="smollm2: unlearning step cap (default 60)")
    parser.add_argument("--curve", type=numbers(int), default=None,
                        help="smollm2: relearning step counts measured (default 0,5,10,20)")
    parser.add_argument("--results", default=None, help="write RESULTS.json (smollm2: and RESULTS.png), every seed")
    parser.add_argument("--add_to", default=None,
                        help="smollm2: a recorded RESULTS.json; run only the methods it lacks, on its seeds and "
                        "settings (so they pair with the recorded ones), and add them to it and its PNG")
    parser.add_argument("--device", default=None, help="smollm2: torch device (default: cuda if available, else cpu)")
    parser.add_argument("--machine", default="cpu", help="smollm2: recorded in the JSON, e.g. 'cpu, 2 cores'")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    options = parser.parse_args()
    import datasets
    import torch
    from transformers.utils import logging

    if options.threads:
        torch.set_num_threads(options.threads)
    datasets.disable_progress_bar()
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*(use_cache|generation flags|max_length).*")
    from hf_robust.unlearning.demo import TOY_RHO

    if options.model == "tiny":
        options.seeds = options.seeds or 10
        options.rho = options.rho or [TOY_RHO]
        tiny(options)
    else:
        import unlearn_smollm2 as smollm2

        options.seed_list = options.seed_list or list(range(options.seeds or 5))
        options.rho = options.rho or list(smollm2.SMOLLM2_RHOS)
        options.rs_sigma = options.rs_sigma or smollm2.SMOLLM2_RS_SIGMA
        options.target_nll = options.target_nll or smollm2.TARGET_NLL
        options.max_steps = options.max_steps or smollm2.MAX_STEPS
        options.curve = options.curve or smollm2.CURVE
        options.threads = options.threads or torch.get_num_threads()
        options.device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        smollm2.smollm2(options)


if __name__ == "__main__":
    main()
