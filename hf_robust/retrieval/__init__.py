"""Retrieval attacks: GASLITE adversarial passages against sentence-transformers, and baselines."""

from .baselines import HotflipConfig, hotflip_poison, info_only, query_stuffing
from .gaslite import (
    GasliteConfig,
    GasliteResult,
    craft_poison_passages,
    document_prompt_name,
    gaslite_attack,
    query_prompt_name,
)

__all__ = [
    "GasliteConfig",
    "GasliteResult",
    "craft_poison_passages",
    "document_prompt_name",
    "gaslite_attack",
    "query_prompt_name",
    "HotflipConfig",
    "hotflip_poison",
    "info_only",
    "query_stuffing",
]
