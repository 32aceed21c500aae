"""Unlearn until a forget measurement reaches a target: how methods are compared at matched forgetting.

Two unlearning methods run for the same number of steps rarely forget equally (SAM slows forgetting at a fixed
budget), and a method that forgot less is easier to relearn for that reason alone. `ForgetTargetCallback` stops
training at the first step where the forget measurement (e.g. the mean answer NLL of held-out forget facts) has
reached the target and an optional extra condition holds (e.g. answer accuracy 0), so each method is compared at the
same forgetting and the steps it needed are recorded. A step is a coarse unit (one NPO step on SmolLM2 moved the
held-out answer NLL by up to 2.5 nats), so with `land=True` the last step is shortened: the weights are set to
theta_prev + a (theta_step - theta_prev), a found by bisection, so that the measurement lands within `tolerance`
of the target (for Adam, the same step taken at a smaller rate).

    callback = ForgetTargetCallback(trainer, measure=held_out_nll, target=3.0, condition=no_correct_answers)
    trainer.add_callback(callback)
    trainer.train()
    callback.reached_at, callback.value   # the step it stopped at (None: max_steps first) and the measurement there
"""

import math

import torch
from transformers import TrainerCallback

from ..modeling import eval_mode
from ..sharding import has_sharded_weights, refuse_before_work


class ForgetTargetCallback(TrainerCallback):
    """Measure `measure(model)` every `every` optimizer steps; stop training once it is >= `target` (or <= `target`
    with `higher_is_forgotten=False`) and `condition(model)` holds.

    The measurements run on the unwrapped model in eval mode without gradients, on every process (each process of a
    DDP run holds the whole model and gets the same value, so all stop together); not for sharded weights.

    Args:
        trainer: The `UnlearnTrainer` (any `transformers.Trainer`) the callback is added to.
        measure: `measure(model) -> float`, e.g. the mean answer NLL of held-out forget rows.
        target: The value that counts as forgotten.
        condition: Optional `condition(model) -> bool` checked only once the target is reached (it may be costlier,
            e.g. greedy generation); training goes on while it is False.
        every: Optimizer steps between two measurements (>= 1).
        higher_is_forgotten: True when a larger measurement means more forgetting (NLL); False for e.g. accuracy.
        land: Shorten the last step so that the measurement lands in [target, target + tolerance * |target|] (the
            other way round for `higher_is_forgotten=False`); if `condition` fails there but holds at the whole
            step, at the smallest share found where it holds (the measurement is then past the band). Keeps a copy
            of the trainable weights before each measured step (same device), so it doubles their memory.
        tolerance: Relative width of the landing band (> 0).
        land_iterations: Bisection steps at most (each one measurement).

    Attributes:
        history: (step, measurement) of every measurement, step 0 (before training) first; a landed point has a
            fractional step (step - 1 + the kept share of the last step).
        reached_at: The step training stopped at because the target was reached; None if it was not (yet).
        landed_fraction: The share of the last step kept (1.0: the whole step; None before stopping).
        value: The last measurement (after landing, the landed one).
    """

    def __init__(self, trainer, measure, target: float, *, condition=None, every: int = 1,
                 higher_is_forgotten: bool = True, land: bool = False, tolerance: float = 0.05,
                 land_iterations: int = 12):
        if not all(hasattr(trainer, name) for name in ("accelerator", "model")):
            raise TypeError(f"`trainer` must be a transformers Trainer, got {type(trainer).__name__}.")
        if not callable(measure):
            raise TypeError(f"`measure` must be callable (model -> float), got {type(measure).__name__}.")
        if condition is not None and not callable(condition):
            raise TypeError(f"`condition` must be callable (model -> bool) or None, got {type(condition).__name__}.")
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
            raise ValueError(f"`target` must be a finite number, got {target!r}.")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"`every` must be an integer >= 1, got {every!r}.")
        for name, flag in (("higher_is_forgotten", higher_is_forgotten), ("land", land)):
            if not isinstance(flag, bool):
                raise ValueError(f"`{name}` must be True or False, got {flag!r}.")
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
            raise ValueError(f"`tolerance` must be a number in (0, 1), got {tolerance!r}.")
        if isinstance(land_iterations, bool) or not isinstance(land_iterations, int) or land_iterations < 1:
            raise ValueError(f"`land_iterations` must be an integer >= 1, got {land_iterations!r}.")
        self.trainer, self.measure, self.target, self.condition = trainer, measure, float(target), condition
        self.every, self.higher_is_forgotten = every, higher_is_forgotten
        self.land, self.tolerance, self.land_iterations = land, float(tolerance), land_iterations
        self.history: list[tuple[float, float]] = []
        self.reached_at: int | None = None
        self.landed_fraction: float | None = None
        self._previous: list[torch.Tensor] | None = None
        self._current: list[torch.Tensor] | None = None

    @property
    def value(self) -> float | None:
        return self.history[-1][1] if self.history else None

    def _reached(self, value: float) -> bool:
        return value >= self.target if self.higher_is_forgotten else value <= self.target

    def _in_band(self, value: float) -> bool:
        overshoot = (value - self.target) if self.higher_is_forgotten else (self.target - value)
        return 0 <= overshoot <= self.tolerance * abs(self.target)

    def _model(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    def _parameters(self) -> list[torch.Tensor]:
        return [parameter for parameter in self._model().parameters() if parameter.requires_grad]

    def _measured(self) -> float:
        model = self._model()
        with eval_mode(model), torch.no_grad():
            return float(self.measure(model))

    def _holds(self) -> bool:
        if self.condition is None:
            return True
        model = self._model()
        with eval_mode(model), torch.no_grad():
            return bool(self.condition(model))

    def _set_share(self, share: float) -> None:
        """Trainable weights at theta_prev + share (theta_step - theta_prev)."""
        with torch.no_grad():
            for parameter, before, after in zip(self._parameters(), self._previous, self._current):
                parameter.copy_(torch.lerp(before, after, share))

    def _land(self, value: float) -> tuple[float, float]:
        """Bisect the share a of the last step until the measurement is in the band; returns (a, measurement)."""
        low, high, best = 0.0, 1.0, (1.0, value)
        for _ in range(self.land_iterations):
            middle = (low + high) / 2
            self._set_share(middle)
            measured = self._measured()
            if self._reached(measured):
                high, best = middle, (middle, measured)
                if self._in_band(measured):
                    break
            else:
                low = middle
        self._set_share(best[0])
        return best

    def _land_on_condition(self, low: float, value: float) -> tuple[float, float] | None:
        """The condition failed at share `low` (where the target was reached): the smallest share in (low, 1] found
        by bisection where the target is reached and the condition holds, with its measurement; None (weights back
        at the whole step) if it fails at the whole step too."""
        self._set_share(1.0)
        if not self._holds():
            return None
        high, best = 1.0, (1.0, value)
        for _ in range(self.land_iterations):
            if high - low <= 1 / 64:  # finer than the landing band needs
                break
            middle = (low + high) / 2
            self._set_share(middle)
            measured = self._measured()
            if self._reached(measured) and self._holds():
                high, best = middle, (middle, measured)
            else:
                low = middle
        self._set_share(best[0])
        return best

    def on_train_begin(self, args, state, control, **kwargs):
        if has_sharded_weights(self._model()):  # checked here: the model is wrapped by now, no step taken yet
            raise refuse_before_work(
                "ForgetTargetCallback on sharded weights (FSDP2 / DeepSpeed ZeRO-3)",
                "its measurements and the landing run on the local model, which then holds only this rank's shard",
                "DDP or ZeRO-2 (whole weights on every rank), or a single process")
        self.history, self.reached_at, self.landed_fraction = [], None, None
        self.history.append((0, self._measured()))  # where forgetting starts: unlearning always takes >= 1 step

    def on_step_begin(self, args, state, control, **kwargs):
        if self.land and (state.global_step + 1) % self.every == 0:  # this step ends with a measurement
            self._previous = [parameter.detach().clone() for parameter in self._parameters()]

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.every:
            return
        value = self._measured()
        self.history.append((step, value))
        if not self._reached(value):
            return
        share, whole_step_value = 1.0, value
        landing = self.land and self._previous is not None
        if landing and not self._in_band(value):
            self._current = [parameter.detach().clone() for parameter in self._parameters()]  # the whole step
            share, value = self._land(value)
            self.history.append((step - 1 + share, value))
        if not self._holds():
            # Where the condition first holds on this step, if it does by its end; else go on training from there.
            landed = self._land_on_condition(share, whole_step_value) if landing and share < 1.0 else None
            if landed is None:
                self._current = None  # training goes on from the whole step; its copy is not needed
                return
            share, value = landed
            self.history.append((step - 1 + share, value))
        self.reached_at, self.landed_fraction = step, share
        self._previous = self._current = None
        control.should_training_stop = True
