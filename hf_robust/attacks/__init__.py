"""Attack cores shared by every method: continuous (PGD in embedding space) and discrete (token search)."""

from .continuous import (
    EmbeddingAttackConfig,
    EmbeddingAttackResult,
    PGDConfig,
    PGDResult,
    embedding_attack,
    eval_mode,
    perturbation_radius,
    projected_gradient_descent,
    user_turn_mask,
)
from .discrete import (
    TokenFilter,
    TokenObjective,
    TokenSearchConfig,
    TokenSearchResult,
    allowed_token_mask,
    token_search,
    tokenizer_round_trip,
)
from .gcg import GCGConfig, GCGResult, gcg_attack

__all__ = [
    "EmbeddingAttackConfig",
    "EmbeddingAttackResult",
    "PGDConfig",
    "PGDResult",
    "embedding_attack",
    "eval_mode",
    "perturbation_radius",
    "projected_gradient_descent",
    "user_turn_mask",
    "TokenFilter",
    "TokenObjective",
    "TokenSearchConfig",
    "TokenSearchResult",
    "allowed_token_mask",
    "token_search",
    "tokenizer_round_trip",
    "GCGConfig",
    "GCGResult",
    "gcg_attack",
]
