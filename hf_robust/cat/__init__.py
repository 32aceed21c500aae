"""Continuous adversarial training of LLMs (CAT, CAPO) and the drop-in embedding adversary callback."""

from ..cli import register_command
from ..lazy import lazy_exports

register_command("cat", "hf_robust.cat.cat_command", "continuous adversarial training (CAT) of a chat LM")
register_command("capo", "hf_robust.cat.capo_command", "continuous adversarial preference optimisation (CAPO, IPO)")

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".capo_config": ["CAPOConfig"],
    ".capo_trainer": ["CAPOTrainer"],
    ".cat_config": ["CATConfig"],
    ".cat_trainer": ["CATTrainer"],
    ".callback": ["EmbeddingAdversaryCallback"],
    ".robustness_callback": ["RobustnessEvalCallback"],
    "..evaluation.behaviour_attacks": ["behaviour_ids", "embedding_attack_success_rate"],
})
