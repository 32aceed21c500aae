"""The one PGD loop (hf_robust.attacks.pgd) on generic objectives: projection, unbounded radius, sign-Adam, bad
input."""

import pytest
import torch

from hf_robust.attacks import PGDConfig, perturbation_radius, projected_gradient_descent


def test_pgd_and_helpers_bad_inputs():
    mask = torch.ones(2, 3, dtype=torch.bool)
    objective = lambda delta: delta.sum(dim=(1, 2))  # noqa: E731
    with pytest.raises(TypeError, match="`config`"):
        projected_gradient_descent(objective, mask, 4, 1.0, config={"steps": 1})
    with pytest.raises(TypeError, match="`objective`"):
        projected_gradient_descent(None, mask, 4, 1.0)
    with pytest.raises(TypeError, match="`mask`"):
        projected_gradient_descent(objective, mask.tolist(), 4, 1.0)
    with pytest.raises(ValueError, match="`mask`"):
        projected_gradient_descent(objective, mask.long(), 4, 1.0)
    with pytest.raises(ValueError, match="`hidden_size`"):
        projected_gradient_descent(objective, mask, 0, 1.0)
    with pytest.raises(ValueError, match="`radius`"):
        projected_gradient_descent(objective, mask, 4, -1.0)
    with pytest.raises(ValueError, match="`objective`"):
        projected_gradient_descent(lambda delta: delta.sum(), mask, 4, 1.0)
    with pytest.raises(ValueError, match="`eps_mode`"):
        perturbation_radius(torch.ones(3, 4), 0.1, "relatve")
    with pytest.raises(ValueError, match="`eps`"):
        perturbation_radius(torch.ones(3, 4), -0.1)
    with pytest.raises(ValueError, match="`embedding_weight`"):
        perturbation_radius(torch.ones(4), 0.1)


def test_pgd_generic_objective_converges_to_the_projection():
    """Minimising ||delta - c||^2 in a ball of radius r ends at c * r / ||c|| where ||c|| > r, and at c inside."""
    torch.manual_seed(0)
    center = torch.randn(2, 3, 8)
    center[0, 0] *= 0.01  # inside the ball
    mask = torch.tensor([[True, True, False], [True, True, True]])
    radius = 0.5
    objective = lambda delta: ((delta - center) ** 2).sum(dim=(1, 2))  # noqa: E731
    config = PGDConfig(steps=300, step_size=0.01, optimizer="l2")
    with torch.no_grad():  # the loop enables gradients itself
        result = projected_gradient_descent(objective, mask, 8, radius, config)
    expected = center * (radius / center.norm(dim=-1, keepdim=True)).clamp(max=1)
    expected[~mask] = 0
    torch.testing.assert_close(result.delta, expected, atol=0.02, rtol=0)
    assert result.losses[-1] < result.losses[0] and len(result.losses) == 301


def test_pgd_unbounded_radius_reaches_the_unconstrained_minimum():
    """With radius=inf nothing is projected: minimising ||delta - c||^2 ends at c (masked positions stay 0)."""
    torch.manual_seed(0)
    center = 3.0 * torch.randn(2, 3, 8)  # far outside any small ball
    mask = torch.tensor([[True, False, True], [True, True, True]])
    objective = lambda delta: ((delta - center) ** 2).sum(dim=(1, 2))  # noqa: E731
    for optimizer in ("l2", "adam"):
        step_size = 0.01 if optimizer == "l2" else 0.1
        result = projected_gradient_descent(objective, mask, 8, float("inf"),
                                            PGDConfig(steps=1500, step_size=step_size, optimizer=optimizer))
        expected = torch.where(mask.unsqueeze(-1), center, 0.0)
        torch.testing.assert_close(result.delta, expected, atol=0.05, rtol=0)
        assert result.delta.norm(dim=-1).max() > 3.0


def test_pgd_sign_adam_is_adam_fed_the_sign_of_the_gradient():
    torch.manual_seed(0)
    center = torch.randn(2, 3, 8)
    weights = torch.rand(2, 3, 8) + 0.5
    mask = torch.ones(2, 3, dtype=torch.bool)
    objective = lambda delta: (weights * (delta - center) ** 2).sum(dim=(1, 2))  # noqa: E731
    config = PGDConfig(steps=4, step_size=0.05, optimizer="sign_adam")
    result = projected_gradient_descent(objective, mask, 8, float("inf"), config)
    manual = torch.zeros(2, 3, 8, requires_grad=True)
    adam = torch.optim.Adam([manual], lr=0.05)
    for _ in range(4):
        adam.zero_grad()
        objective(manual).sum().backward()
        manual.grad.sign_()
        adam.step()
    torch.testing.assert_close(result.delta, manual.detach(), rtol=0, atol=1e-7)
    # Not the plain Adam trajectory: the gradient magnitudes differ across coordinates.
    plain = projected_gradient_descent(objective, mask, 8, float("inf"), PGDConfig(steps=4, step_size=0.05,
                                                                                    optimizer="adam"))
    assert not torch.allclose(plain.delta, result.delta)
    # With a finite radius the projection still binds.
    bounded = projected_gradient_descent(objective, mask, 8, 0.01, config)
    assert (bounded.delta.norm(dim=-1) <= 0.01 * (1 + 1e-5)).all()


def test_pgd_unbounded_radius_bad_inputs():
    mask = torch.ones(1, 2, dtype=torch.bool)
    objective = lambda delta: delta.sum(dim=(1, 2))  # noqa: E731
    with pytest.raises(ValueError, match="`radius`"):
        projected_gradient_descent(objective, mask, 4, float("inf"), PGDConfig(steps=1, step_mode="relative"))
    with pytest.raises(ValueError, match="`radius`"):
        projected_gradient_descent(objective, mask, 4, float("inf"), PGDConfig(steps=1, init="uniform"))
    with pytest.raises(ValueError, match="`radius`"):
        projected_gradient_descent(objective, mask, 4, float("nan"))
    with pytest.raises(ValueError, match="`optimizer`"):
        PGDConfig(optimizer="adam_sign")



def test_a_uniform_start_without_a_seed_is_seeded_per_run_process_and_call():
    uniform = PGDConfig(init="uniform")
    seeds = {uniform.seeded_for_call(0, process, call).seed for process in (0, 1) for call in (0, 1)}
    assert len(seeds) == 4 and all(isinstance(seed, int) and seed >= 0 for seed in seeds)
    assert uniform.seeded_for_call(0, 1, 1) == uniform.seeded_for_call(0, 1, 1)  # the same on a rerun
    assert uniform.seeded_for_call(5, 1, 1).seed not in seeds
    assert PGDConfig(init="uniform", seed=3).seeded_for_call(0, 0, 0).seed == 3
    assert PGDConfig(init="zero").seeded_for_call(0, 0, 0) == PGDConfig(init="zero")
