"""hf-robust: make Hugging Face models robust, and attack them to measure it.

Every public name is imported on first use (`hf_robust.lazy`); importing the method packages here only registers
their `hf-robust` subcommands."""

__version__ = "0.1.0"

from . import cat, erasure, evaluation, retrieval, unlearning  # noqa: F401,E402 (registers the subcommands; cheap)
from .lazy import lazy_exports  # noqa: E402

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".attacks": ["EmbeddingAttackConfig", "EmbeddingAttackResult", "GCGConfig", "GCGResult", "PGDConfig", "PGDResult",
                 "TokenSearchConfig", "TokenSearchResult", "allowed_token_mask", "embedding_attack", "gcg_attack",
                 "projected_gradient_descent", "token_search"],
    ".cat": ["CAPOConfig", "CAPOTrainer", "CATConfig", "CATTrainer", "EmbeddingAdversaryCallback",
             "RobustnessEvalCallback", "embedding_attack_success_rate"],
    ".erasure": ["AdvUnlearnConfig", "AdvUnlearnTrainer", "ConceptLeakageCallback", "PromptAttackConfig",
                 "PromptAttackResult", "PromptAttackRow", "SoftPromptAttackConfig", "SoftPromptAttackResult",
                 "concept_leakage", "diffusion_components", "prompt_attack", "soft_prompt_attack"],
    ".hub": ["PushResult", "RobustnessResult", "build_robustness_card", "push_robust_to_hub",
             "robustness_results_from_card"],
    ".retrieval": ["GasliteConfig", "GasliteResult", "HotflipConfig", "PoisoningReport", "craft_poison_passages",
                   "evaluate_poisoning", "gaslite_attack", "hotflip_poison", "info_only", "query_stuffing",
                   "report_from_scores"],
    ".unlearning": ["ForgetTargetCallback", "RelearnConfig", "RelearningEvalCallback", "RelearnResult",
                    "UnlearnConfig", "UnlearningMetrics", "UnlearnTrainer", "evaluate_unlearning",
                    "relearning_attack"],
})
__all__ = [*__all__, "__version__"]
