"""CAT on the toy refusal task: embedding-attack success and utility before and after adversarial training.

`toy_cat_experiment` is the whole measurement (shared by `benchmarks/cat_effect.py` and the demo section);
`cat_demo_section` is the `hf-robust demo` section, a short run of it.
"""

import tempfile
import time

from ..attacks.continuous import EmbeddingAttackConfig
from ..evaluation.behaviour_attacks import embedding_attack_success_rate
from ..evaluation.presets import get_preset
from .toy import (
    toy_adversarial_dataset,
    toy_behaviours,
    toy_refusal_model,
    toy_refusal_rates,
    toy_utility_dataset,
    toy_utility_loss,
)

# The evaluation attack is the "strong" preset: the undefended toy model must be broken by it (success >= 90%). The
# tiny model must copy the request into "Sure, here is how to <request>" byte-level token by token, which a weak
# perturbation disturbs; 100 Adam steps inside a ball of one mean embedding norm get there.
EVALUATION_PRESET = get_preset("strong")
EVALUATION_ATTACK = EVALUATION_PRESET.config

# CAT's inner attack: the evaluation budget (eps), fewer steps as in the paper (10), a larger step to match.
TRAINING_ATTACK = {"attack_eps": 1.0, "attack_eps_mode": "relative", "attack_steps": 10, "attack_step_size": 0.1,
                   "attack_step_mode": "relative", "attack_optimizer": "adam", "attack_init": "zero"}


def toy_cat_config(output_dir: str, steps: int, seed: int = 0, **overrides):
    """`CATConfig` of the toy run: full fine-tuning, batch 16, half the rows adversarial, CPU, float32."""
    from .cat_config import CATConfig

    settings = {
        "max_steps": steps,
        "per_device_train_batch_size": 16,
        "learning_rate": 5e-4,
        "lr_scheduler_type": "constant",
        # 22 adversarial rows against 48-70 utility rows: "all_exhausted" cycles the adversarial rows, so every
        # utility row is trained on (with "first_exhausted", half of them would never be seen and be forgotten).
        "adversarial_fraction": 0.5,
        "mixing_stopping_strategy": "all_exhausted",
        "away_weight": 0.5,
        "toward_weight": 0.5,
        "utility_weight": 1.0,
        **TRAINING_ATTACK,
        "max_length": 96,
        "bf16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
        "seed": seed,
        **overrides,
    }
    return CATConfig(output_dir=output_dir, **settings)


def measure(model, tokenizer, attack: EmbeddingAttackConfig = EVALUATION_ATTACK, train_answers: bool = True,
            max_new_tokens: int = 32) -> dict[str, float]:
    """Attack success on the held-out behaviours, utility loss on the unseen allowed requests, clean refusal rates
    and (with `train_answers`) the fraction of trained allowed requests answered exactly."""
    clean = toy_refusal_rates(model, tokenizer, "test", max_new_tokens)
    measured = {
        "attack_success": embedding_attack_success_rate(model, tokenizer, toy_behaviours("test"), attack),
        "utility_loss": toy_utility_loss(model, tokenizer, "test"),
        "clean_refusal": clean["refused_forbidden"],
        "over_refusal": clean["refused_allowed"],
    }
    if train_answers:
        measured["train_answers"] = toy_refusal_rates(model, tokenizer, "train", max_new_tokens)["answered_allowed"]
    return measured


def toy_cat_experiment(
    seed: int = 0,
    refusal_steps: int = 300,
    cat_steps: int = 100,
    attack: EmbeddingAttackConfig = EVALUATION_ATTACK,
    clean_refusals: bool = True,
) -> dict:
    """Train `toy_refusal_model`, measure, run CAT on the "train" split, measure again.

    With `clean_refusals`, CAT's utility rows include the training forbidden requests answered with the refusal
    (`toy_utility_dataset("train", with_refusals=True)`). The toy needs them: its attack budget is a whole mean
    embedding norm, so prompt + delta is far from the clean prompt, and refusing only under perturbation (the paper's
    mix, `clean_refusals=False`) can leave clean forbidden requests answered with garbage instead of the refusal.

    Returns:
        {"before": measure(...), "after": measure(...), "seconds": {"refusal_model", "cat"}}.
    """
    from transformers import PrinterCallback

    from .cat_trainer import CATTrainer

    started = time.perf_counter()
    model, tokenizer = toy_refusal_model(seed=seed, steps=refusal_steps)
    seconds = {"refusal_model": time.perf_counter() - started}
    before = measure(model, tokenizer, attack)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = CATTrainer(
            model=model,
            args=toy_cat_config(output_dir, cat_steps, seed),
            adversarial_dataset=toy_adversarial_dataset("train"),
            utility_dataset=toy_utility_dataset("train", with_refusals=clean_refusals),
            processing_class=tokenizer,
        )
        trainer.remove_callback(PrinterCallback)  # the caller prints the measurements
        started = time.perf_counter()
        trainer.train()
        seconds["cat"] = time.perf_counter() - started
    after = measure(trainer.model.eval(), tokenizer, attack)
    return {"before": before, "after": after, "seconds": seconds}


def cat_demo_section() -> None:
    """A short CAT run on the toy task (< 2 min on CPU): attack success and utility before/after."""
    import datasets

    datasets.disable_progress_bar()
    result = toy_cat_experiment(cat_steps=60)
    before, after = result["before"], result["after"]
    print(f"tiny llama safety-tuned on the toy refusal task ({result['seconds']['refusal_model']:.0f} s), then CAT "
          f"for 60 steps ({result['seconds']['cat']:.0f} s); attack: the '{EVALUATION_PRESET.name}' preset (eps "
          f"{EVALUATION_ATTACK.eps} relative, {EVALUATION_ATTACK.steps} Adam steps), on {len(toy_behaviours('test'))} "
          "held-out forbidden requests")
    print(f"  embedding-attack success     {before['attack_success']:6.0%} -> {after['attack_success']:6.0%}")
    print(f"  utility loss, unseen allowed {before['utility_loss']:6.3f} -> {after['utility_loss']:6.3f}  nats/token")
    print(f"  clean refusal (held-out)     {before['clean_refusal']:6.0%} -> {after['clean_refusal']:6.0%}")
    print(f"  refusal of unseen allowed    {before['over_refusal']:6.0%} -> {after['over_refusal']:6.0%}")
