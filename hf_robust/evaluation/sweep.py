"""Attack success rate against attack budget: how the embedding attack's success grows with eps and steps.

    rows = attack_budget_sweep(model, tokenizer, behaviours, eps_values=[0.05, 0.25, 1.0], step_values=[10, 50, 100])
    plot_budget_sweep(rows, "asr_vs_budget.png")  # hf_robust.evaluation.plots

A robustness number read off one budget can hide that the model breaks just above it; the sweep shows the curve.
"""

import dataclasses
import math
from collections.abc import Sequence
from numbers import Real

from ..checks import is_integer
from .presets import resolve_attack


def _checked_values(values, name: str, check, allowed: str) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"`{name}` must be a non-empty list of {allowed}, got {values!r}.")
    for index, value in enumerate(values):
        if not check(value):
            raise ValueError(f"`{name}[{index}]` must be {allowed}, got {value!r}.")
    return list(values)


def attack_budget_sweep(model, tokenizer, behaviours, eps_values: Sequence[float], step_values: Sequence[int],
                        base="strong") -> list[dict]:
    """Embedding-attack success rate at every (eps, steps) budget.

    Each budget is the `base` attack with its `eps` and `steps` replaced (step size, optimizer, `eps_mode` and the
    rest stay the base's; with a relative step size the step follows the radius), scored by
    `embedding_attack_success_rate` on all `behaviours`. The model is left as it was.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`).
        tokenizer: Its tokenizer (chat formatting through `apply_chat_template`).
        behaviours: list of {"prompt", "target"} mappings, or a `datasets.Dataset` with those string columns.
        eps_values: Budgets in the base's `eps_mode`, each a finite number >= 0.
        step_values: Attack steps, each an integer >= 0.
        base: An embedding preset name, an `AttackPreset` or a targeted `EmbeddingAttackConfig`.

    Returns:
        One row per (eps, steps), eps-major in the given order: {"eps": float, "steps": int, "asr": float in [0, 1]}.
    """
    from ..checks import checked_behaviours
    from .behaviour_attacks import embedding_attack_success_rate

    eps_values = _checked_values(
        eps_values, "eps_values",
        lambda value: isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value >= 0,
        "finite numbers >= 0")
    step_values = _checked_values(step_values, "step_values", lambda value: is_integer(value) and value >= 0,
                                  "integers >= 0")
    _, config = resolve_attack(base, "embedding", "base")
    if not config.targeted:
        raise ValueError("`base` must be a targeted attack: success means the model gives the target.")
    checked_behaviours(behaviours)  # raises naming `behaviours`, before any attack runs
    rows = []
    for eps in eps_values:
        for steps in step_values:
            budget = dataclasses.replace(config, eps=float(eps), steps=int(steps))
            rate = embedding_attack_success_rate(model, tokenizer, behaviours, budget)
            rows.append({"eps": float(eps), "steps": int(steps), "asr": rate})
    return rows
