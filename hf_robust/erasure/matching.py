"""Erasure at a matched retain error: compare two erasure methods only where they cost the retained concepts the same.

AdvUnlearn's inner attack makes erasure move more of what it should keep than plain ESD in the same iterations, so
"AdvUnlearn leaks less under attack" means little unless ESD is allowed the same retain error. `RetainErrorTrajectory`
records the retain error of a run every `every` iterations together with a CPU copy of the trained weights;
`restore_matching` then puts back the recorded weights whose retain error is nearest a target (e.g. AdvUnlearn's),
i.e. it tunes ESD's number of iterations. With a constant learning rate and per-iteration seeding (both true of
`AdvUnlearnTrainer`'s defaults) the weights after k iterations of a longer run are those of a k-iteration run, so one
run gives every candidate length.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from ..sharding import has_sharded_weights, refuse_before_work

MATCH_TOLERANCE = 0.10
"""Retain errors count as matched when they differ by at most this share of the target."""


@dataclass
class TrajectoryPoint:
    """The trained weights after `step` iterations (CPU copies) and their retain error."""

    step: int
    retain_error: float
    state: dict[str, torch.Tensor] = field(repr=False)


class RetainErrorTrajectory(TrainerCallback):
    """Every `every` optimizer steps (and at step 0, when training begins), measure `retain_error(trainer)` and keep
    a CPU copy of the trainable weights; stop training once the error exceeds `stop_above` (None: never) after at
    least `min_steps` steps.

    Args:
        trainer: the `AdvUnlearnTrainer` the callback is added to.
        measure: `measure(trainer) -> float`, e.g. `functools.partial(retain_error, prompts=..., config=...)`.
        every: measurement interval in optimizer steps (>= 1).
        stop_above: stop training after the first measurement above this value (the target has been passed).
        min_steps: never stop before this many steps, and record that step (e.g. the other method's iterations).
    """

    def __init__(self, trainer, measure, every: int = 2, stop_above: float | None = None, min_steps: int = 0):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"`every` must be an integer >= 1, got {every!r}.")
        if stop_above is not None and not stop_above > 0:
            raise ValueError(f"`stop_above` must be a positive number or None, got {stop_above!r}.")
        if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 0:
            raise ValueError(f"`min_steps` must be an integer >= 0, got {min_steps!r}.")
        self.trainer, self.measure, self.every, self.stop_above = trainer, measure, every, stop_above
        self.min_steps = min_steps
        self.points: list[TrajectoryPoint] = []

    def _record(self, step: int) -> float:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        state = {name: parameter.detach().to("cpu", copy=True) for name, parameter in model.named_parameters()
                 if parameter.requires_grad}
        value = float(self.measure(self.trainer))
        self.points.append(TrajectoryPoint(step, value, state))
        return value

    def on_train_begin(self, args, state, control, **kwargs):
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        if has_sharded_weights(model):  # checked before the first step: copies and restores need whole weights
            raise refuse_before_work(
                "RetainErrorTrajectory on sharded weights (FSDP2 / DeepSpeed ZeRO-3)",
                "it copies and restores the local parameters, which then hold only this rank's shard",
                "DDP or ZeRO-2, or a single process")
        self._record(0)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step in (self.min_steps, state.max_steps):
            value = self._record(state.global_step)
            if self.stop_above is not None and value > self.stop_above and state.global_step >= self.min_steps:
                control.should_training_stop = True


@dataclass
class MatchedPoint:
    """Which recorded point `restore_matching` chose (or landed between two, a fractional step) and how close it is
    to the target."""

    step: float
    retain_error: float
    target: float
    relative_gap: float
    matched: bool


def nearest_point(points: Sequence[TrajectoryPoint], target: float,
                  tolerance: float = MATCH_TOLERANCE) -> tuple[TrajectoryPoint, MatchedPoint]:
    """The point whose retain error is nearest `target` (the earliest on ties), and the match it makes."""
    if not points:
        raise ValueError("`points` is empty: record a trajectory first (RetainErrorTrajectory).")
    if not target > 0:
        raise ValueError(f"`target` must be a positive retain error, got {target!r}.")
    if not 0 <= tolerance < 1:
        raise ValueError(f"`tolerance` must be in [0, 1), got {tolerance!r}.")
    point = min(points, key=lambda candidate: abs(candidate.retain_error - target))
    gap = point.retain_error / target - 1
    return point, MatchedPoint(point.step, point.retain_error, target, gap, abs(gap) <= tolerance)


def point_at(points: Sequence[TrajectoryPoint], step: int) -> TrajectoryPoint:
    """The point recorded after `step` iterations."""
    for point in points:
        if point.step == step:
            return point
    raise ValueError(f"no point was recorded at step {step}; recorded: {[point.step for point in points]}.")


def restore_point(trainer, point: TrajectoryPoint) -> None:
    """Load the weights recorded at `point` back into the trainer's model (in place)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in point.state.items():
            parameters[name].copy_(value.to(parameters[name].device))


def restore_matching(trainer, trajectory: RetainErrorTrajectory, target: float,
                     tolerance: float = MATCH_TOLERANCE, land: bool = True, iterations: int = 12) -> MatchedPoint:
    """Put the recorded weights nearest `target` back into `trainer`'s model; say how close they are.

    With `land`, when the nearest point is outside the tolerance and two consecutive points bracket the target (the
    retain error jumped past it within one recorded interval), the weights are set between them, theta_a + s
    (theta_b - theta_a), with s found by bisection on `trajectory.measure` until the retain error is within
    `tolerance` (for a constant-rate optimizer, the last step taken at a fraction of its rate). The returned step is
    then fractional: a.step + s (b.step - a.step).
    """
    point, matched = nearest_point(trajectory.points, target, tolerance)
    restore_point(trainer, point)
    if matched.matched or not land:
        return matched
    points = sorted(trajectory.points, key=lambda candidate: candidate.step)
    bracket = next(((a, b) for a, b in zip(points, points[1:])
                    if min(a.retain_error, b.retain_error) < target <= max(a.retain_error, b.retain_error)), None)
    if bracket is None:
        return matched
    first, second = bracket
    low, high = 0.0, 1.0
    rising = second.retain_error > first.retain_error
    best = matched
    for _ in range(iterations):
        share = (low + high) / 2
        restore_point(trainer, TrajectoryPoint(first.step, first.retain_error, {
            name: torch.lerp(value, second.state[name], share) for name, value in first.state.items()}))
        value = float(trajectory.measure(trainer))
        gap = value / target - 1
        candidate = MatchedPoint(first.step + share * (second.step - first.step), value, target, gap,
                                 abs(gap) <= tolerance)
        if abs(gap) < abs(best.relative_gap):
            best = candidate
        if candidate.matched:
            return candidate
        if (value < target) == rising:
            low = share
        else:
            high = share
    # Not within tolerance after `iterations` halvings: put back the best point seen.
    if best.step == point.step:
        restore_point(trainer, point)
    else:
        share = (best.step - first.step) / (second.step - first.step)
        restore_point(trainer, TrajectoryPoint(first.step, best.retain_error, {
            name: torch.lerp(value, second.state[name], share) for name, value in first.state.items()}))
    return best
