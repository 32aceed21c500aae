"""Unlearn until a forget measurement reaches a target: how methods are compared at matched forgetting.

Two unlearning methods run for the same number of steps rarely forget equally (SAM slows forgetting at a fixed
budget), and a method that forgot less is easier to relearn for that reason alone. `ForgetTargetCallback` stops
training at the first step where the forget measurement (e.g. the mean answer NLL of held-out forget facts) has
reached the target and an optional extra condition holds (e.g. answer accuracy 0), so each method is compared at the
same forgetting and the steps it needed are recorded.

    callback = ForgetTargetCallback(trainer, measure=held_out_nll, target=3.0, condition=no_correct_answers)
    trainer.add_callback(callback)
    trainer.train()
    callback.reached_at, callback.value   # the step it stopped at (None: max_steps first) and the measurement there
"""

import math

import torch
from transformers import TrainerCallback

from ..modeling import eval_mode


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

    Attributes:
        history: (step, measurement) of every measurement, step 0 (before training) first.
        reached_at: The step training stopped at because the target was reached; None if it was not (yet).
        value: The last measurement.
    """

    def __init__(self, trainer, measure, target: float, *, condition=None, every: int = 1,
                 higher_is_forgotten: bool = True):
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
        if not isinstance(higher_is_forgotten, bool):
            raise ValueError(f"`higher_is_forgotten` must be True or False, got {higher_is_forgotten!r}.")
        self.trainer, self.measure, self.target, self.condition = trainer, measure, float(target), condition
        self.every, self.higher_is_forgotten = every, higher_is_forgotten
        self.history: list[tuple[int, float]] = []
        self.reached_at: int | None = None

    @property
    def value(self) -> float | None:
        return self.history[-1][1] if self.history else None

    def _reached(self, value: float) -> bool:
        return value >= self.target if self.higher_is_forgotten else value <= self.target

    def _check(self, step: int, may_stop: bool = True) -> bool:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        with eval_mode(model), torch.no_grad():
            value = float(self.measure(model))
            self.history.append((step, value))
            return may_stop and self._reached(value) and (self.condition is None or bool(self.condition(model)))

    def on_train_begin(self, args, state, control, **kwargs):
        self.history, self.reached_at = [], None
        self._check(0, may_stop=False)  # where forgetting starts: unlearning always takes at least one step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 and self._check(state.global_step):
            self.reached_at = state.global_step
            control.should_training_stop = True
