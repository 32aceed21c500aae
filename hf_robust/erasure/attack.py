"""Soft-prompt attack on a text-to-image model: k continuous tokens that bring an erased concept back.

AdvUnlearn's inner attack (Zhang et al., NeurIPS 2024): k soft tokens in the token-embedding space of the (unlearned)
text encoder, placed before, after or over the concept tokens, are optimised so that the UNet's noise prediction under
the attacked prompt matches the ORIGINAL model's prediction for the concept,
    min_delta  MSE(eps(z_t, t, TE(s_0 + delta  (+)  c)),  eps_orig(z_t, t, c)),
starting from the embeddings s_0 of k random vocabulary tokens. The loop is the shared PGD core
(`hf_robust.attacks.projected_gradient_descent`) on delta: Adam ("adam") or Adam fed sign(grad) ("sign", the fast
variant), an optional per-token L2 bound on delta (None: unbounded, as the reference), gradients with respect to delta
only, so the encoder and the UNet get no `.grad`. With SDXL, delta holds both encoders' soft tokens side by side on the
hidden axis (the L2 bound applies to the concatenation).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Real

import torch
from torch import Tensor

from ..attacks.continuous import PGDConfig, projected_gradient_descent
from ..modeling import eval_mode
from ..sharding import full_tensor
from .conditioning import (
    POSITIONS, Conditioning, DiffusionComponents, SoftTokens, adversarial_layout, encode_prompts, predict_noise,
)
from .esd import row_mse

ATTACK_MODES = ("adam", "sign")


@dataclass
class SoftPromptAttackConfig:
    """Settings of `soft_prompt_attack` (the `AdvUnlearnConfig` fields of the same names)."""

    num_adv_tokens: int = field(default=1, metadata={"help": "Number k of soft tokens. >= 1."})
    adv_position: str = field(
        default="prefix",
        metadata={"help": "Where the soft tokens go: 'prefix' (before the concept), 'suffix' (after it) or 'replace' "
                  "(over its first k tokens).", "choices": list(POSITIONS)},
    )
    attack_steps: int = field(default=30, metadata={"help": "Optimisation steps of the attack. >= 0."})
    attack_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the attack. > 0."})
    attack_mode: str = field(
        default="adam",
        metadata={"help": "'adam': Adam on the gradient. 'sign': Adam fed sign(gradient) (fast AT).",
                  "choices": list(ATTACK_MODES)},
    )
    attack_l2_bound: float | None = field(
        default=None,
        metadata={"help": "Per-token L2 bound on the change of the soft tokens from their random start; None: "
                  "unbounded (the reference). > 0."},
    )
    seed: int | None = field(
        default=None, metadata={"help": "Seed of the random start tokens (None: a fresh seed). >= 0."}
    )

    def __post_init__(self):
        if not isinstance(self.num_adv_tokens, int) or isinstance(self.num_adv_tokens, bool) or \
                self.num_adv_tokens < 1:
            raise ValueError(f"`num_adv_tokens` must be an integer >= 1, got {self.num_adv_tokens!r}.")
        if self.adv_position not in POSITIONS:
            raise ValueError(f"`adv_position` must be one of {list(POSITIONS)}, got {self.adv_position!r}.")
        if not isinstance(self.attack_steps, int) or isinstance(self.attack_steps, bool) or self.attack_steps < 0:
            raise ValueError(f"`attack_steps` must be an integer >= 0, got {self.attack_steps!r}.")
        if not _positive(self.attack_lr):
            raise ValueError(f"`attack_lr` must be a finite number > 0, got {self.attack_lr!r}.")
        if self.attack_mode not in ATTACK_MODES:
            raise ValueError(f"`attack_mode` must be one of {list(ATTACK_MODES)}, got {self.attack_mode!r}.")
        if self.attack_l2_bound is not None and not _positive(self.attack_l2_bound):
            raise ValueError(f"`attack_l2_bound` must be None or a finite number > 0, got {self.attack_l2_bound!r}.")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            raise ValueError(f"`seed` must be None or an integer >= 0, got {self.seed!r}.")


def _positive(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass
class AttackTarget:
    """Where the attack is evaluated: noisy latents, their timestep and the noise prediction to reproduce.

    Attributes:
        latents: Tensor, shape (batch, channels, height, width). z_t.
        timestep: 0-d tensor or Tensor (batch,). t, the timestep z_t is at.
        noise: Tensor, shape (batch, channels, height, width). The original model's prediction for the concept.
    """

    latents: Tensor
    timestep: Tensor
    noise: Tensor


@dataclass
class SoftPromptAttackResult:
    """Output of `soft_prompt_attack`.

    Attributes:
        soft_tokens: `SoftTokens` at the returned iterate: embeddings (one (batch, k, hidden_i) float32 tensor per
            encoder, detached) and positions (batch, k).
        input_ids: one LongTensor (batch, seq) per encoder: the laid-out prompt ids the soft tokens go into.
        losses: `attack_steps + 1` batch means of the objective; `losses[0]` at the random start.
        final_loss: Tensor, shape (batch,), float32. Per-row objective at the returned soft tokens.
    """

    soft_tokens: SoftTokens
    input_ids: list[Tensor]
    losses: list[float]
    final_loss: Tensor


def random_token_embeddings(components: DiffusionComponents, batch: int, k: int,
                            generator: torch.Generator | list[torch.Generator] | None = None) -> list[Tensor]:
    """Embeddings of k random non-special vocabulary tokens per row, one float32 tensor (batch, k, hidden_i) per
    encoder (the same token ids for every encoder). `generator`: one CPU generator, or one per row (so a row's start
    does not depend on the rest of the batch). A sharded embedding matrix (FSDP2, DeepSpeed ZeRO-3) is read whole,
    gathered once per encoder: then every rank must call this together."""
    tokenizer = components.tokenizers[0]
    vocabulary = min(encoder.get_input_embeddings().num_embeddings for encoder in components.text_encoders)
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([index for index in range(vocabulary) if index not in special])
    generators = generator if isinstance(generator, list) else [generator] * batch
    if len(generators) != batch:
        raise ValueError(f"`generator` must be one generator or a list of {batch}, got {len(generators)}.")
    picks = torch.stack([torch.randint(len(allowed), (k,), generator=row_generator) for row_generator in generators])
    token_ids = allowed[picks]
    embeddings = []
    for encoder in components.text_encoders:
        with full_tensor(encoder.get_input_embeddings().weight) as weight:
            embeddings.append(weight[token_ids.to(weight.device)].float())
    return embeddings


def soft_prompt_attack(
    components: DiffusionComponents,
    prompt_ids: list[Tensor],
    target: AttackTarget | Callable[[], AttackTarget],
    config: SoftPromptAttackConfig | None = None,
    *,
    initial_embeddings: list[Tensor] | None = None,
    encode: Callable[[list[Tensor], SoftTokens], Conditioning] | None = None,
) -> SoftPromptAttackResult:
    """Optimise k soft tokens so that the attacked model reproduces the original model's concept prediction.

    Args:
        components: the attacked model: `components.text_encoders` (e.g. the unlearned encoder, unwrapped from DDP)
            and `components.unet`. Neither is modified; they run in eval mode, their train/eval flags restored.
        prompt_ids: one LongTensor (batch, seq) per tokenizer, from `tokenize_prompts` (the concept prompts).
        target: an `AttackTarget` shared by all steps, or a callable returning a fresh one for every evaluation of
            the objective (`attack_steps + 1` calls; resampling z_t per step as the reference does).
        config: attack settings; defaults to `SoftPromptAttackConfig()`.
        initial_embeddings: the start s_0, one tensor (batch, k, hidden_i) per encoder; None: embeddings of random
            vocabulary tokens drawn with `config.seed`.
        encode: `encode(input_ids_list, soft_tokens) -> Conditioning`, how the objective conditions the UNet; None:
            `encode_prompts` over `components.text_encoders`. A trainer passes its model's own forward, so that under
            FSDP2 the attack runs through the root module (lazy init, all-gathers) as a training forward does.

    Returns:
        `SoftPromptAttackResult`; encode `result.input_ids` with `result.soft_tokens` to use the adversarial prompt.

    Raises:
        TypeError: `config` is not a `SoftPromptAttackConfig`.
        ValueError: bad `prompt_ids` or `initial_embeddings` shapes, or a layout error (see `adversarial_layout`).
    """
    config = SoftPromptAttackConfig() if config is None else config
    if not isinstance(config, SoftPromptAttackConfig):
        raise TypeError(f"`config` must be a SoftPromptAttackConfig, got {type(config).__name__}.")
    encoders = components.text_encoders
    if not isinstance(prompt_ids, (list, tuple)) or len(prompt_ids) != len(encoders):
        raise ValueError(f"`prompt_ids` must be a list of {len(encoders)} tensor(s), one per tokenizer.")
    k = config.num_adv_tokens
    layouts = [adversarial_layout(tokenizer, ids, k, config.adv_position)
               for tokenizer, ids in zip(components.tokenizers, prompt_ids)]
    input_ids = [ids for ids, _ in layouts]
    positions = layouts[0][1]
    if any(not torch.equal(other, positions) for _, other in layouts[1:]):
        raise ValueError("the tokenizers split the prompts differently: the soft-token positions do not agree.")
    batch = positions.shape[0]
    hidden_sizes = [encoder.get_input_embeddings().embedding_dim for encoder in encoders]
    if initial_embeddings is None:
        generator = torch.Generator()
        if config.seed is None:
            generator.seed()
        else:
            generator.manual_seed(config.seed)
        initial_embeddings = random_token_embeddings(components, batch, k, generator)
    expected = [(batch, k, hidden) for hidden in hidden_sizes]
    if len(initial_embeddings) != len(encoders) or [tuple(item.shape) for item in initial_embeddings] != expected:
        got = [tuple(item.shape) for item in initial_embeddings]
        raise ValueError(f"`initial_embeddings` must have shapes {expected}, got {got}.")
    device = encoders[0].get_input_embeddings().weight.device
    initial_embeddings = [item.detach().float().to(device) for item in initial_embeddings]

    def objective(delta: Tensor) -> Tensor:
        pieces = delta.split(hidden_sizes, dim=-1)
        soft = SoftTokens([start + piece for start, piece in zip(initial_embeddings, pieces)], positions)
        point = target() if callable(target) else target
        conditioning = encode(input_ids, soft) if encode is not None else encode_prompts(
            encoders, input_ids, soft, xl=components.xl, image_size=components.image_size)
        prediction = predict_noise(components.unet, point.latents, point.timestep, conditioning)
        return row_mse(prediction, point.noise)

    mask = torch.ones(batch, k, dtype=torch.bool, device=device)
    radius = math.inf if config.attack_l2_bound is None else float(config.attack_l2_bound)
    pgd = PGDConfig(steps=config.attack_steps, step_size=config.attack_lr, step_mode="absolute", init="zero",
                    optimizer="adam" if config.attack_mode == "adam" else "sign_adam")
    with eval_mode(encoders[0]), eval_mode(encoders[-1]), eval_mode(components.unet):
        result = projected_gradient_descent(objective, mask, sum(hidden_sizes), radius, pgd)
    pieces = result.delta.split(hidden_sizes, dim=-1)
    soft_tokens = SoftTokens([start + piece for start, piece in zip(initial_embeddings, pieces)], positions)
    return SoftPromptAttackResult(soft_tokens=soft_tokens, input_ids=input_ids, losses=result.losses,
                                  final_loss=result.final_loss)
