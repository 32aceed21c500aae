"""AdvUnlearn (Zhang et al., NeurIPS 2024): adversarial concept erasure in the text encoder of diffusers pipelines.

`AdvUnlearnConfig` + `AdvUnlearnTrainer` train; `soft_prompt_attack` is the inner (and evaluation) soft-token attack;
`prompt_attack` (discrete + soft) and `ConceptLeakageCallback` measure concept leakage;
`conditioning` and `esd` hold the shared pieces (component checks, soft-token layout and injection, SD/SDXL
conditioning, partial DDIM sampling, the ESD target, retain prompts). diffusers is imported only when used.
"""

from ..cli import register_command
from .attack import (
    AttackTarget,
    SoftPromptAttackConfig,
    SoftPromptAttackResult,
    random_token_embeddings,
    soft_prompt_attack,
)
from .conditioning import (
    Conditioning,
    DiffusionComponents,
    SoftTokens,
    adversarial_layout,
    diffusion_components,
    encode_prompts,
    predict_noise,
    tokenize_prompts,
)
from .callback import ConceptLeakageCallback
from .config import AdvUnlearnConfig
from .esd import DEFAULT_RETAIN_PROMPTS, RetainPromptSampler, esd_target, partial_ddim_sample
from .evaluation import (
    DiscreteLeakageObjective,
    EvaluationPoints,
    PromptAttackConfig,
    PromptAttackResult,
    PromptAttackRow,
    concept_leakage,
    evaluation_points,
    prompt_attack,
)
from .toy import TOY_CONCEPT, TOY_CONCEPT_PROMPTS, TOY_RETAIN_PROMPTS, prompt_effect, toy_erasure_components
from .trainer import AdvUnlearnTrainer, TextEncoderPair

__all__ = [
    "AdvUnlearnConfig",
    "AdvUnlearnTrainer",
    "TextEncoderPair",
    "AttackTarget",
    "SoftPromptAttackConfig",
    "SoftPromptAttackResult",
    "random_token_embeddings",
    "soft_prompt_attack",
    "Conditioning",
    "DiffusionComponents",
    "SoftTokens",
    "adversarial_layout",
    "diffusion_components",
    "encode_prompts",
    "predict_noise",
    "tokenize_prompts",
    "DEFAULT_RETAIN_PROMPTS",
    "RetainPromptSampler",
    "esd_target",
    "partial_ddim_sample",
    "ConceptLeakageCallback",
    "DiscreteLeakageObjective",
    "EvaluationPoints",
    "PromptAttackConfig",
    "PromptAttackResult",
    "PromptAttackRow",
    "concept_leakage",
    "evaluation_points",
    "prompt_attack",
    "TOY_CONCEPT",
    "TOY_CONCEPT_PROMPTS",
    "TOY_RETAIN_PROMPTS",
    "prompt_effect",
    "toy_erasure_components",
]

register_command("advunlearn", "hf_robust.erasure.command", "AdvUnlearn concept erasure in the text encoder(s) of a "
                 "diffusers pipeline, prompt attacks measured into the card")
