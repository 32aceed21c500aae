"""hf-robust: make Hugging Face models robust, and attack them to measure it."""

__version__ = "0.1.0"

from .attacks import (
    EmbeddingAttackConfig,
    EmbeddingAttackResult,
    GCGConfig,
    GCGResult,
    PGDConfig,
    PGDResult,
    TokenSearchConfig,
    TokenSearchResult,
    allowed_token_mask,
    embedding_attack,
    gcg_attack,
    projected_gradient_descent,
    token_search,
)
from .cat import (
    CAPOConfig,
    CAPOTrainer,
    CATConfig,
    CATTrainer,
    EmbeddingAdversaryCallback,
    RobustnessEvalCallback,
    embedding_attack_success_rate,
)
from .hub import (
    PushResult,
    RobustnessResult,
    build_robustness_card,
    push_robust_to_hub,
    robustness_results_from_card,
)

__all__ = [
    "CAPOConfig",
    "CAPOTrainer",
    "CATConfig",
    "CATTrainer",
    "EmbeddingAdversaryCallback",
    "EmbeddingAttackConfig",
    "EmbeddingAttackResult",
    "GCGConfig",
    "GCGResult",
    "PGDConfig",
    "PGDResult",
    "PushResult",
    "RobustnessEvalCallback",
    "RobustnessResult",
    "TokenSearchConfig",
    "TokenSearchResult",
    "allowed_token_mask",
    "__version__",
    "build_robustness_card",
    "embedding_attack",
    "embedding_attack_success_rate",
    "gcg_attack",
    "projected_gradient_descent",
    "push_robust_to_hub",
    "robustness_results_from_card",
    "token_search",
]
