"""Building blocks of the forget-loss smoothers: exact weight restore, the SAM ascent step, Gaussian weight noise,
differentiable gradient-norm and curvature penalties, and the weight-averaging callback.

The trainer composes them in `training_step`; each works on a list of trainable parameters in place, so no optimizer
or Trainer state is touched.
"""

import warnings
from collections.abc import Callable
from contextlib import contextmanager

import torch
from transformers import TrainerCallback

from .objectives import at_least_float32, global_norm

NORM_EPSILON = 1e-12


@contextmanager
def restored(parameters: list[torch.nn.Parameter], buffers: list[torch.Tensor] | None = None):
    """Restore `parameters` EXACTLY from a copy on exit, also on an exception.

    A copy, not add-then-subtract: in bf16, (theta + eps) - eps != theta. Costs one parameter-sized buffer, which is
    yielded (read-only use, e.g. to reset between perturbations). `buffers` (same shapes and dtypes) are reused for
    the copy instead of allocating one every step, which on CPU also spares fresh pages their first-touch faults.
    """
    parameters = [parameter.detach() for parameter in parameters]
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


def parameter_buffers(parameters: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Empty tensors shaped like `parameters`, for `restored(..., buffers=...)`."""
    return [torch.empty_like(parameter, memory_format=torch.preserve_format) for parameter in parameters]


def ascend_along_gradient(parameters: list[torch.nn.Parameter], rho: float) -> torch.Tensor:
    """SAM's inner step: theta += rho g / (||g|| + 1e-12), g = the current `.grad`, ONE global L2 norm in float32.

    Parameters without a gradient are left alone. Returns ||g|| (scalar float32 tensor).
    """
    stepped = [parameter for parameter in parameters if parameter.grad is not None]
    norm = global_norm(parameter.grad for parameter in stepped)
    scale = rho / (norm + NORM_EPSILON)
    with torch.no_grad():
        wide = [parameter for parameter in stepped if parameter.dtype in (torch.float32, torch.float64)]
        if wide:
            # One multi-tensor kernel instead of hundreds of small ones (the step is already in >= float32).
            torch._foreach_add_(wide, [parameter.grad for parameter in wide], alpha=float(scale))
        for parameter in stepped:
            if parameter.dtype not in (torch.float32, torch.float64):
                step = at_least_float32(parameter.grad) * scale.to(parameter.device)
                parameter.add_(step.to(parameter.dtype))
    return norm


def add_gaussian_noise(parameters: list[torch.nn.Parameter], sigma: float, generator: torch.Generator) -> None:
    """theta += N(0, sigma^2 I), drawn in float32 from `generator` (on the parameters' device) for reproducibility."""
    with torch.no_grad():
        for parameter in parameters:
            noise = torch.randn(parameter.shape, generator=generator, device=generator.device, dtype=torch.float32)
            parameter.add_((noise * sigma).to(device=parameter.device, dtype=parameter.dtype))


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
