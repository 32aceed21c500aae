"""LLM unlearning with smoothed forget losses (Fan et al., ICML 2025): UnlearnConfig and UnlearnTrainer."""

from ..cli import register_command
from ..lazy import lazy_exports

register_command("unlearn", "hf_robust.unlearning.command", "LLM unlearning (NPO, GradDiff, RMU, ...) with SAM "
                 "smoothing, then a relearning attack")

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".config": ["UnlearnConfig"],
    ".trainer": ["UnlearnDataCollator", "UnlearnTrainer"],
    ".smoothing": ["WeightAveragingCallback"],
    ".stopping": ["ForgetTargetCallback"],
    ".relearn": ["RelearnConfig", "RelearnResult", "relearning_attack"],
    ".relearn_callback": ["RelearningEvalCallback"],
    ".metrics": ["UnlearningMetrics", "VerbatimResult", "evaluate_unlearning", "min_k_percent",
                 "multiple_choice_accuracy", "sequence_nll", "verbatim_memorisation"],
})
