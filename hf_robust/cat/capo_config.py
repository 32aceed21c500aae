"""`CAPOConfig`: trl's `DPOConfig` with the IPO loss of C-AdvIPO and the inner embedding attack."""

import math
from dataclasses import dataclass, field
from numbers import Real

from trl import DPOConfig

from .arguments import AttackArguments


@dataclass
class CAPOConfig(AttackArguments, DPOConfig):
    """Configuration of `CAPOTrainer`: `DPOConfig` fields plus the attack fields of `AttackArguments`.

    The loss is IPO on per-token-averaged log-probs, ((pi_c - pi_r) - (ref_c - ref_r) - 1 / (2 beta))^2, where the
    policy terms see prompt + delta and the reference terms the clean prompt. Defaults follow the paper's C-AdvIPO
    configuration (Xhonneux et al., 2024): IPO with beta 0.25, eps 0.05 relative, 10 signed steps of 1e-4.
    """

    loss_type: list[str] = field(
        default_factory=lambda: ["ipo"],
        metadata={"help": "Preference loss. CAPO is defined with IPO only, so this must be ['ipo'].",
                  "choices": ["ipo"]},
    )
    beta: float = field(
        default=0.25,
        metadata={"help": "IPO regularisation (tau in the IPO paper): the target margin is 1 / (2 beta). > 0."},
    )

    def __post_init__(self):
        super().__post_init__()  # DPOConfig's: turns a string loss_type into a list, sets up TrainingArguments
        if list(self.loss_type) != ["ipo"]:
            raise ValueError(f"`loss_type` must be ['ipo'] for CAPO (C-AdvIPO), got {self.loss_type!r}.")
        beta = self.beta
        if not isinstance(beta, Real) or isinstance(beta, bool) or not math.isfinite(beta) or beta <= 0:
            raise ValueError(f"`beta` must be a finite number > 0, got {beta!r}.")
        self.attack_config()  # validates the attack fields, naming the bad one
