"""Attack cores shared by every method: continuous (PGD in embedding space) and discrete (token search)."""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".chat_masks": ["user_turn_mask"],
    ".continuous": ["EmbeddingAttackConfig", "EmbeddingAttackResult", "embedding_attack"],
    ".pgd": ["PGDConfig", "PGDResult", "perturbation_radius", "projected_gradient_descent"],
    ".discrete": ["STOP_REASONS", "TokenFilter", "TokenObjective", "TokenSearchConfig", "TokenSearchResult",
                  "allowed_token_mask", "token_search", "tokenizer_round_trip"],
    ".token_search_state": ["Proposal", "TokenSearch"],
    ".lockstep": ["JointObjective", "lockstep_token_search"],
    ".gcg": ["GCGConfig", "GCGResult", "UniversalGCGResult", "gcg_attack", "universal_gcg_attack"],
    "..modeling": ["eval_mode"],
})
