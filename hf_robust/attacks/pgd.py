"""Projected gradient descent in input-embedding space: the one continuous attack loop of hf-robust.

`projected_gradient_descent(objective, mask, hidden_size, radius, config)` optimises a perturbation `delta` of shape
(batch, positions, hidden) inside a per-position L2 ball, for any objective `delta -> per-row loss` (to minimise).
CAT/CAPO (through `embedding_attack`), the adversarial-training callback and AdvUnlearn's soft-token attack on a CLIP
text encoder all run this loop with their own objective. Gradients are taken with `torch.autograd.grad` with respect
to `delta` only, so no parameter `.grad` is created or changed.
"""

import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import is_integer
from ..sharding import full_tensor

logger = logging.getLogger(__name__)


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

    def seeded_for_call(self, seed: int, process_index: int, call: int):
        """This config for a trainer's `call`-th attack on process `process_index` of a run seeded `seed`: a uniform
        start without a `seed` gets one drawn from (seed, process, call), fresh at every attack and the same on a
        rerun (an OS-seeded start would make the run unrepeatable). Zero starts and fixed seeds are returned as is."""
        if self.init != "uniform" or self.seed is not None:
            return self
        digest = hashlib.sha256(f"{seed}/{process_index}/{call}".encode()).digest()
        return dataclasses.replace(self, seed=int.from_bytes(digest[:8], "little") >> 1)


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
    `radius`, and positions outside `mask` are reset to exactly 0. Summing the rows makes each row's update
    independent of the rest of the batch. One extra forward without gradient evaluates the returned last iterate.

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
