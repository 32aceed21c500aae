"""`UnlearnConfig`: `TrainingArguments` plus the unlearning objective and the smoothing of its forget loss."""

import math
import re
import textwrap
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..checks import check_choice, check_integer, check_number

METHODS = ("ga", "graddiff", "npo", "simnpo", "rmu")
SMOOTHINGS = ("none", "sam", "rs", "gp", "cr", "wa")
RETAIN_LOSSES = ("nll", "kl")
SAM_TARGETS = ("forget", "all")
DEFAULT_BETA = {"npo": 0.1, "simnpo": 4.5}

PAPER = {
    "title": "Towards LLM Unlearning Resilient to Relearning Attacks: A Sharpness-Aware Minimization Perspective "
             "and Beyond",
    "id": "2502.05374",
    "citation": textwrap.dedent("""\
        @inproceedings{fan2025towards,
            title     = {{Towards LLM Unlearning Resilient to Relearning Attacks:
                            A Sharpness-Aware Minimization Perspective and Beyond}},
            author    = {Chongyu Fan and Jinghan Jia and Yihua Zhang and Anil Ramakrishna and Mingyi Hong and
                         Sijia Liu},
            year      = 2025,
            booktitle = {International Conference on Machine Learning},
        }"""),
}
"""The paper of SAM-smoothed unlearning, as trl's `_paper` for the model cards its trainer and command write."""


@dataclass
class UnlearnConfig(TrainingArguments):
    """Configuration of `UnlearnTrainer`: `TrainingArguments` fields, the objective and the forget-loss smoothing.

    The objective of one step is `L_f + retain_weight * L_r` (RMU: `L_f + rmu_alpha * L_r`), where `L_f` is the
    forget loss of `method` and `L_r` the retain loss (`retain_loss`). `smoothing` changes how the forget loss enters
    the gradient (SAM: at the sharpest point of a `rho`-ball; RS: averaged over Gaussian weight noise; GP/CR: a
    gradient-norm / curvature penalty; WA: weight averaging). Defaults follow Fan et al. (ICML 2025) and the papers of
    the base methods (NPO beta 0.1, SimNPO beta 4.5, RMU steering 6.5 and alpha 1200 at layer 7).
    """

    method: str = field(
        default="npo",
        metadata={"help": "Unlearning objective: 'ga' (gradient ascent), 'graddiff' (GA + retain), 'npo', 'simnpo' or "
                  "'rmu'.", "choices": list(METHODS)},
    )
    smoothing: str = field(
        default="none",
        metadata={"help": "Smoothing of the forget loss: 'none', 'sam', 'rs' (randomised smoothing), 'gp' (gradient "
                  "penalty), 'cr' (curvature regularisation) or 'wa' (weight averaging).",
                  "choices": list(SMOOTHINGS)},
    )
    beta: float | None = field(
        default=None,
        metadata={"help": "Inverse temperature of NPO/SimNPO; None: the method's default (npo 0.1, simnpo 4.5). > 0."},
    )
    simnpo_delta: float = field(
        default=0.0,
        metadata={"help": "SimNPO's reward margin delta in -(2/beta) log sigmoid(beta (NLL/|y| - delta)); 0 as in "
                  "Fan et al.'s main runs. A finite number."},
    )
    retain_weight: float = field(
        default=1.0, metadata={"help": "Weight gamma of the retain loss (graddiff, npo, simnpo). >= 0; 0 drops it."}
    )
    retain_loss: str = field(
        default="nll",
        metadata={"help": "Retain loss: 'nll' (token-mean NLL of the retain text) or 'kl' (token-mean KL from the "
                  "reference model's next-token distribution).", "choices": list(RETAIN_LOSSES)},
    )
    rho: float = field(
        default=0.01,
        metadata={"help": "SAM radius: the L2 norm of the weight perturbation over all trainable parameters. Also the "
                  "finite-difference step of 'cr'. >= 0."},
    )
    sam_target: str = field(
        default="forget",
        metadata={"help": "What SAM perturbs against: 'forget' (gradient of L_f, retain gradient at the unperturbed "
                  "weights) or 'all' (classic SAM on L_f + gamma L_r).", "choices": list(SAM_TARGETS)},
    )
    smoothing_buffer_device: str = field(
        default="same",
        metadata={"help": "Where SAM/RS keep their copy of the weights for the exact restore: 'same' (the weights' "
                  "device; under FSDP2 only this rank's shard) or 'cpu' (off the accelerator, slower).",
                  "choices": ["same", "cpu"]},
    )
    rs_sigma: float = field(
        default=1e-4, metadata={"help": "Standard deviation of the Gaussian weight noise of 'rs'. >= 0."}
    )
    rs_samples: int = field(
        default=3, metadata={"help": "Noise samples the 'rs' forget gradient is averaged over. >= 1."}
    )
    gp_coeff: float = field(
        default=0.01, metadata={"help": "Weight of the forget-gradient norm penalty of 'gp'. >= 0."}
    )
    cr_coeff: float = field(
        default=10.0,
        metadata={"help": "Weight of the curvature penalty of 'cr': the norm of the forget-gradient change over a "
                  "step of length rho along the gradient. >= 0."},
    )
    wa_start: int = field(
        default=100, metadata={"help": "'wa': the global step of the first weight snapshot. >= 0."}
    )
    wa_every: int = field(default=5, metadata={"help": "'wa': global steps between weight snapshots. >= 1."})
    rmu_layer: int = field(
        default=7, metadata={"help": "'rmu': index of the decoder layer whose output activations are steered. >= 0."}
    )
    rmu_steering_coeff: float = field(
        default=6.5, metadata={"help": "'rmu': norm c of the target c*u of the forget activations. > 0."}
    )
    rmu_alpha: float = field(
        default=1200.0, metadata={"help": "'rmu': weight of the retain activation-matching MSE. >= 0."}
    )
    rmu_param_regex: str | None = field(
        default=None,
        metadata={"help": "'rmu': regex (re.search on parameter names) selecting the trainable parameters; None: the "
                  "MLP down projections of layers rmu_layer-2 .. rmu_layer."},
    )
    max_length: int | None = field(
        default=512,
        metadata={"help": "Truncation length in tokens of forget and retain texts (None: no limit). >= 2."},
    )

    def __post_init__(self):
        super().__post_init__()
        check_choice("method", self.method, METHODS)
        check_choice("smoothing", self.smoothing, SMOOTHINGS)
        check_choice("retain_loss", self.retain_loss, RETAIN_LOSSES)
        check_choice("sam_target", self.sam_target, SAM_TARGETS)
        check_choice("smoothing_buffer_device", self.smoothing_buffer_device, ("same", "cpu"))
        if self.beta is None:
            self.beta = DEFAULT_BETA.get(self.method)
        else:
            check_number("beta", self.beta, 0.0, strict=True)
        check_number("simnpo_delta", self.simnpo_delta, -math.inf)
        for name in ("retain_weight", "rho", "rs_sigma", "gp_coeff", "cr_coeff", "rmu_alpha"):
            check_number(name, getattr(self, name), 0.0)
        check_number("rmu_steering_coeff", self.rmu_steering_coeff, 0.0, strict=True)
        check_integer("rs_samples", self.rs_samples, 1)
        check_integer("wa_start", self.wa_start, 0)
        check_integer("wa_every", self.wa_every, 1)
        check_integer("rmu_layer", self.rmu_layer, 0)
        if self.max_length is not None:
            check_integer("max_length", self.max_length, 2)
        if self.rmu_param_regex is not None:
            try:
                re.compile(self.rmu_param_regex)
            except (re.error, TypeError) as error:
                raise ValueError(f"`rmu_param_regex` is not a valid regular expression: {error}.") from None

    def parameter_regex(self) -> str:
        """The RMU trainable-parameter regex: `rmu_param_regex`, or the down projections of the last three layers."""
        if self.rmu_param_regex is not None:
            return self.rmu_param_regex
        layers = "|".join(str(index) for index in range(max(0, self.rmu_layer - 2), self.rmu_layer + 1))
        return rf"layers\.({layers})\.mlp\.down_proj\.weight$"
