"""Projected gradient descent in input-embedding space: the one continuous attack loop of hf-robust.

Two layers:

- `projected_gradient_descent(objective, mask, hidden_size, radius, config)` is the generic loop. It optimises a
  perturbation `delta` of shape (batch, positions, hidden) inside a per-position L2 ball, for any objective
  `delta -> per-row loss` (to minimise). CAT/CAPO, the adversarial-training callback and AdvUnlearn's soft-token attack
  on a CLIP text encoder all run this loop with their own objective.
- `embedding_attack(model, input_ids, attention_mask, labels, config)` is the causal-LM objective on top: `delta` is
  added to the input embeddings of the prompt and the attack makes the label tokens likely (targeted) or unlikely
  (untargeted).

Neither touches model state: gradients are taken with `torch.autograd.grad` with respect to `delta` only, so no
parameter `.grad` is created or changed, and `embedding_attack` runs the model in eval mode (dropout off) and restores
every module's train/eval flag afterwards, also when the forward raises.

Example:

    >>> config = EmbeddingAttackConfig(eps=0.05, steps=10)
    >>> result = embedding_attack(model, batch["input_ids"], batch["attention_mask"], batch["labels"], config)
    >>> embeds = model.get_input_embeddings()(batch["input_ids"]) + result.delta.to(model.dtype)
"""

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import is_integer
from ..modeling import added_to_input_embeddings, eval_mode
from ..sharding import full_tensor

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value of positions that are not target tokens (the Hugging Face convention)."""


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(repr(choice) for choice in choices)}, got {value!r}.")


@dataclass
class PGDConfig:
    """Settings of the projected-gradient-descent loop, shared by every continuous attack.

    `projected_gradient_descent` reads `steps`, `step_size`, `step_mode`, `optimizer`, `init` and `seed`. `eps` and
    `eps_mode` define the ball; the caller turns them into an absolute radius with `perturbation_radius`.
    """

    eps: float = field(
        default=0.05,
        metadata={"help": "Per-token L2 budget of the perturbation; relative or absolute, see `eps_mode`. >= 0."},
    )
    eps_mode: str = field(
        default="relative",
        metadata={
            "help": "'relative': the radius is eps x the mean L2 norm of the rows of the embedding matrix. "
            "'absolute': the radius is eps.",
            "choices": ["relative", "absolute"],
        },
    )
    steps: int = field(default=10, metadata={"help": "Number of gradient steps. >= 0; 0 returns the initial delta."})
    step_size: float = field(
        default=1e-4, metadata={"help": "Step size alpha; absolute or relative, see `step_mode`. > 0."}
    )
    step_mode: str = field(
        default="absolute",
        metadata={
            "help": "'absolute': alpha = step_size. 'relative': alpha = step_size x radius.",
            "choices": ["absolute", "relative"],
        },
    )
    optimizer: str = field(
        default="sign",
        metadata={
            "help": "'sign': delta -= alpha * sign(grad). 'l2': delta -= alpha * grad / ||grad|| per token. "
            "'adam': torch.optim.Adam on delta with lr alpha. 'sign_adam': Adam fed sign(grad) (the fast variant of "
            "AdvUnlearn's soft-prompt attack).",
            "choices": ["sign", "l2", "adam", "sign_adam"],
        },
    )
    init: str = field(
        default="zero",
        metadata={"help": "Initial delta: 'zero' or 'uniform' (uniform in the ball, seeded by `seed`).",
                  "choices": ["zero", "uniform"]},
    )
    seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the uniform initialisation (a local generator; the global RNG is untouched). "
                  "None draws a fresh seed."},
    )

    def __post_init__(self):
        if not isinstance(self.eps, Real) or isinstance(self.eps, bool) or not math.isfinite(self.eps) or self.eps < 0:
            raise ValueError(f"`eps` must be a finite number >= 0, got {self.eps!r}.")
        _check_choice("eps_mode", self.eps_mode, ("relative", "absolute"))
        if not is_integer(self.steps) or self.steps < 0:
            raise ValueError(f"`steps` must be an integer >= 0, got {self.steps!r}.")
        if (
            not isinstance(self.step_size, Real)
            or isinstance(self.step_size, bool)
            or not math.isfinite(self.step_size)
            or self.step_size <= 0
        ):
            raise ValueError(f"`step_size` must be a finite number > 0, got {self.step_size!r}.")
        _check_choice("step_mode", self.step_mode, ("absolute", "relative"))
        _check_choice("optimizer", self.optimizer, ("sign", "l2", "adam", "sign_adam"))
        _check_choice("init", self.init, ("zero", "uniform"))
        if self.seed is not None and (not is_integer(self.seed) or self.seed < 0):
            raise ValueError(f"`seed` must be None or an integer >= 0, got {self.seed!r}.")


@dataclass
class EmbeddingAttackConfig(PGDConfig):
    """Settings of `embedding_attack`: the PGD settings plus the causal-LM objective and the perturbed positions.

    Defaults follow the CAT reference (Xhonneux et al., 2024): eps 0.05 relative, 10 signed steps of 1e-4, zero init.
    """

    targeted: bool = field(
        default=True,
        metadata={"help": "True: minimise the cross-entropy of the label tokens (make the target likely). "
                  "False: maximise it (make the labels unlikely)."},
    )
    perturb: str = field(
        default="prompt",
        metadata={
            "help": "'prompt': every attended non-target position. 'user_turn': only the positions of "
            "`perturb_mask` (e.g. from `user_turn_mask`), still never padding or targets.",
            "choices": ["prompt", "user_turn"],
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.targeted, bool):
            raise ValueError(f"`targeted` must be True or False, got {self.targeted!r}.")
        _check_choice("perturb", self.perturb, ("prompt", "user_turn"))


@dataclass
class PGDResult:
    """Output of `projected_gradient_descent`.

    Attributes:
        delta: Tensor, shape (batch, positions, hidden), float32, detached. The last iterate.
        losses: list of `steps + 1` floats. Batch mean of the objective at each iterate; `losses[0]` is at the
            initial delta, `losses[-1]` at the returned one.
        final_loss: Tensor, shape (batch,), float32. Per-row objective at the returned delta.
    """

    delta: Tensor
    losses: list[float]
    final_loss: Tensor


@dataclass
class EmbeddingAttackResult:
    """Output of `embedding_attack`.

    Attributes:
        delta: Tensor, shape (batch, seq, hidden), float32, detached. The last iterate; exactly 0 at padding, target
            and (with `perturb="user_turn"`) non-user positions. Add it to the input embeddings after casting it to
            their dtype.
        losses: list of `steps + 1` floats. Batch mean of the minimised objective at each iterate: the per-row
            token-mean cross-entropy of the labels when targeted, its negation when untargeted. `losses[0]` is the
            clean loss with `init="zero"`.
        final_loss: Tensor, shape (batch,), float32. Per-row objective (same sign convention) at the returned delta.
        success: Tensor, shape (batch,), bool. Targeted: every label token of the row is the argmax of the model's
            prediction at the returned delta. Untargeted: at least one label token is not the argmax.
        radius: float. Absolute per-token L2 radius of the ball.
        row_losses: Tensor, shape (steps + 1, batch), float32. Per-row objective at each iterate (same sign
            convention as `losses`, of which it is the per-row form).
        success_history: Tensor, shape (steps + 1, batch), bool. `success` at each iterate: an attacker who stops
            at the first success breaks row i within t steps when `success_history[:t + 1, i].any()`.
    """

    delta: Tensor
    losses: list[float]
    final_loss: Tensor
    success: Tensor
    radius: float
    row_losses: Tensor | None = None
    success_history: Tensor | None = None


def perturbation_radius(embedding_weight: Tensor, eps: float, eps_mode: str = "relative") -> float:
    """Absolute per-token L2 radius for a budget `eps`.

    Args:
        embedding_weight: Tensor, shape (vocab, hidden). The input embedding matrix (any dtype and device).
        eps: Budget, >= 0.
        eps_mode: "relative": eps x mean L2 norm of the rows of `embedding_weight`, computed in float32;
            "absolute": eps itself.

    Returns:
        The radius as a Python float.
    """
    _check_choice("eps_mode", eps_mode, ("relative", "absolute"))
    if not isinstance(eps, Real) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"`eps` must be a finite number >= 0, got {eps!r}.")
    if eps_mode == "absolute":
        return float(eps)
    if not isinstance(embedding_weight, Tensor) or embedding_weight.dim() != 2 or embedding_weight.shape[0] == 0:
        raise ValueError("`embedding_weight` must be a non-empty 2-D tensor of shape (vocab, hidden).")
    with torch.no_grad():
        # Chunks keep the float32 copy small for large bf16 vocabularies; the sum is accumulated in float64.
        chunks = embedding_weight.detach().split(8192)
        total = sum(chunk.float().norm(dim=-1).sum(dtype=torch.float64) for chunk in chunks)
    return float(eps) * float(total) / embedding_weight.shape[0]


def model_perturbation_radius(model: nn.Module, eps: float, eps_mode: str = "relative") -> float:
    """`perturbation_radius` of `model`'s input embedding matrix, read whole also when it is sharded (FSDP2 DTensor,
    DeepSpeed ZeRO-3 partition): a collective there, which every rank must call."""
    if eps_mode == "absolute":
        return perturbation_radius(None, eps, eps_mode)
    with full_tensor(model.get_input_embeddings().weight) as weight:
        return perturbation_radius(weight, eps, eps_mode)


def embedding_hidden_size(embedding: nn.Module) -> int:
    """The width of `embedding`'s output; read from the full shape (a ZeRO-3 parameter's `.data` is empty)."""
    weight = embedding.weight
    return int(getattr(weight, "ds_shape", weight.shape)[-1])


def _project(delta: Tensor, mask: Tensor, radius: float) -> None:
    """In place: scale every position whose L2 norm exceeds `radius` back onto the sphere; zero outside `mask`."""
    norms = delta.norm(dim=-1, keepdim=True)
    scale = torch.where(norms > radius, radius / norms.clamp_min(torch.finfo(delta.dtype).tiny), 1.0)
    delta.mul_(scale)
    # torch.where rather than a product: positions outside the mask are exactly 0, even if delta held inf/nan there.
    delta.copy_(torch.where(mask, delta, 0.0))


def _initial_delta(mask: Tensor, hidden_size: int, radius: float, config: PGDConfig) -> Tensor:
    shape = (*mask.shape, hidden_size)
    if config.init == "zero" or radius == 0:
        return torch.zeros(shape, dtype=torch.float32, device=mask.device)
    generator = torch.Generator()
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(config.seed)
    # Uniform in the d-ball: a Gaussian direction, and a radius r * U^(1/d). Drawn on CPU so a seed gives the same
    # delta on every device.
    direction = torch.randn(shape, generator=generator, dtype=torch.float32)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    length = radius * torch.rand((*mask.shape, 1), generator=generator, dtype=torch.float32) ** (1.0 / hidden_size)
    delta = (direction * length).to(mask.device)
    _project(delta, mask.unsqueeze(-1), radius)  # removes the float rounding above r, zeroes masked positions
    return delta


def _row_losses(objective: Callable[[Tensor], Tensor], delta: Tensor, batch_size: int) -> Tensor:
    loss = objective(delta)
    if not isinstance(loss, Tensor) or loss.shape != (batch_size,) or not loss.dtype.is_floating_point:
        got = f"shape {tuple(loss.shape)}, dtype {loss.dtype}" if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"`objective` must return a floating tensor of shape ({batch_size},), got {got}.")
    return loss


def projected_gradient_descent(
    objective: Callable[[Tensor], Tensor],
    mask: Tensor,
    hidden_size: int,
    radius: float,
    config: PGDConfig | None = None,
) -> PGDResult:
    """Minimise `objective(delta)` over perturbations in a per-position L2 ball.

    Each of `config.steps` iterations takes the gradient of `objective(delta).sum()` with respect to `delta` only
    (`torch.autograd.grad`, so the objective's module gets no `.grad`), steps (sign, per-token L2-normalised, Adam, or
    Adam fed the sign of the gradient), and projects: every position with ||delta_t|| > radius is scaled back to
    `radius`, and positions outside `mask` are reset to exactly 0. Summing the rows makes each row's update independent of the rest of the batch. One extra
    forward without gradient evaluates the returned last iterate.

    Args:
        objective: Callable mapping delta (Tensor, shape (batch, positions, hidden), float32) to the per-row loss to
            minimise (Tensor, shape (batch,)). It casts delta to its own dtype; it is also called under
            `torch.no_grad()` for the final evaluation. Model state (eval mode) is the caller's business.
        mask: Tensor, shape (batch, positions), bool. Positions that may be perturbed.
        hidden_size: Size of the last dimension of delta.
        radius: Absolute per-position L2 radius, >= 0 (see `perturbation_radius`), or `math.inf` for an unbounded
            perturbation (no projection; needs `step_mode="absolute"` and `init="zero"`).
        config: Loop settings; `eps` and `eps_mode` are not read here. Defaults to `PGDConfig()`.

    Returns:
        `PGDResult` with the last iterate `delta` (float32, on `mask.device`), the batch-mean `losses` at each of the
        `steps + 1` iterates, and the per-row `final_loss`.

    Raises:
        TypeError: `objective` not callable, `mask` not a tensor, or `config` not a `PGDConfig`.
        ValueError: bad `mask`, `hidden_size` or `radius`, or an objective output of the wrong shape.
    """
    config = PGDConfig() if config is None else config
    if not isinstance(config, PGDConfig):
        raise TypeError(f"`config` must be a PGDConfig, got {type(config).__name__}.")
    if not callable(objective):
        raise TypeError("`objective` must be callable: delta (batch, positions, hidden) -> loss (batch,).")
    if not isinstance(mask, Tensor):
        raise TypeError(f"`mask` must be a torch.Tensor, got {type(mask).__name__}.")
    if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[0] == 0:
        raise ValueError(
            f"`mask` must be a bool tensor of shape (batch, positions), got {mask.dtype} {tuple(mask.shape)}."
        )
    if not is_integer(hidden_size) or hidden_size <= 0:
        raise ValueError(f"`hidden_size` must be an integer > 0, got {hidden_size!r}.")
    if not isinstance(radius, Real) or isinstance(radius, bool) or math.isnan(radius) or radius < 0:
        raise ValueError(f"`radius` must be a number >= 0 (math.inf: unbounded), got {radius!r}.")
    radius = float(radius)
    if math.isinf(radius) and (config.step_mode == "relative" or config.init == "uniform"):
        raise ValueError("`radius` math.inf (unbounded) needs step_mode='absolute' and init='zero': a relative step "
                         "or a uniform start in an infinite ball is undefined.")
    batch_size = mask.shape[0]
    position_mask = mask.unsqueeze(-1)
    alpha = config.step_size * radius if config.step_mode == "relative" else config.step_size

    delta = _initial_delta(mask, hidden_size, radius, config).requires_grad_(True)
    adam = torch.optim.Adam([delta], lr=alpha) if config.optimizer in ("adam", "sign_adam") else None
    losses = []
    for step in range(config.steps):
        with torch.enable_grad():  # the caller may sit under torch.no_grad()
            row_loss = _row_losses(objective, delta, batch_size)
            (gradient,) = torch.autograd.grad(row_loss.sum(), delta, allow_unused=True)
        if gradient is None:  # the objective ignores delta: nothing moves
            gradient = torch.zeros_like(delta)
        losses.append(row_loss.detach().float().mean())
        with torch.no_grad():
            gradient = torch.where(position_mask, gradient, 0.0)
            if config.optimizer == "sign":
                delta.sub_(alpha * gradient.sign())
            elif config.optimizer == "l2":
                norms = gradient.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(gradient.dtype).tiny)
                delta.sub_(alpha * gradient / norms)
            else:
                # A fresh gradient every step: Adam's moments are the only memory (no accumulation in .grad).
                delta.grad = gradient.sign() if config.optimizer == "sign_adam" else gradient
                adam.step()
                delta.grad = None
            _project(delta, position_mask, radius)
        if logger.isEnabledFor(logging.DEBUG):
            norms = delta.detach().norm(dim=-1)[mask]
            logger.debug(
                "PGD step %d/%d: loss %.4f, max ||delta_t|| %.3g (radius %.3g)",
                step + 1, config.steps, losses[-1].item(), norms.max().item() if norms.numel() else 0.0, radius,
            )
    delta = delta.detach()
    with torch.no_grad():
        final_loss = _row_losses(objective, delta, batch_size).detach().float()
    losses.append(final_loss.mean())
    return PGDResult(delta=delta, losses=torch.stack(losses).tolist(), final_loss=final_loss)


def _check_token_tensor(name: str, tensor: Any, shape: torch.Size | None, allow_bool: bool = False) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(tensor).__name__}.")
    if shape is None and (tensor.dim() != 2 or tensor.numel() == 0):
        raise ValueError(f"`{name}` must be a non-empty tensor of shape (batch, seq), got {tuple(tensor.shape)}.")
    if shape is not None and tensor.shape != shape:
        raise ValueError(f"`{name}` must have the shape of `input_ids` {tuple(shape)}, got {tuple(tensor.shape)}.")
    integer = not tensor.dtype.is_floating_point and not tensor.dtype.is_complex and tensor.dtype != torch.bool
    if not (integer or (allow_bool and tensor.dtype == torch.bool)):
        kinds = "an integer or bool" if allow_bool else "an integer"
        raise ValueError(f"`{name}` must have {kinds} dtype, got {tensor.dtype}.")


def _validated_inputs(
    input_ids: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor,
    perturb_mask: Tensor | None,
    config: EmbeddingAttackConfig,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    _check_token_tensor("input_ids", input_ids, None)
    shape = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    _check_token_tensor("attention_mask", attention_mask, shape, allow_bool=True)
    if not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("`attention_mask` must contain only 0 and 1.")
    _check_token_tensor("labels", labels, shape)
    is_target = labels != IGNORE_INDEX
    if (labels[is_target] < 0).any():
        raise ValueError(f"`labels` must be token ids >= 0 or {IGNORE_INDEX}.")
    if (is_target & (attention_mask == 0)).any():
        raise ValueError(f"`labels` must be {IGNORE_INDEX} at padding positions (attention_mask == 0).")
    # Position 0 is never predicted (labels are shifted), so a target must start at position 1 or later.
    if config.targeted and not is_target[:, 1:].any(dim=1).all():
        rows = (~is_target[:, 1:].any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"`labels` must mark at least one target token (not {IGNORE_INDEX}, after position 0) in every row when "
            f"targeted; rows without one: {rows}."
        )
    if config.perturb == "user_turn":
        if perturb_mask is None:
            raise ValueError("`perturb_mask` is required with perturb='user_turn' (see `user_turn_mask`).")
        _check_token_tensor("perturb_mask", perturb_mask, shape, allow_bool=True)
        if not ((perturb_mask == 0) | (perturb_mask == 1)).all():
            raise ValueError("`perturb_mask` must contain only 0 and 1 (or be bool).")
        perturb_mask = perturb_mask.to(device=device, dtype=torch.bool)
    elif perturb_mask is not None:
        raise ValueError("`perturb_mask` is only used with perturb='user_turn'; set that in the config or drop it.")
    return input_ids.to(device), attention_mask.to(device), labels.to(device), perturb_mask


def embedding_attack(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor,
    config: EmbeddingAttackConfig | None = None,
    *,
    perturb_mask: Tensor | None = None,
) -> EmbeddingAttackResult:
    """Continuous embedding-space attack on a causal LM (the inner attack of CAT/CAPO).

    delta is added to the output of `model.get_input_embeddings()` inside the model's own forward (a hook), so the
    forward runs through the root module as under FSDP2 / DeepSpeed ZeRO-3 it must; the radius reads the whole
    (gathered) embedding matrix. Under those engines every rank must call it the same number of times. Perturbed
    positions are attended (`attention_mask == 1`), not targets (`labels == -100`; token id 0 is a real token) and,
    with `config.perturb == "user_turn"`, inside `perturb_mask`. The objective is the token-mean cross-entropy of
    each row's label tokens (labels shifted as in Hugging Face causal LMs), minimised when `config.targeted`,
    maximised otherwise. delta stays float32 (also under autocast and with a bf16 model) and is cast to the
    embedding dtype only when added.

    The model is not modified: no parameter `.grad` is created or changed, `requires_grad` flags are kept, and the
    attack runs in eval mode (dropout off) with every module's train/eval flag restored afterwards, also on error.
    Pass the unwrapped model (not a DDP/FSDP wrapper, e.g. `accelerator.unwrap_model(model)`); PEFT models work.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`) returning `.logits` of shape (batch, seq, vocab).
        input_ids: Tensor, shape (batch, seq), integer.
        attention_mask: Tensor, shape (batch, seq), 0/1 (integer or bool), or None for all ones.
        labels: Tensor, shape (batch, seq), integer. Target token ids, -100 elsewhere (and at padding). When
            targeted, every row needs a target token after position 0.
        config: Attack settings; defaults to `EmbeddingAttackConfig()`.
        perturb_mask: Tensor, shape (batch, seq), bool. Positions allowed to move; required with
            `perturb="user_turn"` (e.g. `user_turn_mask(tokenizer, conversations)["user_turn_mask"]`), rejected
            otherwise.

    Returns:
        `EmbeddingAttackResult` with `delta` (batch, seq, hidden), `losses`, `final_loss` (batch,), `success`
        (batch,) and `radius`.

    Raises:
        TypeError: `config` is not an `EmbeddingAttackConfig`, or an input is not a tensor.
        ValueError: an input has the wrong shape, dtype or values; the message names it.
    """
    config = EmbeddingAttackConfig() if config is None else config
    if not isinstance(config, EmbeddingAttackConfig):
        raise TypeError(f"`config` must be an EmbeddingAttackConfig, got {type(config).__name__}.")
    embedding = model.get_input_embeddings()
    input_ids, attention_mask, labels, perturb_mask = _validated_inputs(
        input_ids, attention_mask, labels, perturb_mask, config, embedding.weight.device
    )
    mask = (attention_mask == 1) & (labels == IGNORE_INDEX)
    if perturb_mask is not None:
        mask &= perturb_mask
    radius = model_perturbation_radius(model, config.eps, config.eps_mode)
    hidden_size = embedding_hidden_size(embedding)

    batch_size = input_ids.shape[0]
    target_labels = labels[:, 1:]
    is_target = target_labels != IGNORE_INDEX
    target_rows = is_target.nonzero(as_tuple=True)[0]
    target_ids = target_labels[is_target]
    target_counts = is_target.sum(dim=1).clamp_min(1).float()
    all_matches, row_losses = [], []  # one entry per objective call: the steps, then the returned iterate
    # The LM head runs only where some row predicts a target token (`logits_to_keep` takes position indices): with a
    # large vocabulary, the head over every prompt position would cost more than the rest of the forward.
    forward_kwargs, kept_is_target = {}, is_target
    if _accepts_logits_to_keep(model):
        positions = is_target.any(dim=0).nonzero().flatten()
        forward_kwargs["logits_to_keep"] = positions
        kept_is_target = is_target[:, positions]

    def objective(delta: Tensor) -> Tensor:
        # Through the model's own forward (a hook adds delta to the embedded ids), so sharded engines gather as usual.
        with added_to_input_embeddings(model, delta):
            logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True,
                           **forward_kwargs).logits
        if not forward_kwargs:
            logits = logits[:, :-1]
        # Only the target positions go to float32: full (batch, seq, vocab) float32 logits would dominate memory.
        target_logits = logits[kept_is_target].float()
        token_loss = F.cross_entropy(target_logits, target_ids, reduction="none")
        row_loss = token_loss.new_zeros(batch_size).index_add(0, target_rows, token_loss) / target_counts
        with torch.no_grad():
            misses = (target_logits.argmax(dim=-1) != target_ids).float()
            all_matches.append(misses.new_zeros(batch_size).index_add(0, target_rows, misses) == 0)
        row_loss = row_loss if config.targeted else -row_loss
        row_losses.append(row_loss.detach().float())
        return row_loss

    with eval_mode(model):
        result = projected_gradient_descent(objective, mask, hidden_size, radius, config)
    # The last objective call is the final evaluation at the returned delta.
    history = torch.stack(all_matches) if config.targeted else ~torch.stack(all_matches)
    success = history[-1]
    if logger.isEnabledFor(logging.DEBUG):  # success.sum() would synchronise the device
        logger.debug(
            "embedding_attack: radius %.4g, loss %.4f -> %.4f, success %d/%d",
            radius, result.losses[0], result.losses[-1], int(success.sum()), batch_size,
        )
    return EmbeddingAttackResult(
        delta=result.delta, losses=result.losses, final_loss=result.final_loss, success=success, radius=radius,
        row_losses=torch.stack(row_losses), success_history=history,
    )


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the causal LM's forward takes `logits_to_keep` (every transformers causal LM does; PEFT passes it on)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters


def _message_text(message: Any, name: str) -> str | None:
    if not isinstance(message, dict) or "role" not in message:
        raise ValueError(f"`{name}` must hold conversations: lists of {{'role': ..., 'content': ...}} dicts.")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or None
    raise ValueError(f"`{name}`: user_turn_mask supports string message contents only, got {type(content).__name__}.")


def _user_content_spans(tokenizer: Any, conversation: list[dict], template_kwargs: dict) -> list[tuple[int, int]]:
    """Character spans of the user messages' contents in the rendered conversation.

    The conversation is rendered twice by the tokenizer's own chat template: as is, and with every content replaced
    by a unique placeholder. The template text around the placeholders, with the contents put back (verbatim, or
    stripped for templates that trim), must rebuild the first rendering exactly; the spans are then exact.
    """
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, **template_kwargs)
    placeholders, skeleton_conversation = [], []
    for index, message in enumerate(conversation):
        text = _message_text(message, "conversations")
        if text is None:
            skeleton_conversation.append(message)
            continue
        placeholder = f"@@hf-robust-content-{index}@@"
        skeleton_conversation.append({**message, "content": placeholder})
        placeholders.append((placeholder, text, message["role"] == "user"))
    skeleton = tokenizer.apply_chat_template(skeleton_conversation, tokenize=False, **template_kwargs)
    for transform in (lambda text: text, str.strip):
        pieces, spans, cursor, length = [], [], 0, 0
        for placeholder, text, is_user in placeholders:
            at = skeleton.find(placeholder, cursor)
            if at < 0 or skeleton.count(placeholder) != 1:
                break
            pieces.append(skeleton[cursor:at])
            length += at - cursor
            text = transform(text)
            if is_user:
                spans.append((length, length + len(text)))
            pieces.append(text)
            length += len(text)
            cursor = at + len(placeholder)
        else:
            pieces.append(skeleton[cursor:])
            if "".join(pieces) == rendered:
                return spans
    raise ValueError(
        "user_turn_mask: the chat template does not insert the message contents verbatim (or stripped), so the "
        "user-turn tokens cannot be located; build `perturb_mask` yourself."
    )


def user_turn_mask(
    tokenizer: Any,
    conversations: list[list[dict]],
    *,
    padding: bool | str = True,
    truncation: bool = False,
    max_length: int | None = None,
    **template_kwargs: Any,
) -> Any:
    """Tokenize chats with the tokenizer's chat template and mark the tokens of the user messages' contents.

    The mask is what `embedding_attack(..., perturb_mask=...)` takes with `perturb="user_turn"`. It covers the
    tokens overlapping the text of "user" messages; role headers, template tokens, system and assistant messages are
    outside it. The template is only used through `tokenizer.apply_chat_template` (no template strings here), and
    the mask is aligned with the `input_ids` returned next to it: use those ids, or the mask may not line up.

    Args:
        tokenizer: A fast tokenizer (character offsets are needed) with a chat template.
        conversations: A list of conversations, each a list of {"role", "content": str} messages; one conversation
            alone is also accepted.
        padding, truncation, max_length: Passed to the tokenizer; padding follows `tokenizer.padding_side`.
        **template_kwargs: Passed to `apply_chat_template` (e.g. `add_generation_prompt=True`).

    Returns:
        `BatchEncoding` with `input_ids` and `attention_mask` (Tensor, shape (batch, seq)) and `user_turn_mask`
        (Tensor, shape (batch, seq), bool; False at padding).

    Raises:
        TypeError: the tokenizer is not a fast tokenizer.
        ValueError: malformed `conversations`, or a template that rewrites message contents.
    """
    if not isinstance(conversations, (list, tuple)) or len(conversations) == 0:
        raise ValueError("`conversations` must be a non-empty list of conversations.")
    if isinstance(conversations[0], dict):
        conversations = [conversations]
    for conversation in conversations:
        if not isinstance(conversation, (list, tuple)) or len(conversation) == 0:
            raise ValueError("`conversations` must be a list of non-empty lists of messages.")
        for message in conversation:
            _message_text(message, "conversations")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("`tokenizer` must be a fast tokenizer: user_turn_mask needs character offsets.")
    conversations = [list(conversation) for conversation in conversations]
    spans = [_user_content_spans(tokenizer, conversation, template_kwargs) for conversation in conversations]
    encoded = tokenizer.apply_chat_template(
        conversations, tokenize=True, return_dict=True, return_tensors="pt",
        padding=padding, truncation=truncation, max_length=max_length, **template_kwargs,
    )
    mask = torch.zeros(encoded["input_ids"].shape, dtype=torch.bool)
    for row, row_spans in enumerate(spans):
        for position, (start, end) in enumerate(encoded.encodings[row].offsets):
            # A token belongs to the user turn when its characters overlap a user content span.
            mask[row, position] = any(start < span_end and end > span_start for span_start, span_end in row_spans)
    encoded["user_turn_mask"] = mask & encoded["attention_mask"].bool()
    return encoded
