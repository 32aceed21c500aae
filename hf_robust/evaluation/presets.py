"""Evaluation attack presets: one place for the strength of every reported attack number.

A preset is a named, frozen attack configuration. Every "before"/"after" number of the training commands, the
`RobustnessEvalCallback` default and the benchmarks are measured with a preset, and the preset's name and settings
travel with the number (robustness.json, model cards).

    >>> preset = get_preset("strong")
    >>> rate = embedding_attack_success_rate(model, tokenizer, behaviours, preset.config)
    >>> preset.describe()  # {"name": "strong", "kind": "embedding", "description": ..., "settings": {...}}

Why not score with the training attack: CAT's inner attack (eps 0.05 relative, 10 signed steps of 1e-4) cannot
even reach its own ball on a real model (SmolLM2-135M: radius 0.160, while 10 such steps move a token by at most
10 x 1e-4 x sqrt(576) = 0.024 in L2), so a number measured with it says how robust the model is to the very
perturbation it was trained on, not how robust it is.

The configs are imported on first use, so that importing `hf_robust.evaluation` stays light.
"""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

KINDS = ("embedding", "gcg")


@dataclass(frozen=True)
class AttackPreset:
    """A named evaluation attack.

    Args:
        name: Registry name, e.g. "strong".
        kind: "embedding" (`EmbeddingAttackConfig`, for `embedding_attack_success_rate`) or "gcg" (`GCGConfig`,
            for `gcg_attack`).
        settings: Keyword arguments of the config class; read-only.
        description: One sentence for reports and cards: what the preset is and why.
    """

    name: str
    kind: str
    settings: Mapping[str, Any]
    description: str

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"`name` must be a non-empty string, got {self.name!r}.")
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {', '.join(map(repr, KINDS))}, got {self.kind!r}.")
        if not isinstance(self.settings, Mapping):
            raise TypeError(f"`settings` must be a mapping of config fields, got {type(self.settings).__name__}.")
        if not isinstance(self.description, str) or not self.description.strip():
            raise ValueError(f"`description` must be a non-empty string, got {self.description!r}.")
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    @property
    def config(self):
        """A fresh `EmbeddingAttackConfig` or `GCGConfig` (a new object on every access: callers may change it)."""
        if self.kind == "embedding":
            from ..attacks.continuous import EmbeddingAttackConfig

            return EmbeddingAttackConfig(**self.settings)
        from ..attacks.gcg import GCGConfig

        return GCGConfig(**self.settings)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for reports and cards: name, kind, description and every config field."""
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "settings": dataclasses.asdict(self.config)}


EVALUATION_PRESETS: Mapping[str, AttackPreset] = MappingProxyType({preset.name: preset for preset in (
    AttackPreset(
        "train", "embedding", {},
        "The CAT paper's training attack (EmbeddingAttackConfig defaults: eps 0.05 relative, 10 signed steps of "
        "1e-4). Reproduces the paper's numbers; too weak to fill its own ball on real models.",
    ),
    AttackPreset(
        # A toy model must be broken by it (success >= 90% before CAT), which 100 Adam steps inside a ball of one
        # mean embedding norm achieve; relative steps fill the ball on any model within a few steps.
        "strong", "embedding",
        {"eps": 1.0, "eps_mode": "relative", "steps": 100, "step_size": 0.03, "step_mode": "relative",
         "optimizer": "adam"},
        "Embedding attack in a ball of one mean embedding norm (eps 1.0 relative), 100 Adam steps of 0.03 x radius: "
        "the default for every reported after-training number.",
    ),
    AttackPreset(
        "gcg", "gcg", {"n_iters": 250, "search_width": 512, "topk": 256},
        "GCG with nanoGCG's defaults (250 iterations, search width 512, top-k 256, 20-token '!' suffix).",
    ),
    AttackPreset(
        "gcg-cpu", "gcg", {"n_iters": 20, "search_width": 64, "topk": 64},
        "GCG small enough for a 135M model on 2 CPU cores (20 iterations, search width 64, top-k 64, about 80 s a "
        "behaviour); a weak lower bound on GCG's success, for CPU benchmarks only.",
    ),
    AttackPreset(
        "gcg-fast", "gcg", {"n_iters": 50, "search_width": 128, "topk": 256},
        "GCG cut down for CPU runs (50 iterations, search width 128, top-k 256); a lower bound on GCG's success.",
    ),
)})


def get_preset(name: str, kind: str | None = None) -> AttackPreset:
    """The preset registered under `name`; with `kind`, it must be of that kind.

    Raises:
        ValueError: unknown name (the message lists the allowed ones), or a preset of another kind.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"`kind` must be None or one of {', '.join(map(repr, KINDS))}, got {kind!r}.")
    allowed = [preset for preset in EVALUATION_PRESETS.values() if kind is None or preset.kind == kind]
    if not isinstance(name, str) or name not in EVALUATION_PRESETS or EVALUATION_PRESETS[name] not in allowed:
        names = ", ".join(repr(preset.name) for preset in allowed)
        raise ValueError(f"`name` must be one of the {kind + ' ' if kind else ''}evaluation presets {names}, "
                         f"got {name!r}.")
    return EVALUATION_PRESETS[name]


def resolve_attack(attack, kind: str, argument: str = "attack") -> tuple[str | None, Any]:
    """`(preset name or None, config)` for an attack given as a preset name, an `AttackPreset` or a config.

    Args:
        attack: "strong", `get_preset("strong")`, or an `EmbeddingAttackConfig` / `GCGConfig` (then the name is
            None: a custom attack).
        kind: "embedding" or "gcg"; the attack must be of that kind.
        argument: The caller's argument name, for the error messages.
    """
    from ..attacks.continuous import EmbeddingAttackConfig
    from ..attacks.gcg import GCGConfig

    config_class = {"embedding": EmbeddingAttackConfig, "gcg": GCGConfig}.get(kind)
    if config_class is None:
        raise ValueError(f"`kind` must be one of {', '.join(map(repr, KINDS))}, got {kind!r}.")
    if isinstance(attack, config_class):
        return None, attack
    if isinstance(attack, str):
        try:
            attack = get_preset(attack, kind)
        except ValueError as error:
            raise ValueError(str(error).replace("`name`", f"`{argument}`", 1)) from None
    if isinstance(attack, AttackPreset) and attack.kind == kind:
        return attack.name, attack.config
    raise TypeError(f"`{argument}` must be a {kind} preset name, an AttackPreset of kind {kind!r} or a "
                    f"{config_class.__name__}, got {type(attack).__name__}"
                    f"{' of kind ' + repr(attack.kind) if isinstance(attack, AttackPreset) else ''}.")


def at_least_as_strong(attack, training_config) -> bool:
    """Whether an evaluation attack is at least as strong as a training attack, by a rule that needs no model.

    The rule: same threat model (an embedding attack, the same `eps_mode`, so that the radii are in the same unit),
    `eps >= training eps` (its ball contains the training ball) and `steps >= training steps`. Step size, optimizer
    and initialisation are not compared: the presets fix them, and a larger ball searched at least as long is what
    "not the perturbation the model was trained on" needs. A GCG preset is a different threat model, so it is never
    "at least as strong" as an embedding attack: the answer is False, not a comparison.

    Args:
        attack: A preset name, an `AttackPreset` or an `EmbeddingAttackConfig`.
        training_config: The training attack, a `PGDConfig` (e.g. `CATConfig.attack_config()`).
    """
    from ..attacks.continuous import EmbeddingAttackConfig, PGDConfig

    if not isinstance(training_config, PGDConfig):
        raise TypeError(f"`training_config` must be a PGDConfig (e.g. EmbeddingAttackConfig), "
                        f"got {type(training_config).__name__}.")
    if isinstance(attack, str):
        attack = get_preset(attack)
    if isinstance(attack, AttackPreset):
        if attack.kind != "embedding":
            return False
        attack = attack.config
    if not isinstance(attack, EmbeddingAttackConfig):
        raise TypeError(f"`attack` must be a preset name, an AttackPreset or an EmbeddingAttackConfig, "
                        f"got {type(attack).__name__}.")
    return (attack.eps_mode == training_config.eps_mode and attack.eps >= training_config.eps
            and attack.steps >= training_config.steps)


def require_at_least_as_strong(name: str, training_config, argument: str = "eval_preset") -> AttackPreset:
    """The preset `name`, after checking it is `at_least_as_strong` as `training_config`.

    Raises:
        ValueError: naming `argument`, the training attack's eps and steps and the presets that would do.
    """
    try:
        preset = get_preset(name)
    except ValueError as error:
        raise ValueError(str(error).replace("`name`", f"`{argument}`", 1)) from None
    if at_least_as_strong(preset, training_config):
        return preset
    allowed = [other.name for other in EVALUATION_PRESETS.values() if at_least_as_strong(other, training_config)]
    training = f"eps {training_config.eps} {training_config.eps_mode}, {training_config.steps} steps"
    if preset.kind == "embedding":
        config = preset.config
        weaker = (f"(eps {config.eps} {config.eps_mode}, {config.steps} steps) is weaker than the training attack "
                  f"({training})")
    else:
        weaker = f"is a {preset.kind} attack, not comparable with the embedding training attack ({training})"
    raise ValueError(
        f"`{argument}` {name!r} {weaker}. An after-training number must come from an attack at least as strong as "
        f"the training attack (same eps_mode, eps and steps at least the training ones), or it measures robustness "
        f"to the perturbation the model was trained on. Allowed presets: "
        f"{', '.join(map(repr, allowed)) if allowed else 'none (lower the training attack_eps or attack_steps)'}."
    )
