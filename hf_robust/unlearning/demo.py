"""NPO vs NPO+SAM on the toy memorisation task: how much of the forgotten strings a relearning attack brings back.

`toy_relearning_experiment` is the whole measurement for one seed (shared by `benchmarks/unlearn_relearn.py` and the
demo section): a tiny llama memorises random token strings (`toy_memorised_model`), is unlearned on the forget set
with each method from the same weights, and then attacked by fine-tuning on half of the forget strings; forgetting
and recovery are measured on the other half, which the attacker never sees. `unlearning_demo_section` is the
`hf-robust demo` section, a short run of it.
"""

import copy
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from .config import UnlearnConfig
from .relearn import RelearnConfig, relearning_attack
from .toy import toy_memorised_model
from .trainer import UnlearnTrainer

# Unlearning shared by both methods (same steps, learning rate and beta). beta 1 rather than NPO's 0.1: the NPO
# weight sigma(-beta * (NLL - NLL_ref)) then vanishes a few nats above the reference, so both methods level off at a
# similar forget NLL instead of racing upwards, which is what makes their pre-attack forgetting comparable.
TOY_UNLEARNING = {"steps": 100, "learning_rate": 5e-4, "beta": 1.0, "retain_weight": 1.0, "batch_size": 16}
# SAM radius (global L2 norm of the weight perturbation over all parameters of the tiny llama). Larger radii slow
# forgetting at a fixed number of steps (0.05: +12% pre-attack forget NLL over 10 seeds, 0.1: +25% over 5), which
# would confound the comparison; 0.02 forgets as much as NPO (-1.3% over 10 seeds).
TOY_RHO = 0.02
# The attacker: AdamW on the 8 attack strings, batch 4. A tiny model needs a larger rate than the paper's 1e-5.
TOY_RELEARNING = {"steps": 20, "learning_rate": 2e-3, "batch_size": 4}


def toy_methods(rho: float = TOY_RHO) -> dict[str, dict]:
    """The compared methods as `toy_unlearn_config` settings: plain NPO and NPO+SAM of radius `rho`."""
    return {"npo": {"smoothing": "none"}, "npo+sam": {"smoothing": "sam", "rho": rho}}


def toy_unlearn_config(output_dir: str, seed: int = 0, *, use_cpu: bool = True, **settings) -> UnlearnConfig:
    """`UnlearnConfig` of the toy run: NPO (smoothing "none" unless given), full batch, constant rate, float32, on
    the CPU unless `use_cpu=False` (then accelerate's device, e.g. a GPU).

    `settings` override `TOY_UNLEARNING` (steps, learning_rate, beta, retain_weight, batch_size) and may set
    `smoothing`, `rho`, `rs_sigma` and `rs_samples`.
    """
    smoothing_settings = {"smoothing": "none", "rho": TOY_RHO, "rs_sigma": 1e-4, "rs_samples": 3}
    unknown = sorted(set(settings) - set(TOY_UNLEARNING) - set(smoothing_settings))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; allowed: {sorted(TOY_UNLEARNING)}, "
                         f"{', '.join(smoothing_settings)}.")
    settings = {**smoothing_settings, **TOY_UNLEARNING, **settings}
    return UnlearnConfig(
        output_dir=output_dir,
        method="npo",
        smoothing=settings["smoothing"],
        rho=settings["rho"],
        rs_sigma=settings["rs_sigma"],
        rs_samples=settings["rs_samples"],
        beta=settings["beta"],
        retain_weight=settings["retain_weight"],
        max_steps=settings["steps"],
        learning_rate=settings["learning_rate"],
        per_device_train_batch_size=settings["batch_size"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        bf16=False,
        use_cpu=use_cpu,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=seed,
    )


def unlearn(model, tokenizer, forget, retain, args: UnlearnConfig):
    """Unlearn a deep copy of `model` (the original stays as it is) and return it in eval mode."""
    from transformers import PrinterCallback

    trainer = UnlearnTrainer(
        model=copy.deepcopy(model), args=args, forget_dataset=forget, retain_dataset=retain,
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # its end-of-training print would break the tables
    trainer.train()
    return trainer.model.eval()


def toy_relearning_experiment(
    seed: int = 0, methods: dict[str, dict] | None = None, memorise_steps: int = 200, unlearning: dict | None = None,
    relearning: dict | None = None,
) -> dict:
    """Memorise, unlearn with each method, attack each unlearned model; measure on the held-out forget half.

    The forget set (16 strings) is split in two: the attacker fine-tunes on the first 8 (`relearning_attack`), and
    every forget measurement is on the last 8, so a recovery there is knowledge the attack revived, not relearned.

    Args:
        seed: Seeds the data, the memorised model, unlearning and the attack.
        methods: {name: `toy_unlearn_config` settings} of the NPO variants to compare; `toy_methods()` if None.
        memorise_steps: Steps of `toy_memorised_model`.
        unlearning, relearning: Overrides of `TOY_UNLEARNING` (for every method) and `TOY_RELEARNING`.

    Returns:
        {"memorised": metrics of the memorised model, name: {"before": metrics after unlearning, "after": metrics
        after the attack, "recovery": before - after forget NLL, "seconds": {"unlearn", "attack"}} per method,
        "seconds": {"memorise"}}; metrics are `UnlearningMetrics` (forget: held-out half, retain: the retain set).
    """
    from .metrics import evaluate_unlearning

    started = time.perf_counter()
    model, tokenizer, forget, retain = toy_memorised_model(seed=seed, steps=memorise_steps)
    half = len(forget) // 2
    attack_rows, held_out = forget.select(range(half)), forget.select(range(half, len(forget)))
    evaluation = {"rouge_tokens": "model"}  # random token strings have no words for rouge_score's tokenizer
    results = {"seconds": {"memorise": time.perf_counter() - started}}
    results["memorised"] = evaluate_unlearning(model, tokenizer, held_out, retain, **evaluation)
    attack = RelearnConfig(n_samples=half, seed=seed, **{**TOY_RELEARNING, **(relearning or {})})
    for name, settings in (toy_methods() if methods is None else methods).items():
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as output_dir:
            args = toy_unlearn_config(output_dir, seed, **{**(unlearning or {}), **settings})
            unlearned = unlearn(model, tokenizer, forget, retain, args)
        unlearn_seconds = time.perf_counter() - started
        attacked = relearning_attack(
            unlearned, tokenizer, attack_rows, attack, retain_dataset=retain, eval_forget=held_out, **evaluation
        )
        results[name] = {
            "before": attacked.before,
            "after": attacked.after,
            "recovery": attacked.recovery,
            "seconds": {"unlearn": unlearn_seconds, "attack": attacked.seconds},
        }
    return results


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


RECORDED_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
"""Where `benchmarks/unlearn_relearn.py --results` records its runs (present in a clone of the repository)."""
RECORDED_TINY = "unlearn_relearn_tiny_cpu.json"
RECORDED_SMOLLM2 = "unlearn_relearn_smollm2_cpu.json"


def _mean_std(values) -> tuple[float, float]:
    values = list(values)
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def recorded_comparison(path: Path) -> dict | None:
    """The paired (second method - first method) recovery of a recorded `unlearn_relearn.py` run, or None if the
    file is absent. Tiny records have per-seed "recovery"; SmolLM2 records a recovery curve (its last point)."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    runs = record["seeds"]
    names = list(record["settings"]["methods"])

    def recovery(run, name):
        entry = run["methods"][name] if "methods" in run else run[name]
        return entry["recovery"][-1] if isinstance(entry["recovery"], list) else entry["recovery"]

    complete = [run for run in runs if all(name in run.get("methods", run) for name in names)]
    result = {"path": path, "settings": record["settings"], "seeds": len(complete), "methods": {}, "matched": {}}
    for name in names:
        result["methods"][name] = _mean_std(recovery(run, name) for run in complete)
        entries = [run.get("methods", {}).get(name, {}) for run in complete]
        flags = [entry["matched"] for entry in entries if "matched" in entry]
        if flags:  # SmolLM2 records: how many seeds reached the matched-forgetting target
            result["matched"][name] = sum(flags)
    base = names[0]
    for name in names[1:]:
        differences = [recovery(run, name) - recovery(run, base) for run in complete]
        result["methods"][name] += (_mean_std(differences), sum(difference < 0 for difference in differences))
    return result


def _print_recorded(recorded: dict, label: str) -> None:
    settings = recorded["settings"]
    when = settings.get("date", "")
    print(f"  recorded, not re-run here: {label} ({recorded['path'].relative_to(recorded['path'].parents[2])}, "
          f"{recorded['seeds']} seeds, {settings.get('machine', 'cpu')}{', ' + when if when else ''})")
    names = list(recorded["methods"])
    for name in names:
        mean, std = recorded["methods"][name][:2]
        line = f"    {name:<18} recovery {mean:.3f} ± {std:.3f} nats"
        if recorded.get("matched", {}).get(name, recorded["seeds"]) < recorded["seeds"]:
            line += f" (forgetting matched in {recorded['matched'][name]}/{recorded['seeds']} seeds only)"
        if name != names[0]:
            (difference, spread), fewer = recorded["methods"][name][2:]
            line += (f"; paired {name} - {names[0]}: {difference:+.3f} ± {spread:.3f}, less recovery in "
                     f"{fewer}/{recorded['seeds']} seeds")
        print(line)


def unlearning_demo_section(seeds: tuple[int, ...] = (0, 1), results: Path | None = None) -> dict:
    """NPO vs NPO+SAM on the toy task, then a relearning attack (about a minute on CPU), beside the recorded
    multi-seed results of `benchmarks/unlearn_relearn.py` (read from `results`, default `RECORDED_RESULTS`) and a
    plain sentence on whether the live difference says anything. Returns {"live": per-seed SAM - NPO recovery
    differences, "recorded": `recorded_comparison` of the tiny record or None}."""
    import datasets
    from transformers import logging

    datasets.disable_progress_bar()
    logging.set_verbosity_error()
    results = RECORDED_RESULTS if results is None else Path(results)
    runs = [toy_relearning_experiment(seed=seed) for seed in seeds]
    methods = list(toy_methods())
    seconds = sum(run["seconds"]["memorise"] for run in runs) + sum(
        sum(run[name]["seconds"].values()) for run in runs for name in methods)
    print(f"tiny llama memorises 16 forget + 32 retain random token strings; NPO and NPO+SAM (rho {TOY_RHO}) unlearn "
          f"the forget strings ({TOY_UNLEARNING['steps']} steps each); an attacker fine-tunes on 8 of them "
          f"({TOY_RELEARNING['steps']} steps); measured on the other 8")
    print(f"  live run, seeds {list(seeds)} ({seconds:.0f} s), mean over seeds:")
    print(f"  {'method':<8} {'forget NLL unlearned':>21} {'relearned':>10} {'recovery':>9}"
          f" {'exact match relearned':>22} {'retain NLL':>11}")
    for name in methods:
        results_of = [run[name] for run in runs]
        print(f"  {name:<8} {_mean(r['before'].forget_nll for r in results_of):21.3f}"
              f" {_mean(r['after'].forget_nll for r in results_of):10.3f}"
              f" {_mean(r['recovery'] for r in results_of):9.3f}"
              f" {_mean(r['after'].forget_exact_match for r in results_of):22.0%}"
              f" {_mean(r['before'].retain_nll for r in results_of):11.3f}")
    memorised = [run["memorised"] for run in runs]
    print(f"  memorised model: forget NLL {_mean(m.forget_nll for m in memorised):.3f}, exact match "
          f"{_mean(m.forget_exact_match for m in memorised):.0%}; recovery = forget NLL drop under the attack (lower "
          "is more robust)")
    live = [run[methods[1]]["recovery"] - run[methods[0]]["recovery"] for run in runs]
    recorded = recorded_comparison(results / RECORDED_TINY)
    if recorded is None:
        print(f"  no recorded multi-seed result at {results / RECORDED_TINY}: run benchmarks/unlearn_relearn.py "
              "--results ... to record one")
    else:
        _print_recorded(recorded, "the same toy task")
        (difference, spread), _ = recorded["methods"][list(recorded["methods"])[1]][2:]
        print("  " + live_verdict(_mean(live), len(live), difference, spread))
    smollm2 = recorded_comparison(results / RECORDED_SMOLLM2)
    if smollm2 is not None:
        _print_recorded(smollm2, "real SmolLM2-135M-Instruct facts at matched forgetting, recovery after "
                        f"{smollm2['settings']['curve'][-1]} relearning steps")
    return {"live": live, "recorded": recorded}


def live_verdict(live_difference: float, live_seeds: int, recorded_difference: float, recorded_std: float) -> str:
    """A plain sentence: is a live mean paired difference over `live_seeds` seeds outside the noise that the recorded
    per-seed spread predicts (two standard errors, recorded_std / sqrt(live_seeds))?"""
    noise = 2 * recorded_std / math.sqrt(live_seeds)
    if abs(live_difference) <= noise:
        return (f"Live SAM - NPO recovery {live_difference:+.3f} nats over {live_seeds} seed(s) is within noise "
                f"(±{noise:.3f}, from the recorded seed-to-seed spread): this run alone cannot tell the methods "
                f"apart; the recorded result ({recorded_difference:+.3f}) is the one to read.")
    agrees = (live_difference < 0) == (recorded_difference < 0)
    return (f"Live SAM - NPO recovery {live_difference:+.3f} nats over {live_seeds} seed(s) is outside the noise "
            f"(±{noise:.3f}) and {'agrees' if agrees else 'disagrees'} in sign with the recorded "
            f"{recorded_difference:+.3f}.")
