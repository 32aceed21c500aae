"""`AdvUnlearnConfig`: `TrainingArguments` plus AdvUnlearn's ESD loss, inner soft-prompt attack and retain term."""

import textwrap
from dataclasses import dataclass, field
from numbers import Integral

from transformers import TrainingArguments

from ..checks import check_choice, check_integer, check_number

from .attack import ATTACK_MODES, SoftPromptAttackConfig
from .conditioning import POSITIONS

CONCEPT_TYPES = ("nudity", "style", "object")
DEFAULT_RETAIN_WEIGHT = {"nudity": 0.3, "style": 0.5, "object": 0.5}

PAPER = {
    "title": "Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion Models",
    "id": "2405.15234",
    "citation": textwrap.dedent("""\
        @inproceedings{zhang2024defensive,
            title     = {{Defensive Unlearning with Adversarial Training for Robust Concept Erasure
                            in Diffusion Models}},
            author    = {Yimeng Zhang and Xin Chen and Jinghan Jia and Yihua Zhang and Chongyu Fan and
                         Jiancheng Liu and Mingyi Hong and Ke Ding and Sijia Liu},
            year      = 2024,
            booktitle = {Advances in Neural Information Processing Systems},
        }"""),
}
"""The paper of AdvUnlearn, as trl's `_paper` for the model cards its trainer and command write."""


@dataclass
class AdvUnlearnConfig(TrainingArguments):
    """Configuration of `AdvUnlearnTrainer`: `TrainingArguments` fields, the ESD loss, the attack and the retain term.

    One iteration: z_t from partial DDIM sampling of the frozen model on a concept prompt (a random number of the
    `ddim_steps` steps, guidance `guidance_scale`), k soft tokens attacked for `attack_steps` steps once
    `attack_warmup` iterations have passed, then `MSE(eps(z_t, t, TE(adv prompt)), e_0 - eta (e_c - e_0)) +
    retain_weight * MSE(eps(z_r, t, TE(r)), eps_orig(z_r, t, r))` over `retain_batch` retain prompts r. Defaults follow
    the AdvUnlearn reference (Adam lr 1e-5, 1000 iterations, constant rate, no clipping, batch 1).
    """

    eta: float = field(default=1.0, metadata={"help": "Negative guidance eta of the ESD target. >= 0."})
    num_adv_tokens: int = field(default=1, metadata={"help": "Number k of adversarial soft tokens. >= 1."})
    adv_position: str = field(
        default="prefix",
        metadata={"help": "Where the soft tokens go: 'prefix', 'suffix' or 'replace' (over the first k concept "
                  "tokens).", "choices": list(POSITIONS)},
    )
    attack_steps: int = field(default=30, metadata={"help": "Steps of the inner soft-prompt attack. >= 0."})
    attack_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the attack. > 0."})
    attack_mode: str = field(
        default="adam",
        metadata={"help": "'adam', or 'sign' (Adam fed the sign of the gradient: fast AT).",
                  "choices": list(ATTACK_MODES)},
    )
    attack_warmup: int = field(
        default=200,
        metadata={"help": "Iterations (optimizer steps) of plain ESD before the attack starts; afterwards every "
                  "iteration is attacked. >= 0."},
    )
    attack_l2_bound: float | None = field(
        default=None,
        metadata={"help": "Per-token L2 bound on the soft tokens' change from their random start; None: unbounded "
                  "(the reference). > 0."},
    )
    retain_weight: float | None = field(
        default=None,
        metadata={"help": "Weight gamma of the retain loss; None: 0.3 for concept_type 'nudity', 0.5 for 'style' and "
                  "'object'. >= 0 (0 drops the retain term)."},
    )
    retain_batch: int = field(default=5, metadata={"help": "Retain prompts per concept row and iteration. >= 1."})
    train_layers: str = field(
        default="all",
        metadata={"help": "'all': every encoder layer and the final layer norm train; an integer k >= 1: only the "
                  "first k encoder layers (no final layer norm, as the reference). Embeddings never train."},
    )
    ddim_steps: int = field(default=50, metadata={"help": "Length of the DDIM schedule that z_t is sampled on. >= 2."})
    guidance_scale: float = field(
        default=3.0, metadata={"help": "Classifier-free guidance of the partial sampling of z_t. >= 0."}
    )
    share_xt: bool = field(
        default=True,
        metadata={"help": "True: one z_t per iteration for every attack step and the training step (~8x cheaper). "
                  "False: a fresh z_t for every attack step (the reference)."},
    )
    concept_type: str = field(
        default="object",
        metadata={"help": "'nudity', 'style' or 'object'; sets the default retain_weight.",
                  "choices": list(CONCEPT_TYPES)},
    )
    # Defaults of the reference changed from TrainingArguments'.
    learning_rate: float = field(default=1e-5, metadata={"help": "Learning rate of the text encoder (Adam)."})
    max_steps: int = field(default=1000, metadata={"help": "Training iterations (optimizer steps)."})
    per_device_train_batch_size: int = field(
        default=1, metadata={"help": "Concept rows per device and iteration (each with `retain_batch` retain rows)."}
    )
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule (reference: none)."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping norm; 0: none (the reference)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the rows are concept indices read by the trainer."}
    )
    save_steps: float = field(default=200, metadata={"help": "Checkpoint every this many steps (reference: 200)."})

    def __post_init__(self):
        super().__post_init__()
        check_choice("concept_type", self.concept_type, CONCEPT_TYPES)
        check_number("eta", self.eta, 0.0)
        check_integer("attack_warmup", self.attack_warmup, 0)
        check_integer("retain_batch", self.retain_batch, 1)
        check_integer("ddim_steps", self.ddim_steps, 2)
        check_number("guidance_scale", self.guidance_scale, 0.0)
        if not isinstance(self.share_xt, bool):
            raise ValueError(f"`share_xt` must be True or False, got {self.share_xt!r}.")
        if self.retain_weight is None:
            self.retain_weight = DEFAULT_RETAIN_WEIGHT[self.concept_type]
        check_number("retain_weight", self.retain_weight, 0.0)
        if isinstance(self.train_layers, str) and self.train_layers.strip().isdigit():
            self.train_layers = int(self.train_layers)
        if self.train_layers != "all" and not (isinstance(self.train_layers, Integral) and
                                               not isinstance(self.train_layers, bool) and self.train_layers >= 1):
            raise ValueError(f"`train_layers` must be 'all' or an integer >= 1, got {self.train_layers!r}.")
        if self.remove_unused_columns:
            raise ValueError("`remove_unused_columns` must be False for AdvUnlearn: the rows are concept indices.")
        self.attack_config()  # validates the attack fields

    def attack_config(self, seed: int | None = None) -> SoftPromptAttackConfig:
        """The attack fields as a `SoftPromptAttackConfig`."""
        return SoftPromptAttackConfig(
            num_adv_tokens=self.num_adv_tokens, adv_position=self.adv_position, attack_steps=self.attack_steps,
            attack_lr=self.attack_lr, attack_mode=self.attack_mode, attack_l2_bound=self.attack_l2_bound, seed=seed,
        )
