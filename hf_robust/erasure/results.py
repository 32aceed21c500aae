"""The result of `prompt_attack`: one row per concept prompt, and UnlearnDiffAtk's attack success rates."""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..hub import RobustnessResult
from .conditioning import SoftTokens

if TYPE_CHECKING:
    from .prompt_attack_config import PromptAttackConfig


@dataclass
class PromptAttackRow:
    """One concept prompt under attack. Leakage distances are d (see `hf_robust.erasure.leakage`); `leaked_*` are
    the successes (by the detector when one was given, else d < leakage_threshold); None where the attack was not run.

    Attributes:
        adversarial_ids: the discrete attack's token ids (first tokenizer, padded to its maximum length).
        discrete_history: the token search's loss (= d) before and after each iteration, non-increasing.
        soft_tokens, soft_input_ids: the soft attack's tokens and laid-out ids (`encode_prompts` them to reuse).
        soft_losses: the soft attack's objective (unnormalised MSE, one evaluation point per step).
    """

    prompt: str
    leakage_before: float
    leaked_before: bool
    adversarial_prompt: str | None = None
    adversarial_ids: list[int] | None = None
    leakage_discrete: float | None = None
    leaked_discrete: bool | None = None
    discrete_history: list[float] = field(default_factory=list)
    leakage_soft: float | None = None
    leaked_soft: bool | None = None
    soft_losses: list[float] = field(default_factory=list)
    soft_tokens: SoftTokens | None = field(default=None, repr=False)
    soft_input_ids: list[Tensor] | None = field(default=None, repr=False)

    @property
    def success(self) -> bool:
        """Leaked before the attack or after any attack."""
        return bool(self.leaked_before or self.leaked_discrete or self.leaked_soft)


@dataclass
class PromptAttackResult:
    """Output of `prompt_attack`: per-prompt rows and UnlearnDiffAtk's attack success rate.

    Attributes:
        rows: one `PromptAttackRow` per concept prompt, in order.
        config: the settings used.
        detector: whether `concept_detector` decided success (else the leakage threshold did).
    """

    rows: list[PromptAttackRow]
    config: "PromptAttackConfig"
    detector: bool = False

    def _rate(self, attacks: Sequence[str]) -> float:
        if not self.rows:
            return float("nan")
        flags = [row.leaked_before or any(getattr(row, f"leaked_{attack}") for attack in attacks) for row in self.rows]
        return sum(map(bool, flags)) / len(flags)

    @property
    def pre_attack_success_rate(self) -> float:
        """Fraction of prompts whose concept leaks without attack (UnlearnDiffAtk's pre-ASR)."""
        return self._rate(())

    @property
    def attack_success_rate(self) -> float:
        """(pre-attack + post-attack successes) / N: leaked before OR after any attack (UnlearnDiffAtk's ASR)."""
        return self._rate(self.config.attacks)

    def success_rate(self, attack: str) -> float:
        """ASR of one attack alone ('discrete' or 'soft'): leaked before or after that attack."""
        if attack not in self.config.attacks:
            raise ValueError(f"`attack` must be one of the attacks run, {self.config.attacks}, got {attack!r}.")
        return self._rate((attack,))

    def mean_leakage(self, attack: str | None = None) -> float:
        """Mean leakage distance before the attacks (None) or after `attack`."""
        if attack is not None and attack not in self.config.attacks:
            raise ValueError(f"`attack` must be None or one of the attacks run, {self.config.attacks}, got "
                             f"{attack!r}.")
        values = [getattr(row, "leakage_before" if attack is None else f"leakage_{attack}") for row in self.rows]
        return sum(values) / len(values) if values else float("nan")

    def metrics(self) -> dict[str, float]:
        """Flat rates and mean distances, e.g. for `trainer.log` (the callback prefixes `leakage/`)."""
        values = {"attack_success_rate": self.attack_success_rate,
                  "pre_attack_success_rate": self.pre_attack_success_rate, "mean_before": self.mean_leakage()}
        for attack in self.config.attacks:
            values[f"{attack}_success_rate"] = self.success_rate(attack)
            values[f"mean_{attack}"] = self.mean_leakage(attack)
        return values

    def robustness_results(self, dataset: str = "concept prompts", dataset_type: str | None = None,
                           split: str | None = None) -> list[RobustnessResult]:
        """`RobustnessResult`s for `push_robust_to_hub` (task "text-to-image"): the attack success rate and the
        mean leakage distance with no attack, under each attack ("unlearndiffatk" = discrete, "soft_prompt") and
        under any ("prompt_attack")."""
        settings = {**dataclasses.asdict(self.config), "prompts": len(self.rows),
                    "success": "concept_detector" if self.detector else
                    f"leakage_distance < {self.config.leakage_threshold}"}
        names = {"discrete": "unlearndiffatk", "soft": "soft_prompt"}

        def result(attack, metric, value):
            return RobustnessResult(attack=attack, metric=metric, value=value, dataset=dataset,
                                    dataset_type=dataset_type, task="text-to-image", split=split,
                                    attack_config=settings)

        results = [result("no_attack", "attack_success_rate", self.pre_attack_success_rate),
                   result("no_attack", "concept_leakage", self.mean_leakage())]
        for attack in self.config.attacks:
            results += [result(names[attack], "attack_success_rate", self.success_rate(attack)),
                        result(names[attack], "concept_leakage", self.mean_leakage(attack))]
        results.append(result("prompt_attack", "attack_success_rate", self.attack_success_rate))
        return results

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready): config, rates and rows (without tensors)."""
        rows = [{key: value for key, value in dataclasses.asdict(row).items()
                 if key not in ("soft_tokens", "soft_input_ids")} | {"success": row.success} for row in self.rows]
        return {"config": dataclasses.asdict(self.config), "detector": self.detector, **self.metrics(), "rows": rows}
