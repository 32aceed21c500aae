"""`RobustnessResult`: one measured robustness number, and its round trip through a card's `model-index`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import EvalResult, ModelCard

PRESET_KEY = "preset"  # the metric args key holding `RobustnessResult.attack_preset`


def _check_text(value: Any, name: str, *, optional: bool = False) -> None:
    """Raise TypeError/ValueError naming `name` unless `value` is a non-empty string (or None when optional)."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a string, got {type(value).__name__}.")
    if not value.strip():
        raise ValueError(f"`{name}` must be a non-empty string.")


def _plain_setting(value: Any, path: str) -> Any:
    """Return `value` as plain YAML data (str, int, float, bool, None, list, dict with str keys).

    Tuples become lists, numpy-style scalars become Python numbers and dict entries whose value is None are left
    out (huggingface_hub drops them from `model-index`), so that the card's YAML (written with `yaml.dump`, read
    with `yaml.safe_load`) gives the same value back.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain_setting(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"`{path}` keys must be strings, got {key!r}.")
            if item is not None:
                plain[key] = _plain_setting(item, f"{path}[{key!r}]")
        return plain
    raise TypeError(
        f"`{path}` must hold only str, int, float, bool, None, lists and dicts, got {type(value).__name__}."
    )


@dataclass
class RobustnessResult:
    """One robustness measurement: a metric of an attack run against the model on a dataset.

    Args:
        attack: Attack that was run, e.g. "embedding_attack", "gcg", "relearning", "gaslite".
        metric: Metric identifier, e.g. "attack_success_rate", "forget_nll", "top10_appeared".
        value: Measured value; any finite real number, stored as float.
        dataset: Dataset name shown on the card, e.g. "AdvBench".
        dataset_type: Dataset identifier (a Hub dataset id where there is one); defaults to `dataset`.
        task: Hub task identifier, e.g. "text-generation", "text-to-image", "sentence-similarity".
        split: Dataset split the attack was run on, if any.
        attack_config: The attack's settings (steps, epsilon, ...), so a reader knows how it was measured.
            Plain YAML data only; tuples are stored as lists and None entries left out. The key "preset" is
            reserved for `attack_preset`.
        attack_preset: Name of the evaluation preset that produced the value (`hf_robust.evaluation.presets`, e.g.
            "strong"), or None for a custom attack.
    """

    attack: str
    metric: str
    value: float
    dataset: str
    dataset_type: str | None = None
    task: str = "text-generation"
    split: str | None = None
    attack_config: dict[str, Any] = field(default_factory=dict)
    attack_preset: str | None = None

    def __post_init__(self) -> None:
        for name in ("attack", "metric", "dataset", "task"):
            _check_text(getattr(self, name), name)
        _check_text(self.dataset_type, "dataset_type", optional=True)
        _check_text(self.split, "split", optional=True)
        _check_text(self.attack_preset, "attack_preset", optional=True)
        if self.dataset_type is None:
            self.dataset_type = self.dataset
        if isinstance(self.value, bool) or not isinstance(self.value, numbers.Real):
            raise TypeError(f"`value` must be a real number, got {type(self.value).__name__}.")
        self.value = float(self.value)
        if not math.isfinite(self.value):
            raise ValueError(f"`value` must be finite, got {self.value}.")
        if not isinstance(self.attack_config, Mapping):
            raise TypeError(f"`attack_config` must be a dict, got {type(self.attack_config).__name__}.")
        if PRESET_KEY in self.attack_config:
            raise ValueError(
                f"`attack_config` must not have the key {PRESET_KEY!r}: reserved for `attack_preset` on the card."
            )
        self.attack_config = _plain_setting(self.attack_config, "attack_config")

    def to_eval_result(self) -> EvalResult:
        """The huggingface_hub `EvalResult` that stores this result in a card's `model-index`."""
        preset = {PRESET_KEY: self.attack_preset} if self.attack_preset else {}
        return EvalResult(
            task_type=self.task,
            dataset_type=self.dataset_type,
            dataset_name=self.dataset,
            dataset_split=self.split,
            metric_type=self.metric,
            metric_value=self.value,
            metric_name=f"{self.metric} under {self.attack}" + (f" ({self.attack_preset})" if preset else ""),
            metric_config=self.attack,
            metric_args={**preset, **self.attack_config} or None,
        )

    @classmethod
    def from_eval_result(cls, eval_result: EvalResult) -> RobustnessResult:
        """Read back a result written by `to_eval_result` (the attack is the metric's `config`)."""
        if not eval_result.metric_config:
            raise ValueError(
                f"`eval_result` for metric {eval_result.metric_type!r} has no metric config naming the attack, "
                "so it is not a robustness result."
            )
        settings = dict(eval_result.metric_args or {})
        preset = settings.pop(PRESET_KEY, None)
        return cls(
            attack=eval_result.metric_config,
            metric=eval_result.metric_type,
            value=eval_result.metric_value,
            dataset=eval_result.dataset_name,
            dataset_type=eval_result.dataset_type,
            task=eval_result.task_type,
            split=eval_result.dataset_split,
            attack_config=settings,
            attack_preset=preset,
        )


def robustness_results_from_card(card: ModelCard | str) -> list[RobustnessResult]:
    """The robustness results in a card's `model-index`.

    Args:
        card: A `ModelCard` or the text of a README.md.

    Results come in model-index order, which huggingface_hub groups by (task, dataset type, split): results written
    interleaved come back grouped. Evaluation results without an attack (plain metrics from other tools) are skipped.
    """
    if isinstance(card, str):
        card = ModelCard(card)
    if not isinstance(card, ModelCard):
        raise TypeError(f"`card` must be a ModelCard or README text, got {type(card).__name__}.")
    eval_results = card.data.eval_results or []
    return [RobustnessResult.from_eval_result(result) for result in eval_results if result.metric_config]

