"""Continuous adversarial training of LLMs (CAT, CAPO) and the drop-in embedding adversary callback."""

from ..cli import register_command
from .callback import EmbeddingAdversaryCallback
from .cat_config import CATConfig
from .cat_trainer import CATTrainer
from .evaluation import behaviour_ids, embedding_attack_success_rate

register_command("cat", "hf_robust.cat.cat_command", "continuous adversarial training (CAT) of a chat LM")

__all__ = ["CATConfig", "CATTrainer", "EmbeddingAdversaryCallback", "behaviour_ids", "embedding_attack_success_rate"]
