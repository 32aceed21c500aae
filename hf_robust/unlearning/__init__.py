"""LLM unlearning with smoothed forget losses (Fan et al., ICML 2025): UnlearnConfig and UnlearnTrainer."""

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
