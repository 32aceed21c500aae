"""LLM unlearning with smoothed forget losses (Fan et al., ICML 2025): UnlearnConfig and UnlearnTrainer."""

from ..cli import register_command
from .config import UnlearnConfig
from .metrics import (
    UnlearningMetrics,
    VerbatimResult,
    evaluate_unlearning,
    min_k_percent,
    multiple_choice_accuracy,
    sequence_nll,
    verbatim_memorisation,
)
from .relearn import RelearnConfig, RelearningEvalCallback, RelearnResult, relearning_attack
from .smoothing import WeightAveragingCallback
from .trainer import UnlearnDataCollator, UnlearnTrainer

register_command("unlearn", "hf_robust.unlearning.command", "LLM unlearning (NPO, GradDiff, RMU, ...) with SAM "
                 "smoothing, then a relearning attack")

__all__ = [
    "UnlearnConfig",
    "UnlearnDataCollator",
    "UnlearnTrainer",
    "WeightAveragingCallback",
    "RelearnConfig",
    "RelearnResult",
    "RelearningEvalCallback",
    "UnlearningMetrics",
    "VerbatimResult",
    "evaluate_unlearning",
    "min_k_percent",
    "multiple_choice_accuracy",
    "relearning_attack",
    "sequence_nll",
    "verbatim_memorisation",
]
