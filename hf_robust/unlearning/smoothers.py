"""The smoothers that take several forward/backward passes per micro-batch, as small objects with one interface.

`Smoother.step(model, inputs, reference)` leaves the smoothed gradient of one micro-batch in `.grad` (the weights
restored exactly) and returns its loss; the Trainer then clips and takes its single optimizer step. SAM and RS
perturb the weights (`WeightPerturbation`: the exact-restore copy, allocated once and freed by `release()` when
training ends, and the seeded generator); GP and CR add a penalty differentiated through (double backprop).
Under FSDP2 they work on each rank's local shards (see `smoothing`). The trainer supplies the losses and passes.
"""

import abc

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..sharding import local_tensor
from .smoothing import (
    add_gaussian_noise, ascend_along_gradient, curvature_penalty, gradient_norm_penalty, parameter_buffers, restored,
)


def trainable(model) -> list[torch.nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


class Smoother(abc.ABC):
    """One smoothing of the forget loss for `trainer` (an `UnlearnTrainer`)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.args = trainer.args

    @abc.abstractmethod
    def step(self, model, inputs: dict, reference: dict) -> torch.Tensor:
        """Accumulate this micro-batch's smoothed gradient into `.grad`; return its loss (detached)."""

    def release(self) -> None:
        """Free what the smoother keeps between steps (called when training ends)."""


class WeightPerturbation(Smoother):
    """What SAM and RS share: a copy of the weights for the exact restore, and a seeded generator."""

    def __init__(self, trainer):
        super().__init__(trainer)
        self.buffers: list[torch.Tensor] | None = None
        self._generator: torch.Generator | None = None

    def restore_buffers(self, parameters: list[torch.nn.Parameter]) -> list[torch.Tensor]:
        """One parameter-sized buffer for `restored` (the local shards under FSDP2; on CPU with
        `smoothing_buffer_device='cpu'`), allocated once and reused every step until `release()`."""
        device = torch.device("cpu") if self.args.smoothing_buffer_device == "cpu" else None
        weights = [local_tensor(parameter.detach()) for parameter in parameters]
        if self.buffers is None or len(self.buffers) != len(weights) or any(
            buffer.shape != weight.shape or buffer.dtype != weight.dtype or buffer.device != (device or weight.device)
            for buffer, weight in zip(self.buffers, weights)
        ):
            self.buffers = parameter_buffers(parameters, device)
        return self.buffers

    def generator(self, device) -> torch.Generator:
        """The seeded generator of RS's noise and of the stochastic rounding of eps onto bf16 weights."""
        if self._generator is None:
            self._generator = torch.Generator(device=device).manual_seed(self.args.seed)
        return self._generator

    def release(self) -> None:
        self.buffers = None


class SharpnessAware(WeightPerturbation):
    """SAM: g = grad L_f(theta) (micro-batch mean); eps = rho g/||g||; forget gradient at theta + eps, retain at
    theta (`sam_target='forget'`), or classic SAM on L_f + gamma L_r (`'all'`).

    `.grad` of earlier micro-batches (GA > 1) is set aside during the first pass (moved, not copied) and put back
    before the second, so the accumulated gradient is the sum of per-micro-batch SAM gradients.
    """

    def step(self, model, inputs, reference):
        trainer, whole = self.trainer, self.args.sam_target == "all"
        coefficient = trainer._retain_coefficient
        parameters = trainable(model)
        stash = [parameter.grad for parameter in parameters]
        for parameter in parameters:
            parameter.grad = None
        with trainer._sync(model, last=False):
            with trainer.compute_loss_context_manager():
                forget, weight = trainer._forget_loss(model, inputs, reference)
                # Micro-batch means: only the direction of their gradient is used (its norm is logged).
                first = forget / weight
                if whole and trainer.has_retain_term:
                    retain, retain_weight = trainer._retain_loss(model, inputs, reference)
                    first = first + coefficient * retain / retain_weight
                    trainer._record(model, retain_loss=retain)
            trainer._backward(first)
        trainer._record(model, forget_loss=forget)
        with restored(parameters, self.restore_buffers(parameters)):
            norm = ascend_along_gradient(parameters, self.args.rho, self.generator(parameters[0].device))
            scaler = getattr(trainer.accelerator, "scaler", None)
            trainer._record(model, sam_grad_norm=norm / (scaler.get_scale() if scaler is not None else 1.0),
                            per_micro_step=True)
            # g has served; the second pass accumulates on top of the earlier micro-batches' gradients (or, without
            # them, writes fresh gradients: no zeroing pass).
            for parameter, stashed in zip(parameters, stash):
                parameter.grad = stashed
            del stash
            last = whole or not trainer.has_retain_term
            with trainer._sync(model, last):
                with trainer.compute_loss_context_manager():
                    perturbed, _ = trainer._forget_loss(model, inputs, reference)
                    loss = perturbed
                    if whole and trainer.has_retain_term:
                        loss = loss + coefficient * trainer._retain_loss(model, inputs, reference)[0]
                trainer._backward(loss)
            trainer._record(model, forget_loss_perturbed=perturbed)
        if last:
            return loss.detach()
        return perturbed.detach() + trainer._retain_pass(model, inputs, reference)


class RandomisedSmoothing(WeightPerturbation):
    """RS: the forget gradient averaged over `rs_samples` seeded Gaussian weight perturbations; retain at theta."""

    def step(self, model, inputs, reference):
        trainer, samples = self.trainer, self.args.rs_samples
        parameters = trainable(model)
        generator = self.generator(parameters[0].device)
        total = 0.0
        with restored(parameters, self.restore_buffers(parameters)) as saved:
            for index in range(samples):
                if index:
                    with torch.no_grad():
                        torch._foreach_copy_([local_tensor(parameter.detach()) for parameter in parameters], saved)
                add_gaussian_noise(parameters, self.args.rs_sigma, generator)
                last = index == samples - 1 and not trainer.has_retain_term
                with trainer._sync(model, last):
                    with trainer.compute_loss_context_manager():
                        forget, _ = trainer._forget_loss(model, inputs, reference)
                    trainer._backward(forget / samples)
                total = total + forget.detach() / samples
        trainer._record(model, forget_loss=total)
        return total + (trainer._retain_pass(model, inputs, reference) if trainer.has_retain_term else 0.0)


class GradientPenalty(Smoother):
    """GP: L_f + gp_coeff ||grad L_f||; CR: L_f + cr_coeff ||grad L_f(theta + eps) - grad L_f(theta)||, both on the
    micro-batch mean and differentiated through (double backprop)."""

    def step(self, model, inputs, reference):
        trainer, gradient_penalty = self.trainer, self.args.smoothing == "gp"
        unwrapped = trainer.accelerator.unwrap_model(model)
        named = [(name, parameter) for name, parameter in unwrapped.named_parameters() if parameter.requires_grad]
        parameters = [parameter for _, parameter in named]
        # The fused SDPA kernels have no double backward; the math kernel is made of differentiable ops.
        with trainer._sync(model, not trainer.has_retain_term), sdpa_kernel(SDPBackend.MATH):
            with trainer.compute_loss_context_manager():
                forget, weight = trainer._forget_loss(model, inputs, reference)
                mean = forget / weight
                if gradient_penalty:
                    penalty = gradient_norm_penalty(mean, parameters)
                    coefficient = self.args.gp_coeff
                else:
                    def loss_at(overrides):
                        shifted, shifted_weight = trainer._forget_loss(unwrapped, inputs, reference, overrides)
                        return shifted / shifted_weight

                    penalty = curvature_penalty(mean, named, loss_at, self.args.rho)
                    coefficient = self.args.cr_coeff
                loss = weight * (mean + coefficient * penalty)
            trainer._backward(loss)
        trainer._record(model, forget_loss=forget, **{f"{self.args.smoothing}_penalty": weight * penalty})
        return loss.detach() + (trainer._retain_pass(model, inputs, reference) if trainer.has_retain_term else 0.0)


SMOOTHERS = {"sam": SharpnessAware, "rs": RandomisedSmoothing, "gp": GradientPenalty, "cr": GradientPenalty}


def make_smoother(trainer) -> Smoother | None:
    """The smoother of `trainer.args.smoothing`, or None for those that use the Trainer's own step ('none', 'wa')."""
    smoother = SMOOTHERS.get(trainer.args.smoothing)
    return None if smoother is None else smoother(trainer)
