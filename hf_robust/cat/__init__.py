"""Continuous adversarial training of LLMs (CAT, CAPO) and the drop-in embedding adversary callback."""

from .callback import EmbeddingAdversaryCallback

__all__ = ["EmbeddingAdversaryCallback"]
