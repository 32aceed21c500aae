"""Erasure at a matched retain error: the trajectory callback, choosing and restoring the nearest point."""

import pytest
import torch

import hf_robust.erasure.matching as matching_module
from hf_robust.erasure.config import AdvUnlearnConfig
from hf_robust.erasure.matching import (
    RetainErrorTrajectory,
    TrajectoryPoint,
    nearest_point,
    point_at,
    restore_matching,
    restore_point,
)
from hf_robust.erasure.trainer import AdvUnlearnTrainer
from hf_robust.testing import tiny_sd_components

FAST = dict(use_cpu=True, report_to="none", save_strategy="no", bf16=False, disable_tqdm=True, ddim_steps=4,
            retain_batch=2, learning_rate=1e-2, seed=0, logging_strategy="no")


def esd_trainer(tmp_path, steps):
    args = AdvUnlearnConfig(output_dir=str(tmp_path), max_steps=steps, attack_warmup=steps, **FAST)
    return AdvUnlearnTrainer(tiny_sd_components(seed=0), args, concepts=["church"])


def weight_distance(trainer):
    """A cheap stand-in for the retain error: how far the trained weights moved (grows with training)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return float(sum((parameter.detach() - trainer.original_text_encoders[0].get_parameter(name)).norm() ** 2
                     for name, parameter in model.named_parameters() if parameter.requires_grad)) + 1e-12


def trained(trainer):
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()
            if parameter.requires_grad}


def test_point_k_of_a_longer_run_is_a_k_step_run_and_restores_exactly(tmp_path):
    long = esd_trainer(tmp_path / "long", 6)
    trajectory = RetainErrorTrajectory(long, weight_distance, every=2, min_steps=3)
    long.add_callback(trajectory)
    long.train()
    assert [point.step for point in trajectory.points] == [0, 2, 3, 4, 6]  # 0, every 2, min_steps, the last
    assert all(a.retain_error < b.retain_error for a, b in zip(trajectory.points, trajectory.points[1:]))
    short = esd_trainer(tmp_path / "short", 3)
    short.train()
    restore_point(long, point_at(trajectory.points, 3))
    expected = trained(short)
    assert all(torch.allclose(value, expected[name], atol=1e-6) for name, value in trained(long).items())

    matched = restore_matching(long, trajectory, target=trajectory.points[2].retain_error * 1.05, land=False)
    assert matched.step == 3 and matched.matched and matched.relative_gap == pytest.approx(-0.05 / 1.05)
    assert all(torch.equal(value, trajectory.points[2].state[name]) for name, value in trained(long).items())


def test_landing_between_two_recorded_points_hits_the_target(tmp_path):
    trainer = esd_trainer(tmp_path, 6)
    trajectory = RetainErrorTrajectory(trainer, weight_distance, every=3)
    trainer.add_callback(trajectory)
    trainer.train()
    errors = {point.step: point.retain_error for point in trajectory.points}
    target = errors[3] + 0.5 * (errors[6] - errors[3])  # far (> 10%) from both recorded points
    assert abs(errors[3] / target - 1) > 0.1 and abs(errors[6] / target - 1) > 0.1
    nearest = restore_matching(trainer, trajectory, target, tolerance=0.01, land=False)
    assert not nearest.matched and nearest.step in (3, 6)
    landed = restore_matching(trainer, trajectory, target, tolerance=0.01)
    assert landed.matched and 3 < landed.step < 6 and abs(landed.relative_gap) <= 0.01
    assert weight_distance(trainer) == pytest.approx(landed.retain_error, rel=1e-6)  # the model holds those weights


def test_training_stops_once_past_the_target_but_not_before_min_steps(tmp_path):
    trainer = esd_trainer(tmp_path, 8)
    trajectory = RetainErrorTrajectory(trainer, weight_distance, every=1, stop_above=1e-9, min_steps=3)
    trainer.add_callback(trajectory)
    trainer.train()
    assert trainer.state.global_step == 3 and trajectory.points[-1].step == 3


def test_nearest_point_and_its_match():
    points = [TrajectoryPoint(step, error, {}) for step, error in ((0, 0.0), (10, 0.08), (20, 0.2), (30, 0.5))]
    point, match = nearest_point(points, 0.19)
    assert point.step == 20 and match.matched and match.target == 0.19
    point, match = nearest_point(points, 0.35)
    assert point.step == 20 and not match.matched and match.relative_gap == pytest.approx(0.2 / 0.35 - 1)
    with pytest.raises(ValueError, match="step 5"):
        point_at(points, 5)


@pytest.mark.parametrize("call, match", [
    (lambda: nearest_point([], 0.1), "`points` is empty"),
    (lambda: nearest_point([TrajectoryPoint(0, 0.0, {})], 0.0), "`target`"),
    (lambda: nearest_point([TrajectoryPoint(0, 0.0, {})], 0.1, tolerance=1.5), "`tolerance`"),
    (lambda: RetainErrorTrajectory(None, len, every=0), "`every`"),
    (lambda: RetainErrorTrajectory(None, len, stop_above=-1.0), "`stop_above`"),
    (lambda: RetainErrorTrajectory(None, len, min_steps=-2), "`min_steps`"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_sharded_weights_are_refused_before_the_first_step(tmp_path, monkeypatch):
    trainer = esd_trainer(tmp_path, 2)
    monkeypatch.setattr(matching_module, "has_sharded_weights", lambda model: True)
    trainer.add_callback(RetainErrorTrajectory(trainer, weight_distance))
    with pytest.raises(ValueError, match="RetainErrorTrajectory on sharded weights .* not supported: .* Use DDP"):
        trainer.train()
    assert trainer.state.global_step == 0
