"""Continuous adversarial training of LLMs (CAT, CAPO) and the drop-in embedding adversary callback."""

from .callback import EmbeddingAdversaryCallback
from .evaluation import behaviour_ids, embedding_attack_success_rate

__all__ = ["EmbeddingAdversaryCallback", "behaviour_ids", "embedding_attack_success_rate"]
