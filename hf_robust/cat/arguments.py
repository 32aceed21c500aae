"""Attack settings shared by `CATConfig` and `CAPOConfig`, and the per-step attack metrics both trainers log.

The fields are flat (`attack_eps`, `attack_steps`, ...) so that `hf-robust cat --attack_eps 0.1` and a recipe yaml
set them like any other training argument; `attack_config()` turns them into the `EmbeddingAttackConfig` of the
shared attack core, which validates them.
"""

import textwrap
from dataclasses import dataclass, field

import torch

from ..attacks.continuous import EmbeddingAttackConfig, EmbeddingAttackResult

PAPER = {
    "title": "Efficient Adversarial Training in LLMs with Continuous Attacks",
    "id": "2405.15589",
    "citation": textwrap.dedent("""\
        @inproceedings{xhonneux2024efficient,
            title     = {{Efficient Adversarial Training in LLMs with Continuous Attacks}},
            author    = {Sophie Xhonneux and Alessandro Sordoni and Stephan G{\\"u}nnemann and
                         Gauthier Gidel and Leo Schwinn},
            year      = 2024,
            booktitle = {Advances in Neural Information Processing Systems},
        }"""),
}
"""The paper of CAT and CAPO, as trl's `_paper` for the model cards of both trainers."""


@dataclass
class AttackArguments:
    """The inner embedding attack of adversarial training (defaults: the CAT paper's)."""

    attack_eps: float = field(
        default=0.05,
        metadata={"help": "Per-token L2 budget of the prompt perturbation (relative or absolute, see "
                          "attack_eps_mode)."},
    )
    attack_eps_mode: str = field(
        default="relative",
        metadata={"help": "'relative': radius = eps x mean row norm of the embedding matrix; 'absolute': "
                          "radius = eps.",
                  "choices": ["relative", "absolute"]},
    )
    attack_steps: int = field(default=10, metadata={"help": "Attack iterations per training step (K). >= 0."})
    attack_step_size: float = field(default=1e-4, metadata={"help": "Attack step size (absolute or relative). > 0."})
    attack_step_mode: str = field(
        default="absolute",
        metadata={"help": "'absolute': alpha = step size; 'relative': alpha = step size x radius.",
                  "choices": ["absolute", "relative"]},
    )
    attack_optimizer: str = field(
        default="sign", metadata={"help": "Attack update: 'sign', 'l2' or 'adam'.", "choices": ["sign", "l2", "adam"]}
    )
    attack_init: str = field(
        default="zero", metadata={"help": "Initial perturbation: 'zero' or 'uniform' in the ball.",
                                  "choices": ["zero", "uniform"]}
    )
    attack_seed: int | None = field(
        default=None, metadata={"help": "Seed of the uniform initialisation, the same start at every attack. None: a "
                                "fresh draw at every attack, seeded from the training `seed`, the process and the "
                                "attack's count, so that a run repeats."}
    )

    def attack_config_for_call(self, call: int, process_index: int) -> EmbeddingAttackConfig:
        """`attack_config()` for a trainer's `call`-th attack on process `process_index`: a uniform start without
        `attack_seed` gets a seed drawn from (`seed`, process, call), fresh at every attack and the same on a rerun."""
        # TrainingArguments.seed in CATConfig / CAPOConfig
        return self.attack_config().seeded_for_call(getattr(self, "seed", 0), process_index, call)

    def attack_config(self) -> EmbeddingAttackConfig:
        """The targeted `EmbeddingAttackConfig` these fields describe (raises ValueError naming a bad field)."""
        try:
            return EmbeddingAttackConfig(
                eps=self.attack_eps,
                eps_mode=self.attack_eps_mode,
                steps=self.attack_steps,
                step_size=self.attack_step_size,
                step_mode=self.attack_step_mode,
                optimizer=self.attack_optimizer,
                init=self.attack_init,
                seed=self.attack_seed,
                targeted=True,
            )
        except ValueError as error:
            # The core names its own fields (`eps`); the user set `attack_eps`.
            raise ValueError(str(error).replace("`", "`attack_", 1)) from None


def attack_metrics(result: EmbeddingAttackResult, mask: torch.Tensor) -> dict[str, float]:
    """Per-step log values of one attack.

    Args:
        result: The attack's output; `delta` has shape (batch, seq, hidden).
        mask: Tensor, shape (batch, seq), bool. The perturbable positions (attended, not target).

    Returns:
        `attack_loss` (batch mean of the final target cross-entropy), `attack_delta_norm` (mean L2 norm of delta over
        the perturbable positions), `attack_success` (fraction of rows whose target is argmax-matched).
    """
    norms = result.delta.norm(dim=-1)[mask.to(result.delta.device)]
    return {
        "attack_loss": result.final_loss.mean().item(),
        "attack_delta_norm": norms.mean().item() if norms.numel() else 0.0,
        "attack_success": result.success.float().mean().item(),
    }
