"""AdvUnlearn (Zhang et al., NeurIPS 2024): adversarial concept erasure in the text encoder of diffusers pipelines.

`AdvUnlearnConfig` + `AdvUnlearnTrainer` train; `soft_prompt_attack` is the inner (and evaluation) soft-token attack;
`prompt_attack` (discrete + soft) and `ConceptLeakageCallback` measure concept leakage;
`conditioning` and `esd` hold the shared pieces (component checks, soft-token layout and injection, SD/SDXL
conditioning, partial DDIM sampling, the ESD target, retain prompts). diffusers is imported only when used.
"""

from ..cli import register_command
from ..lazy import lazy_exports

register_command("advunlearn", "hf_robust.erasure.command", "AdvUnlearn concept erasure in the text encoder(s) of a "
                 "diffusers pipeline, prompt attacks measured into the card")

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".config": ["AdvUnlearnConfig"],
    ".trainer": ["AdvUnlearnTrainer", "TextEncoderPair"],
    ".attack": ["AttackTarget", "SoftPromptAttackConfig", "SoftPromptAttackResult", "random_token_embeddings",
                "soft_prompt_attack"],
    ".conditioning": ["Conditioning", "DiffusionComponents", "SoftTokens", "adversarial_layout",
                      "diffusion_components", "encode_prompts", "predict_noise", "tokenize_prompts"],
    ".esd": ["DEFAULT_RETAIN_PROMPTS", "RetainPromptSampler", "esd_target", "partial_ddim_sample"],
    ".callback": ["ConceptLeakageCallback"],
    ".evaluation": ["DiscreteLeakageObjective", "concept_leakage", "prompt_attack"],
    ".leakage": ["EvaluationPoints", "evaluation_points"],
    ".prompt_attack_config": ["PromptAttackConfig"],
    ".results": ["PromptAttackResult", "PromptAttackRow"],
    ".toy": ["TOY_CONCEPT", "TOY_CONCEPT_PROMPTS", "TOY_RETAIN_PROMPTS", "prompt_effect", "toy_erasure_components"],
})
