"""Building blocks of the forget-loss smoothers: exact weight restore, the SAM ascent step, Gaussian weight noise,
differentiable gradient-norm and curvature penalties, and the weight-averaging callback.

The trainer composes them in `training_step`; each works on a list of trainable parameters in place, so no optimizer
or Trainer state is touched. Under FSDP2 they work on each rank's local shards (the gradient norm is all-reduced), so
the restore copy is 1/N of the weights.
"""

import warnings
from collections.abc import Callable
from contextlib import contextmanager

import torch
from transformers import TrainerCallback

from ..sharding import is_dtensor, local_tensor
from .objectives import at_least_float32, global_norm

NORM_EPSILON = 1e-12


@contextmanager
def restored(parameters: list[torch.nn.Parameter], buffers: list[torch.Tensor] | None = None):
    """Restore `parameters` EXACTLY from a copy on exit, also on an exception.

    A copy, not add-then-subtract: in bf16, (theta + eps) - eps != theta. Costs one parameter-sized buffer, which is
    yielded (read-only use, e.g. to reset between perturbations). `buffers` (same shapes and dtypes) are reused for
    the copy instead of allocating one every step, which on CPU also spares fresh pages their first-touch faults.
    """
    # Local shards under FSDP2: the copy holds this rank's part only (1/N of the weights), restored in place.
    parameters = [local_tensor(parameter.detach()) for parameter in parameters]
    if buffers is None:
        saved = [parameter.clone() for parameter in parameters]
    else:
        saved = buffers
        torch._foreach_copy_(saved, parameters)
    try:
        yield saved
    finally:
        with torch.no_grad():
            torch._foreach_copy_(parameters, saved)


def parameter_buffers(parameters: list[torch.nn.Parameter], device: str | torch.device | None = None
                      ) -> list[torch.Tensor]:
    """Empty tensors shaped like `parameters` (their local shards under FSDP2), for `restored(..., buffers=...)`;
    on `device` if given (e.g. "cpu" to keep the restore copy off the accelerator)."""
    return [torch.empty_like(local_tensor(parameter.detach()), memory_format=torch.preserve_format, device=device)
            for parameter in parameters]


def gradient_norm(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the parameters' `.grad` in float32. Under FSDP2 (DTensor gradients sharded over ranks)
    it is the square root of the all-reduced sum of the local shards' squared norms: the unsharded norm, a
    collective that every rank calls."""
    gradients = [parameter.grad for parameter in parameters if parameter.grad is not None]
    sharded = [gradient for gradient in gradients if is_dtensor(gradient)]
    if not sharded:
        return global_norm(gradients)
    squares = global_norm(local_tensor(gradient) for gradient in sharded).pow(2)
    torch.distributed.all_reduce(squares, group=sharded[0].device_mesh.get_group())
    whole = [gradient for gradient in gradients if not is_dtensor(gradient)]
    if whole:  # replicated on every rank: counted once
        squares = squares + global_norm(whole).to(squares.device).pow(2)
    return squares.sqrt()


def stochastic_round_to_bfloat16(value: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float32 `value` rounded to bfloat16 up or down at random, with probability by distance: unbiased, so a step
    far below the bf16 spacing of a weight is applied on average instead of rounding away (round-to-nearest drops
    most of SAM's eps on bf16 weights). Adds uniform noise to the 16 bits bf16 drops, then truncates them."""
    bits = value.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, generator=generator, device=generator.device, dtype=torch.int32)
    return ((bits + noise.to(bits.device)) & -65536).view(torch.float32).to(torch.bfloat16)


def add_in_float32_(parameter: torch.Tensor, step: torch.Tensor, generator: torch.Generator | None) -> None:
    """parameter += step, the sum taken in float32; onto bf16 weights rounded stochastically with `generator`."""
    total = at_least_float32(parameter) + at_least_float32(step).to(parameter.device)
    if parameter.dtype == torch.bfloat16 and generator is not None:
        parameter.copy_(stochastic_round_to_bfloat16(total, generator))
    else:
        parameter.copy_(total)


def applied_fraction(before: list[torch.Tensor], after: list[torch.Tensor], steps: list[torch.Tensor]) -> float:
    """<after - before, step> / <step, step> over all tensors: how much of a step the stored weights really took."""
    moved = sum(float(((a.double() - b.double()) * s.double()).sum()) for a, b, s in zip(after, before, steps))
    wanted = sum(float(s.double().pow(2).sum()) for s in steps)
    return moved / wanted if wanted else 1.0


def ascend_along_gradient(parameters: list[torch.nn.Parameter], rho: float,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """SAM's inner step: theta += rho g / (||g|| + 1e-12), g = the current `.grad`, ONE global L2 norm in float32.

    Parameters without a gradient are left alone. bf16 parameters take the step with stochastic rounding drawn from
    `generator` (a fixed seed when None), so eps is applied in expectation rather than rounded away. Returns ||g||
    (scalar float32 tensor).
    """
    stepped = [parameter for parameter in parameters if parameter.grad is not None]
    norm = gradient_norm(stepped)
    scale = rho / (norm + NORM_EPSILON)
    # (local weight, local gradient) pairs: under FSDP2 each rank steps its own shard.
    pairs = [(local_tensor(parameter.detach()), local_tensor(parameter.grad)) for parameter in stepped]
    with torch.no_grad():
        wide = [pair for pair in pairs if pair[0].dtype in (torch.float32, torch.float64)]
        if wide:
            # One multi-tensor kernel instead of hundreds of small ones (the step is already in >= float32).
            torch._foreach_add_([weight for weight, _ in wide], [grad for _, grad in wide], alpha=float(scale))
        narrow = [pair for pair in pairs if pair[0].dtype not in (torch.float32, torch.float64)]
        if narrow:
            generator = generator or torch.Generator(narrow[0][0].device).manual_seed(0)
            _warn_if_half_precision([weight for weight, _ in narrow])
        for weight, grad in narrow:
            add_in_float32_(weight, at_least_float32(grad) * scale.to(weight.device), generator)
    return norm


def _warn_if_half_precision(parameters: list[torch.Tensor]) -> None:
    if any(parameter.dtype == torch.float16 for parameter in parameters):
        warnings.warn("SAM/RS on float16 weights: a perturbation below a weight's float16 spacing rounds away, so "
                      "part of eps is lost (measure it with hf_robust.unlearning.smoothing.applied_fraction); load "
                      "the model in float32 with fp16/bf16 autocast, or in bfloat16 (stochastic rounding).",
                      stacklevel=3)


def add_gaussian_noise(parameters: list[torch.nn.Parameter], sigma: float, generator: torch.Generator) -> None:
    """theta += N(0, sigma^2 I), drawn in float32 from `generator` (on the parameters' device) for reproducibility;
    onto bf16 weights with stochastic rounding (same generator), so small noise is not rounded away."""
    with torch.no_grad():
        narrow = [parameter for parameter in parameters if parameter.dtype not in (torch.float32, torch.float64)]
        if narrow:
            _warn_if_half_precision(narrow)
        for parameter in parameters:
            weight = local_tensor(parameter.detach())  # under FSDP2 each rank draws noise for its own shard
            noise = torch.randn(weight.shape, generator=generator, device=generator.device, dtype=torch.float32)
            add_in_float32_(weight, noise * sigma, generator)


def differentiable_norm(tensors) -> torch.Tensor:
    """L2 norm over all given tensors (None skipped), in (at least) float32, differentiable also at 0 (sqrt of
    sum + 1e-24)."""
    squares = [at_least_float32(tensor).pow(2).sum() for tensor in tensors if tensor is not None]
    return torch.sqrt(torch.stack(squares).sum() + NORM_EPSILON**2)


def gradient_norm_penalty(loss: torch.Tensor, parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """||grad_theta loss||, kept in the graph (create_graph=True), so its gradient is a real Hessian-vector product."""
    gradients = torch.autograd.grad(loss, parameters, create_graph=True, allow_unused=True)
    return differentiable_norm(gradients)


def curvature_penalty(
    loss: torch.Tensor,
    named_parameters: list[tuple[str, torch.nn.Parameter]],
    loss_at: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    step: float,
) -> torch.Tensor:
    """||grad L(theta + eps) - grad L(theta)||, eps = step * g / ||g|| (g detached): a finite-difference
    Hessian-vector product H (step g/||g||), differentiable in theta through both gradients.

    Args:
        loss: L(theta), a scalar in the graph of the parameters.
        named_parameters: the trainable (name, parameter) pairs of the module `loss_at` evaluates.
        loss_at: maps {name: tensor} parameter overrides to L at those parameters (e.g. via functional_call).
        step: the finite-difference step length (> 0).
    """
    names = [name for name, _ in named_parameters]
    parameters = [parameter for _, parameter in named_parameters]
    gradients = torch.autograd.grad(loss, parameters, create_graph=True, allow_unused=True)
    kept = [index for index, gradient in enumerate(gradients) if gradient is not None]
    scale = step / (global_norm(gradients[index].detach() for index in kept) + NORM_EPSILON)
    shifted = {names[index]: parameters[index] + (at_least_float32(gradients[index].detach()) * scale).to(
        parameters[index].dtype) for index in kept}
    shifted_gradients = torch.autograd.grad(loss_at(shifted), list(shifted.values()), create_graph=True,
                                            allow_unused=True)
    differences = [None if shifted_gradient is None else shifted_gradient - gradients[index]
                   for index, shifted_gradient in zip(kept, shifted_gradients)]
    return differentiable_norm(differences)


class WeightAveragingCallback(TrainerCallback):
    """Running mean of the trainable weights at global steps `start`, `start + every`, ...; loaded at train end.

    The mean is kept in float32 (one extra copy of the trainable parameters). Without any snapshot (training ended
    before `start`) the weights are left as trained, with a warning.
    """

    def __init__(self, start: int, every: int):
        self.start, self.every = start, every
        self.average: list[torch.Tensor] | None = None
        self.snapshots = 0

    @staticmethod
    def _parameters(model) -> list[torch.nn.Parameter]:
        return [parameter for parameter in model.parameters() if parameter.requires_grad]

    def on_train_begin(self, args, state, control, **kwargs):
        self.average, self.snapshots = None, 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step < self.start or (step - self.start) % self.every:
            return
        parameters = self._parameters(model)
        with torch.no_grad():
            if self.average is None:
                self.average = [parameter.detach().float().clone() for parameter in parameters]
            else:
                for mean, parameter in zip(self.average, parameters):
                    mean.add_(parameter.detach().float() - mean, alpha=1.0 / (self.snapshots + 1))
        self.snapshots += 1

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.average is None:
            warnings.warn(
                f"WeightAveragingCallback: training ended at step {state.global_step}, before wa_start={self.start}; "
                "the weights are left as trained.", stacklevel=2,
            )
            return
        with torch.no_grad():
            for mean, parameter in zip(self.average, self._parameters(model)):
                parameter.copy_(mean.to(parameter.dtype))
