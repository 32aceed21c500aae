"""Retrieval attacks: GASLITE adversarial passages against sentence-transformers, baselines, and their evaluation."""

from ..cli import register_command
from .baselines import HotflipConfig, hotflip_poison, info_only, query_stuffing
from .data import DEFAULT_INFO, concept_queries, default_corpus
from .evaluate import PoisoningReport, encode_corpus, encode_queries, evaluate_poisoning
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
    "DEFAULT_INFO",
    "concept_queries",
    "default_corpus",
    "PoisoningReport",
    "encode_corpus",
    "encode_queries",
    "evaluate_poisoning",
]

register_command("gaslite", "hf_robust.retrieval.command", "GASLITE adversarial passages against a dense retriever, "
                 "evaluated on held-out queries")
