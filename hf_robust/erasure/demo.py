"""ESD vs AdvUnlearn on the toy erasure task: how much of the erased concept a prompt attack brings back.

`toy_erasure_experiment` is the whole measurement for one seed (shared by `benchmarks/advunlearn_effect.py` and the
demo section): the toy model (`toy_erasure_components`, which knows "church") is unlearned with each method from the
same weights, with the same iterations, learning rate and retain term, where ESD is `AdvUnlearnTrainer` with the
attack disabled (`attack_warmup` >= `max_steps`) and AdvUnlearn attacks every iteration (`attack_warmup=0`). Each
erased model is then attacked with `prompt_attack` (discrete and soft) on concept prompts unlearning never saw, and
its retain error is measured on retain prompts it never saw. ESD is also read off at AdvUnlearn's retain error
(`matching`: ESD's iterations tuned on one longer run), since AdvUnlearn costs more retain error in the same
iterations. `erasure_demo_section` is the `hf-robust demo` section.
"""

import dataclasses
import functools
import math
import tempfile
import time

from .config import AdvUnlearnConfig
from .evaluation import concept_leakage, prompt_attack
from .leakage import evaluation_points
from .prompt_attack_config import PromptAttackConfig
from .matching import (
    MATCH_TOLERANCE, MatchedPoint, RetainErrorTrajectory, point_at, restore_matching, restore_point,
)
from .toy import (
    TOY_CONCEPT, TOY_CONCEPT_PROMPTS, TOY_HELD_OUT_RETAIN_PROMPTS, TOY_RETAIN_PROMPTS, toy_erasure_components,
)
from .trainer import AdvUnlearnTrainer

# Unlearning shared by both methods. The tiny encoder needs a larger rate than the reference's 1e-5; a 10-step DDIM
# schedule keeps the partial sampling of z_t cheap on CPU.
TOY_ERASURE = {"steps": 40, "learning_rate": 1e-3, "retain_weight": 0.5, "ddim_steps": 10, "attack_steps": 30,
               "attack_lr": 1e-3}
# The evaluation attacks (PromptAttackConfig fields): 5-token discrete prefix, 1 soft token at 10x the training
# attack's rate (a stronger attacker than the one AdvUnlearn trains against), 3 points per prompt.
TOY_ATTACK = {"num_adv_tokens": 5, "discrete_iters": 10, "n_candidates": 32, "topk": 64, "batch_size": 32,
              "soft_steps": 30, "soft_lr": 1e-2, "n_timesteps": 3, "ddim_steps": 10}
METHODS = ("esd", "advunlearn")
COMPARED = ("esd", "advunlearn", "esd_matched", "advunlearn_matched")
"""The models `toy_erasure_experiment` measures: ESD and AdvUnlearn after the same iterations, and the matched pair
(ESD's iterations tuned to AdvUnlearn's retain error, or where ESD never gets there, AdvUnlearn's retain weight tuned
to ESD's)."""


def toy_erasure_config(output_dir: str, method: str, seed: int = 0, **settings) -> AdvUnlearnConfig:
    """`AdvUnlearnConfig` of a toy run: `method` "esd" (attack_warmup = steps: never attacked) or "advunlearn"
    (attacked from the first iteration); `settings` override `TOY_ERASURE`; CPU, float32, no logging or saving."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {list(METHODS)}, got {method!r}.")
    unknown = sorted(set(settings) - set(TOY_ERASURE))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; allowed: {sorted(TOY_ERASURE)}.")
    settings = {**TOY_ERASURE, **settings}
    return AdvUnlearnConfig(
        output_dir=output_dir, max_steps=settings["steps"], learning_rate=settings["learning_rate"],
        retain_weight=settings["retain_weight"], ddim_steps=settings["ddim_steps"],
        attack_steps=settings["attack_steps"], attack_lr=settings["attack_lr"],
        attack_warmup=settings["steps"] if method == "esd" else 0, concept_type="object", use_cpu=True, bf16=False,
        report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=seed,
    )


def erase(components: dict, args: AdvUnlearnConfig, concepts=(TOY_CONCEPT,), retain_prompts=TOY_RETAIN_PROMPTS):
    """Train `components`' text encoder in place with `AdvUnlearnTrainer`; return the trainer."""
    trainer = AdvUnlearnTrainer(components, args, concepts=list(concepts), retain_prompts=list(retain_prompts))
    return _train_quietly(trainer)


def _train_quietly(trainer: AdvUnlearnTrainer) -> AdvUnlearnTrainer:
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its end-of-training print would break the tables
    trainer.train()
    return trainer


def retain_error(trainer: AdvUnlearnTrainer, prompts, config: PromptAttackConfig | None = None) -> float:
    """How much erasure moved the predictions of `prompts`: sum_r MSE(e_erased(r), e_orig(r)) / sum_r MSE(e_orig(r),
    e_orig("")), pooled over the evaluation points and prompts (0: unchanged; 1: as much as the prompts' own effect,
    e.g. if they had been replaced by the empty prompt). Pooled rather than a mean of per-prompt ratios, so that
    prompts the model barely reacts to do not dominate."""
    distances = concept_leakage(trainer, list(prompts), config)
    scales = [float(evaluation_points(trainer.frozen, prompt, config).scale) for prompt in prompts]
    return float(sum(d * s for d, s in zip(distances.tolist(), scales)) / sum(scales))


def _measured(trainer: AdvUnlearnTrainer, config: PromptAttackConfig, erase_seconds: float) -> dict:
    """Attack `trainer`'s erased encoder on `TOY_CONCEPT_PROMPTS`; its retain errors (held out and trained)."""
    started = time.perf_counter()
    attacked = prompt_attack(trainer, list(TOY_CONCEPT_PROMPTS), config)
    return {
        "leakage": {"none": attacked.mean_leakage(), "discrete": attacked.mean_leakage("discrete"),
                    "soft": attacked.mean_leakage("soft")},
        "success_rate": {"none": attacked.pre_attack_success_rate, "discrete": attacked.success_rate("discrete"),
                         "soft": attacked.success_rate("soft"), "any": attacked.attack_success_rate},
        "retain_error": retain_error(trainer, TOY_HELD_OUT_RETAIN_PROMPTS, config),
        "retain_error_trained": retain_error(trainer, TOY_RETAIN_PROMPTS, config),
        "seconds": {"erase": erase_seconds, "attack": time.perf_counter() - started},
    }


def toy_erasure_experiment(seed: int = 0, erasure: dict | None = None, attack: dict | None = None, *,
                           match_every: int = 1, match_factor: float = 3.0) -> dict:
    """Erase "church" from the toy model with AdvUnlearn and with ESD; attack them; measure retain errors; and
    compare at a matched retain error.

    ESD runs once, up to `match_factor` x AdvUnlearn's iterations, with its held-out retain error recorded every
    `match_every` iterations (`RetainErrorTrajectory`; it stops once past AdvUnlearn's retain error + 10%). Two ESD
    models are read off that one run: "esd", after the same iterations as AdvUnlearn, and "esd_matched", after the
    recorded number of iterations whose held-out retain error is nearest AdvUnlearn's, or, when the error jumped past
    it within one iteration, the weights landed between the two (`restore_matching`; a fractional iteration count).
    Its "match" says which, the gap, and whether it is within `MATCH_TOLERANCE`.

    Args:
        seed: seeds unlearning (z_t, retain draws, attack starts) and the evaluation attacks; the toy model is the
            same for every seed (`toy_erasure_components(0)`).
        erasure: overrides of `TOY_ERASURE` (both methods).
        attack: overrides of `TOY_ATTACK` (`PromptAttackConfig` fields).
        match_every: iterations between two recorded ESD points.
        match_factor: ESD's longest run, as a multiple of AdvUnlearn's iterations.

    Returns:
        {method: {"leakage": {"none", "discrete", "soft"}: mean leakage distance over `TOY_CONCEPT_PROMPTS` (0: the
        original concept prediction, 1: as far as no prompt), "success_rate": {"none", "discrete", "soft", "any"},
        "retain_error": `retain_error` on `TOY_HELD_OUT_RETAIN_PROMPTS`, "retain_error_trained": on
        `TOY_RETAIN_PROMPTS`, "seconds": {"erase", "attack"}, "steps": iterations}} for "advunlearn", "esd" and
        "esd_matched" (which also has "match": `MatchedPoint` fields); "original": the same leakage of the unerased
        model (no attack); "esd_trajectory": [(step, held-out retain error)] of the ESD run.
    """
    if not match_factor >= 1:
        raise ValueError(f"`match_factor` must be >= 1 (ESD's longest run relative to AdvUnlearn's), got "
                         f"{match_factor!r}.")
    config = PromptAttackConfig(seed=seed, **{**TOY_ATTACK, **(attack or {})})
    settings = {**TOY_ERASURE, **(erasure or {})}
    steps = settings["steps"]
    original = toy_erasure_components()
    results = {"original": {"leakage": {"none": float(concept_leakage(
        original, list(TOY_CONCEPT_PROMPTS), config, original=original).mean())}}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = erase(toy_erasure_components(), toy_erasure_config(output_dir, "advunlearn", seed, **settings))
    results["advunlearn"] = {**_measured(trainer, config, time.perf_counter() - started), "steps": steps}
    target = results["advunlearn"]["retain_error"]

    started = time.perf_counter()
    longest = max(steps, round(match_factor * steps))
    with tempfile.TemporaryDirectory() as output_dir:
        args = toy_erasure_config(output_dir, "esd", seed, **{**settings, "steps": longest})
        trainer = AdvUnlearnTrainer(toy_erasure_components(), args, concepts=[TOY_CONCEPT],
                                    retain_prompts=list(TOY_RETAIN_PROMPTS))
        trajectory = RetainErrorTrajectory(
            trainer, functools.partial(retain_error, prompts=TOY_HELD_OUT_RETAIN_PROMPTS, config=config),
            every=match_every, stop_above=target * (1 + MATCH_TOLERANCE), min_steps=steps)
        trainer.add_callback(trajectory)
        _train_quietly(trainer)
    erase_seconds = time.perf_counter() - started
    restore_point(trainer, point_at(trajectory.points, steps))
    results["esd"] = {**_measured(trainer, config, erase_seconds), "steps": steps}
    match = restore_matching(trainer, trajectory, target)
    results["esd_trajectory"] = [(point.step, point.retain_error) for point in trajectory.points]
    if match.matched:
        results["esd_matched"] = {**_measured(trainer, config, erase_seconds), "steps": match.step,
                                  "match": {**dataclasses.asdict(match), "how": "esd_iterations"}}
        results["advunlearn_matched"] = {**results["advunlearn"], "retain_weight": settings["retain_weight"]}
        return results
    # ESD's retain error never came within the tolerance of AdvUnlearn's (on some seeds it peaks below it and falls
    # again): tune AdvUnlearn's retain weight instead, against ESD after the same iterations.
    esd = results["esd"]
    results["esd_matched"] = {**esd, "match": {}}
    tuned, weight, tuned_match = _tune_retain_weight(seed, settings, config, esd["retain_error"])
    results["advunlearn_matched"] = {**tuned, "steps": steps, "retain_weight": weight}
    results["esd_matched"]["match"] = {**dataclasses.asdict(tuned_match), "how": "advunlearn_retain_weight",
                                       "esd_iterations_nearest": dataclasses.asdict(match)}
    return results


def _tune_retain_weight(seed: int, settings: dict, config: PromptAttackConfig, target: float,
                        doublings: int = 6, halvings: int = 6) -> tuple[dict, float, MatchedPoint]:
    """AdvUnlearn's retain weight (x2 until its held-out retain error is at most `target` + tolerance, then bisection
    in log space) so that its retain error is within `MATCH_TOLERANCE` of `target`; returns the measured run nearest
    `target`, its weight and the match."""
    def run(weight: float) -> dict:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as output_dir:
            trainer = erase(toy_erasure_components(), toy_erasure_config(
                output_dir, "advunlearn", seed, **{**settings, "retain_weight": weight}))
        error = retain_error(trainer, TOY_HELD_OUT_RETAIN_PROMPTS, config)
        return {"trainer": trainer, "error": error, "seconds": time.perf_counter() - started}

    def gap(error: float) -> float:
        return error / target - 1

    low, tried = settings["retain_weight"], {}
    high = low
    for _ in range(doublings):  # the given weight's error is above the target: raise the weight
        high *= 2
        tried[high] = run(high)
        if gap(tried[high]["error"]) <= MATCH_TOLERANCE:
            break
        low = high
    for _ in range(halvings):
        best = min(tried, key=lambda weight: abs(gap(tried[weight]["error"])))
        if abs(gap(tried[best]["error"])) <= MATCH_TOLERANCE or gap(tried[high]["error"]) > MATCH_TOLERANCE:
            break
        middle = math.sqrt(low * high)
        tried[middle] = run(middle)
        if gap(tried[middle]["error"]) > 0:
            low = middle
        else:
            high = middle
    best = min(tried, key=lambda weight: abs(gap(tried[weight]["error"])))
    chosen = tried[best]
    measured = _measured(chosen["trainer"], config, chosen["seconds"])
    relative = gap(measured["retain_error"])
    return measured, best, MatchedPoint(0, measured["retain_error"], target, relative,
                                        abs(relative) <= MATCH_TOLERANCE)


def describe_match(run: dict) -> str:
    """One sentence: how the seed's matched pair was made and how close its retain errors are."""
    match = run["esd_matched"]["match"]
    within = f"{'within' if match['matched'] else 'NOT within'} ±{MATCH_TOLERANCE:.0%}"
    if match["how"] == "esd_iterations":
        return (f"ESD's iterations tuned: {match['step']:.2f} iterations give retain error "
                f"{match['retain_error']:.3f} vs AdvUnlearn's {match['target']:.3f} ({match['relative_gap']:+.1%}, "
                f"{within})")
    peak = max(error for _, error in run["esd_trajectory"])
    return (f"ESD's retain error peaks at {peak:.3f}, below AdvUnlearn's {run['advunlearn']['retain_error']:.3f}: "
            f"AdvUnlearn's retain weight tuned instead: {run['advunlearn_matched']['retain_weight']:g} gives "
            f"{match['retain_error']:.3f} vs ESD's {match['target']:.3f} ({match['relative_gap']:+.1%}, {within})")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


# The demo's budget (about a minute and a half on one CPU core, teaching included): half the iterations of the
# benchmark at twice the rate (20 iterations at 1e-3 barely erase: leakage 0.12), fewer token-search steps.
DEMO_ERASURE, DEMO_ATTACK = {"steps": 20, "learning_rate": 2e-3}, {"discrete_iters": 5}


def erasure_demo_section(seeds: tuple[int, ...] = (0,), erasure: dict | None = None,
                         attack: dict | None = None) -> dict:
    """ESD vs AdvUnlearn on the toy task, then prompt attacks (about 1.5 minutes on CPU); prints and returns the runs'
    means ({method: {"leakage": {...}, "retain_error": float}}). `erasure` / `attack` override `TOY_ERASURE` /
    `TOY_ATTACK` (None: `DEMO_ERASURE` / `DEMO_ATTACK`)."""
    import datasets
    from transformers import logging

    datasets.disable_progress_bar()
    logging.set_verbosity_error()
    erasure = DEMO_ERASURE if erasure is None else erasure
    attack = DEMO_ATTACK if attack is None else attack
    started = time.perf_counter()
    runs = [toy_erasure_experiment(seed, erasure, attack, match_every=2) for seed in seeds]
    settings, attack_settings = {**TOY_ERASURE, **(erasure or {})}, {**TOY_ATTACK, **(attack or {})}
    print(f"tiny SD taught the concept {TOY_CONCEPT!r}; ESD and AdvUnlearn erase it from the text encoder "
          f"({settings['steps']} iterations each, same retain term; ESD = no inner attack); then a discrete "
          f"({attack_settings['num_adv_tokens']}-token prefix) and a soft (1 token) prompt attack on "
          f"{len(TOY_CONCEPT_PROMPTS)} concept prompts unlearning never saw; seeds {list(seeds)} "
          f"({time.perf_counter() - started:.0f} s)")
    print("  concept leakage d: 0 = the original concept prediction, ~1 = no concept; lower under attack = the "
          "concept came back")
    print(f"  {'model':<27} {'no attack':>10} {'discrete':>9} {'soft':>7} {'retain error':>13}")
    means = {"original": {"leakage": {"none": _mean(run["original"]["leakage"]["none"] for run in runs)},
                          "retain_error": 0.0}}
    print(f"  {'original':<27} {means['original']['leakage']['none']:10.3f} {'-':>9} {'-':>7} {0.0:13.3f}")
    for method in COMPARED:
        leakage = {key: _mean(run[method]["leakage"][key] for run in runs) for key in ("none", "discrete", "soft")}
        retain = _mean(run[method]["retain_error"] for run in runs)
        means[method] = {"leakage": leakage, "retain_error": retain}
        label = {"esd": f"esd ({settings['steps']} iterations)", "advunlearn": f"advunlearn ({settings['steps']} it.)",
                 "esd_matched": "esd, matched pair", "advunlearn_matched": "advunlearn, matched pair"}[method]
        print(f"  {label:<27} {leakage['none']:10.3f} {leakage['discrete']:9.3f} {leakage['soft']:7.3f} "
              f"{retain:13.3f}")
    for seed, run in zip(seeds, runs):
        print(f"  seed {seed}: {describe_match(run)}")
    print("  retain error: distance of held-out retain prompts' predictions from the original's (0 = intact, 1 = as "
          "if the prompts were empty)")
    print("  benchmarks/advunlearn_effect.py runs more seeds")
    return means
