"""Retrieval attacks: GASLITE adversarial passages against sentence-transformers, baselines, and their evaluation."""

from ..cli import register_command
from ..lazy import lazy_exports

register_command("gaslite", "hf_robust.retrieval.command", "GASLITE adversarial passages against a dense retriever, "
                 "evaluated on held-out queries")

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".gaslite": ["GasliteConfig", "GasliteResult", "craft_poison_passages", "document_prompt", "document_prompt_name",
                 "gaslite_attack", "query_prompt", "query_prompt_name"],
    ".baselines": ["HotflipConfig", "hotflip_poison", "info_only", "query_stuffing"],
    ".data": ["DEFAULT_INFO", "concept_queries", "default_corpus"],
    ".evaluate": ["PoisoningReport", "encode_corpus", "encode_queries", "evaluate_poisoning",
                  "report_from_scores"],
})
