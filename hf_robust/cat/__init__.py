"""Continuous adversarial training of LLMs (CAT, CAPO) and the drop-in embedding adversary callback."""

from ..cli import register_command
from .callback import EmbeddingAdversaryCallback
from .capo_config import CAPOConfig
from .capo_trainer import CAPOTrainer
from .cat_config import CATConfig
from .cat_trainer import CATTrainer
from .evaluation import behaviour_ids, embedding_attack_success_rate
from .robustness_callback import RobustnessEvalCallback

register_command("cat", "hf_robust.cat.cat_command", "continuous adversarial training (CAT) of a chat LM")
register_command("capo", "hf_robust.cat.capo_command", "continuous adversarial preference optimisation (CAPO, IPO)")

__all__ = [
    "CAPOConfig",
    "CAPOTrainer",
    "CATConfig",
    "CATTrainer",
    "EmbeddingAdversaryCallback",
    "RobustnessEvalCallback",
    "behaviour_ids",
    "embedding_attack_success_rate",
]
