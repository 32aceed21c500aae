"""`PromptAttackConfig`: the settings of `prompt_attack` and `concept_leakage`, and the checks of their arguments."""

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..attacks.discrete import TokenSearchConfig
from ..checks import check_choice, check_integer, check_number
from .attack import ATTACK_MODES, SoftPromptAttackConfig
from .conditioning import POSITIONS

ATTACKS = ("discrete", "soft")
OUTPUT_TYPES = ("pil", "np")


@dataclass
class PromptAttackConfig:
    """Settings of `prompt_attack` and `concept_leakage` (see the module docstring for the leakage distance)."""

    attacks: list[str] = field(
        default_factory=lambda: list(ATTACKS),
        metadata={"help": "Attacks to run: 'discrete' (UnlearnDiffAtk-style token prefix), 'soft' (soft tokens), or "
                  "both (a string is one attack).", "choices": list(ATTACKS)},
    )
    num_adv_tokens: int = field(
        default=5, metadata={"help": "Adversarial prefix tokens k of the discrete attack. >= 1."}
    )
    discrete_iters: int = field(default=40, metadata={"help": "Iterations of the discrete token search. >= 0."})
    init_token: str = field(
        default="x", metadata={"help": "Text of the one token the discrete prefix starts from (k copies, as nanoGCG)."}
    )
    topk: int = field(default=128, metadata={"help": "Token search: candidates per position from the gradient. >= 1."})
    n_candidates: int = field(default=64, metadata={"help": "Token search: candidates scored per flip. >= 1."})
    n_flip: int = field(default=1, metadata={"help": "Token search: positions changed greedily per iteration. >= 1."})
    batch_size: int = field(
        default=16,
        metadata={"help": "Token search: candidate prompts per forward (the UNet batch is batch_size x n_timesteps). "
                  ">= 1."},
    )
    soft_num_tokens: int = field(default=1, metadata={"help": "Soft attack: number k of soft tokens. >= 1."})
    soft_position: str = field(
        default="prefix",
        metadata={"help": "Soft attack: 'prefix', 'suffix' or 'replace'.", "choices": list(POSITIONS)},
    )
    soft_steps: int = field(default=30, metadata={"help": "Soft attack: optimisation steps. >= 0."})
    soft_lr: float = field(default=1e-3, metadata={"help": "Soft attack: Adam learning rate. > 0."})
    soft_mode: str = field(
        default="adam", metadata={"help": "Soft attack: 'adam' or 'sign' (Adam fed sign(grad)).",
                                  "choices": list(ATTACK_MODES)}
    )
    soft_l2_bound: float | None = field(
        default=None, metadata={"help": "Soft attack: per-token L2 bound on the change (None: unbounded). > 0."}
    )
    n_timesteps: int = field(
        default=5, metadata={"help": "Evaluation points (z_t, t) per prompt, spread over the schedule. >= 1."}
    )
    ddim_steps: int = field(default=50, metadata={"help": "DDIM schedule the evaluation points are sampled on. >= 2."})
    guidance_scale: float = field(
        default=3.0, metadata={"help": "Classifier-free guidance of the partial sampling of the points. >= 0."}
    )
    leakage_threshold: float = field(
        default=0.5, metadata={"help": "The concept leaked when the leakage distance d < this (no detector). > 0."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the points, the attacks' starts and the images. >= 0."})
    num_inference_steps: int = field(
        default=50, metadata={"help": "Denoising steps of the images for `concept_detector`. >= 1."}
    )
    guidance_scale_images: float = field(
        default=7.5, metadata={"help": "Classifier-free guidance of the images for `concept_detector`. >= 0."}
    )
    output_type: str = field(
        default="pil", metadata={"help": "Images given to `concept_detector`: 'pil' (list of PIL images) or 'np' "
                                 "(array (n, H, W, 3) in [0, 1]).", "choices": list(OUTPUT_TYPES)}
    )

    def __post_init__(self):
        if isinstance(self.attacks, str):
            self.attacks = [self.attacks]
        if not isinstance(self.attacks, (list, tuple)) or not self.attacks or any(
                attack not in ATTACKS for attack in self.attacks):
            raise ValueError(f"`attacks` must be a non-empty list of {list(ATTACKS)}, got {self.attacks!r}.")
        self.attacks = [attack for attack in ATTACKS if attack in self.attacks]
        for name, minimum in (("num_adv_tokens", 1), ("discrete_iters", 0), ("topk", 1), ("n_candidates", 1),
                              ("n_flip", 1), ("batch_size", 1), ("soft_num_tokens", 1), ("soft_steps", 0),
                              ("n_timesteps", 1), ("ddim_steps", 2), ("seed", 0), ("num_inference_steps", 1)):
            check_integer(name, getattr(self, name), minimum)
        if self.n_timesteps > self.ddim_steps:
            raise ValueError(f"`n_timesteps` must be <= ddim_steps ({self.ddim_steps}), got {self.n_timesteps}.")
        for name, minimum, strict in (("guidance_scale", 0.0, False), ("guidance_scale_images", 0.0, False),
                                      ("leakage_threshold", 0.0, True)):
            check_number(name, getattr(self, name), minimum, strict=strict)
        if not isinstance(self.init_token, str) or not self.init_token.strip():
            raise ValueError(f"`init_token` must be a non-empty string, got {self.init_token!r}.")
        check_choice("output_type", self.output_type, OUTPUT_TYPES)
        self.soft_attack_config()  # validates soft_position, soft_lr, soft_mode, soft_l2_bound

    def soft_attack_config(self, seed: int | None = None) -> SoftPromptAttackConfig:
        """The soft-attack fields as a `SoftPromptAttackConfig`."""
        try:
            return SoftPromptAttackConfig(num_adv_tokens=self.soft_num_tokens, adv_position=self.soft_position,
                                          attack_steps=self.soft_steps, attack_lr=self.soft_lr,
                                          attack_mode=self.soft_mode, attack_l2_bound=self.soft_l2_bound, seed=seed)
        except ValueError as error:  # name the field of this config
            names = {"num_adv_tokens": "soft_num_tokens", "adv_position": "soft_position", "attack_steps":
                     "soft_steps", "attack_lr": "soft_lr", "attack_mode": "soft_mode", "attack_l2_bound":
                     "soft_l2_bound"}
            message = str(error)
            for old, new in names.items():
                message = message.replace(f"`{old}`", f"`{new}`")
            raise ValueError(message) from None

    def token_search_config(self, seed: int = 0) -> TokenSearchConfig:
        """The discrete-attack fields as a `TokenSearchConfig`."""
        return TokenSearchConfig(n_iters=self.discrete_iters, topk=self.topk, n_candidates=self.n_candidates,
                                 n_top_candidates=min(self.n_candidates, self.topk) // 2, n_flip=self.n_flip,
                                 batch_size=self.batch_size, seed=seed)


def check_concept_prompts(concept_prompts) -> list[str]:
    if isinstance(concept_prompts, str) or not isinstance(concept_prompts, Sequence) or not concept_prompts or not all(
            isinstance(prompt, str) and prompt.strip() for prompt in concept_prompts):
        raise ValueError(f"`concept_prompts` must be a non-empty list of non-empty strings, got {concept_prompts!r}.")
    return list(concept_prompts)


def check_prompt_attack_config(config) -> PromptAttackConfig:
    config = PromptAttackConfig() if config is None else config
    if not isinstance(config, PromptAttackConfig):
        raise TypeError(f"`config` must be a PromptAttackConfig, got {type(config).__name__}.")
    return config
