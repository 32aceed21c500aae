"""NPO vs NPO+SAM on the toy memorisation task: how much of the forgotten strings a relearning attack brings back.

`toy_relearning_experiment` is the whole measurement for one seed (shared by `benchmarks/unlearn_relearn.py` and the
demo section): a tiny llama memorises random token strings (`toy_memorised_model`), is unlearned on the forget set
with each method from the same weights, and then attacked by fine-tuning on half of the forget strings; forgetting
and recovery are measured on the other half, which the attacker never sees. `unlearning_demo_section` is the
`hf-robust demo` section, a short run of it.
"""

import copy
import tempfile
import time

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


def toy_unlearn_config(output_dir: str, seed: int = 0, **settings) -> UnlearnConfig:
    """`UnlearnConfig` of the toy run: NPO (smoothing "none" unless given), full batch, constant rate, CPU, float32.

    `settings` override `TOY_UNLEARNING` (steps, learning_rate, beta, retain_weight, batch_size) and may set
    `smoothing` and `rho`.
    """
    unknown = sorted(set(settings) - set(TOY_UNLEARNING) - {"smoothing", "rho"})
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; allowed: {sorted(TOY_UNLEARNING)}, smoothing, rho.")
    settings = {"smoothing": "none", "rho": TOY_RHO, **TOY_UNLEARNING, **settings}
    return UnlearnConfig(
        output_dir=output_dir,
        method="npo",
        smoothing=settings["smoothing"],
        rho=settings["rho"],
        beta=settings["beta"],
        retain_weight=settings["retain_weight"],
        max_steps=settings["steps"],
        learning_rate=settings["learning_rate"],
        per_device_train_batch_size=settings["batch_size"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        bf16=False,
        use_cpu=True,
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


def unlearning_demo_section(seeds: tuple[int, ...] = (0, 1)) -> None:
    """NPO vs NPO+SAM on the toy task, then a relearning attack (about a minute on CPU): what comes back."""
    import datasets
    from transformers import logging

    datasets.disable_progress_bar()
    logging.set_verbosity_error()
    runs = [toy_relearning_experiment(seed=seed) for seed in seeds]
    methods = list(toy_methods())
    seconds = sum(run["seconds"]["memorise"] for run in runs) + sum(
        sum(run[name]["seconds"].values()) for run in runs for name in methods)
    print(f"tiny llama memorises 16 forget + 32 retain random token strings; NPO and NPO+SAM (rho {TOY_RHO}) unlearn "
          f"the forget strings ({TOY_UNLEARNING['steps']} steps each); an attacker fine-tunes on 8 of them "
          f"({TOY_RELEARNING['steps']} steps); measured on the other 8; mean of seeds {list(seeds)} ({seconds:.0f} s)")
    print(f"  {'method':<8} {'forget NLL unlearned':>21} {'relearned':>10} {'recovery':>9}"
          f" {'exact match relearned':>22} {'retain NLL':>11}")
    for name in methods:
        results = [run[name] for run in runs]
        print(f"  {name:<8} {_mean(r['before'].forget_nll for r in results):21.3f}"
              f" {_mean(r['after'].forget_nll for r in results):10.3f} {_mean(r['recovery'] for r in results):9.3f}"
              f" {_mean(r['after'].forget_exact_match for r in results):22.0%}"
              f" {_mean(r['before'].retain_nll for r in results):11.3f}")
    memorised = [run["memorised"] for run in runs]
    print(f"  memorised model: forget NLL {_mean(m.forget_nll for m in memorised):.3f}, exact match "
          f"{_mean(m.forget_exact_match for m in memorised):.0%}; recovery = forget NLL drop under the attack (lower "
          "is more robust)")
    print("  seeds vary a lot: benchmarks/unlearn_relearn.py compares the methods over 10 seeds")
