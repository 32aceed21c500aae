"""Invariants of the discrete attack core: monotone loss, only `positions` change, round trip, determinism and
stopping rules (one GASLITE iteration pinned exactly: test_discrete_iteration.py)."""

import pytest
import torch
import torch.nn.functional as F

from hf_robust.attacks import TokenSearchConfig, token_search, tokenizer_round_trip

from .objectives import BATCH, GCGFixedTarget

FAST = dict(n_iters=4, topk=32, n_candidates=16, n_top_candidates=8, n_flip=3, batch_size=64)


def assert_common(result, ids, positions, allowed, objective, n_iters):
    history = result.history
    assert len(history) == result.iterations + 1 and result.iterations <= n_iters
    assert all(b <= a for a, b in zip(history, history[1:])), history
    assert history[-1] == result.loss
    changed = (result.ids != ids).nonzero().flatten()
    assert set(changed.tolist()) <= set(positions.tolist())
    assert allowed[result.ids[changed]].all()
    with torch.no_grad():
        recomputed = objective.loss_from_ids(result.ids.unsqueeze(0))[0]
    assert recomputed.item() == pytest.approx(result.loss, abs=1e-5)


@pytest.mark.parametrize("setup", ["gcg", "retrieval"])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_decreases_and_only_positions_change(setup, seed, request):
    model, tokenizer, objective, ids, positions, weight, allowed = request.getfixturevalue(setup)
    config = TokenSearchConfig(seed=seed, **FAST)
    result = token_search(objective, ids, positions, weight, allowed, config)
    assert_common(result, ids, positions, allowed, objective, config.n_iters)
    assert result.iterations == config.n_iters
    assert result.loss < result.history[0]
    assert result.seconds >= 0


def test_n_grad_average_and_n_flip_larger_than_positions(retrieval):
    model, tokenizer, objective, ids, positions, weight, allowed = retrieval
    config = TokenSearchConfig(**{**FAST, "n_grad": 5, "n_flip": 100, "normalize_gradient": True})
    result = token_search(objective, ids, positions, weight, allowed, config)
    assert_common(result, ids, positions, allowed, objective, config.n_iters)
    assert result.loss < result.history[0]


def test_plain_callable_objective(gcg):
    model, tokenizer, objective, ids, positions, weight, allowed = gcg
    result = token_search(objective.loss_from_embeds, ids, positions, weight, allowed, TokenSearchConfig(**FAST))
    reference = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**FAST))
    assert torch.equal(result.ids, reference.ids)
    assert result.history == pytest.approx(reference.history, abs=1e-5)


def test_embeds_forward_equals_ids_forward(gcg, retrieval):
    """The gradient path (one-hot @ E at `positions`, E[ids] elsewhere) computes exactly the ids forward."""
    for model, tokenizer, objective, ids, positions, weight, allowed in (gcg, retrieval):
        batch = ids.unsqueeze(0)
        one_hot = F.one_hot(batch[:, positions], weight.shape[0]).to(weight.dtype)
        with torch.no_grad():
            embeds = weight[batch].clone()
            embeds[:, positions] = one_hot @ weight
            assert torch.equal(embeds, weight[batch])
            assert torch.equal(objective.loss_from_embeds(embeds), objective.loss_from_ids(batch))


def test_round_trip_rule(retrieval, gcg):
    for model, tokenizer, objective, ids, positions, weight, allowed in (retrieval, gcg):
        config = TokenSearchConfig(**FAST)
        result = token_search(objective, ids, positions, weight, allowed, config, tokenizer=tokenizer)
        assert_common(result, ids, positions, allowed, objective, config.n_iters)
        assert tokenizer_round_trip(tokenizer, positions)(result.ids)
        assert tokenizer_round_trip(tokenizer, positions)(ids)

    calls = []

    def reject(candidate):
        calls.append(candidate.clone())
        return False

    result = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**FAST), round_trip=reject)
    assert torch.equal(result.ids, ids)
    assert result.history == [result.history[0]] * (result.iterations + 1)
    assert calls, "round_trip must have been asked about improving candidates"


def test_round_trip_is_lazy(gcg):
    """Only candidates better than the current sequence are checked, best first; accepted is the first passing."""
    model, tokenizer, objective, ids, positions, weight, allowed = gcg
    checked = []

    def every_other(candidate):
        checked.append(objective.loss_from_ids(candidate.unsqueeze(0)).item())
        return len(checked) % 2 == 0

    config = TokenSearchConfig(**{**FAST, "n_iters": 1, "n_flip": 1})
    with torch.no_grad():
        result = token_search(objective, ids, positions, weight, allowed, config, round_trip=every_other)
    # Seeded and deterministic on CPU: two improving candidates exist, the first is refused, the second accepted.
    assert len(checked) == 2
    assert checked[0] <= checked[1] + 1e-6
    assert result.loss == pytest.approx(checked[1], abs=1e-5)


def test_determinism_and_global_rng(gcg):
    model, tokenizer, objective, ids, positions, weight, allowed = gcg
    config = TokenSearchConfig(**{**FAST, "n_grad": 3})
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    first = token_search(objective, ids, positions, weight, allowed, config)
    assert torch.equal(torch.get_rng_state(), state)
    second = token_search(objective, ids, positions, weight, allowed, config)
    assert torch.equal(first.ids, second.ids) and first.history == second.history
    other = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**{**FAST, "seed": 7}))
    assert other.history[0] == first.history[0]


def test_callback_sees_every_iteration(retrieval):
    model, tokenizer, objective, ids, positions, weight, allowed = retrieval
    calls = []
    result = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**FAST),
                          callback=lambda iteration, loss: calls.append((iteration, loss)))
    assert calls == list(enumerate(result.history[1:], start=1))
    assert len(calls) == result.iterations == FAST["n_iters"]


def test_model_grads_stay_none(gcg, retrieval):
    for model, tokenizer, objective, ids, positions, weight, allowed in (gcg, retrieval):
        token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**{**FAST, "n_iters": 1}))
        assert all(parameter.grad is None for parameter in model.parameters())


def test_stopping_rules(gcg):
    model, tokenizer, objective, ids, positions, weight, allowed = gcg
    result = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**{**FAST, "n_iters": 0}))
    assert result.iterations == 0 and torch.equal(result.ids, ids) and len(result.history) == 1
    assert result.stop_reason == "n_iters" and result.iteration_seconds == []
    assert result.trajectory.shape == (1, positions.numel())
    result = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**FAST, early_stop=1e6))
    assert result.iterations == 0 and result.stop_reason == "early_stop"
    result = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**FAST, time_limit=1e-9))
    assert result.iterations == 0 and result.stop_reason == "time_limit"
    result = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**FAST))
    assert result.stop_reason == "n_iters" and not result.stopped and result.iterations == FAST["n_iters"]


def test_iteration_seconds_and_trajectory(retrieval):
    model, tokenizer, objective, ids, positions, weight, allowed = retrieval
    result = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**FAST))
    assert len(result.iteration_seconds) == result.iterations == FAST["n_iters"]
    assert all(seconds > 0 for seconds in result.iteration_seconds)
    assert sum(result.iteration_seconds) <= result.seconds
    assert result.trajectory.shape == (result.iterations + 1, positions.numel())
    assert result.trajectory.dtype == torch.long and torch.equal(result.trajectory[0], ids[positions])
    assert torch.equal(result.trajectory[-1], result.ids[positions])  # the 'coordinate' step ends on its best
    with torch.no_grad():  # row t is the iterate whose loss is history[t]
        for row, loss in zip(result.trajectory, result.history):
            sequence = ids.clone()
            sequence[positions] = row
            assert objective.loss_from_ids(sequence.unsqueeze(0)).item() == pytest.approx(loss, abs=1e-5)


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_patience_stops_where_the_rule_says_on_the_same_trajectory(retrieval, patience):
    """The patience rule only truncates: the early-stopped search is a prefix of the full one, and it ends at the
    first iteration t >= patience with best[t - patience] - best[t] <= min_delta."""
    model, tokenizer, objective, ids, positions, weight, allowed = retrieval
    settings = {**FAST, "n_iters": 8, "n_flip": 1}
    full = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**settings))
    history = full.history  # non-increasing: the best loss after each iteration
    gains = sorted(history[t - patience] - history[t] for t in range(patience, len(history)))
    for min_delta in (0.0, gains[len(gains) // 2], 1e9):
        result = token_search(objective, ids, positions, weight, allowed,
                              TokenSearchConfig(**settings, patience=patience, min_delta=min_delta))
        fired = [t for t in range(patience, len(history)) if history[t - patience] - history[t] <= min_delta]
        expected = fired[0] if fired else settings["n_iters"]
        assert result.iterations == expected, (min_delta, history)
        assert result.stop_reason == ("patience" if fired else "n_iters")
        assert result.history == history[: expected + 1] and torch.equal(result.trajectory, full.trajectory[
            : expected + 1])
        assert len(result.iteration_seconds) == expected
    huge = token_search(objective, ids, positions, weight, allowed,
                        TokenSearchConfig(**settings, patience=patience, min_delta=1e9))
    assert huge.iterations == patience  # the earliest the rule may fire


def test_patience_on_a_flat_search_and_off_by_default(retrieval):
    model, tokenizer, objective, ids, positions, weight, allowed = retrieval
    config = TokenSearchConfig(**{**FAST, "n_iters": 6}, patience=2)
    flat = token_search(objective, ids, positions, weight, allowed, config, round_trip=lambda candidate: False)
    assert flat.iterations == 2 and flat.stop_reason == "patience" and flat.history == [flat.history[0]] * 3
    assert TokenSearchConfig().patience == 0 and not TokenSearchConfig().plateaued([1.0] * 10)
    assert TokenSearchConfig(patience=2, min_delta=0.1).plateaued([1.0, 0.95, 0.91])
    assert not TokenSearchConfig(patience=2, min_delta=0.1).plateaued([1.0, 0.95, 0.89])
    assert not TokenSearchConfig(patience=2, min_delta=0.1).plateaued([1.0, 1.0])  # fewer than 2 iterations


def test_token_search_errors(gcg):
    model, tokenizer, objective, ids, positions, weight, allowed = gcg
    vocab = weight.shape[0]

    def run(**overrides):
        args = dict(objective=objective, initial_ids=ids, positions=positions, embedding_matrix=weight,
                    allowed=allowed, config=TokenSearchConfig(**{**FAST, "n_iters": 1}))
        extra = {key: overrides.pop(key) for key in ("tokenizer", "round_trip", "callback") if key in overrides}
        args.update(overrides)
        return token_search(args.pop("objective"), *args.values(), **extra)

    cases = [
        (TypeError, "objective", {"objective": 3}),
        (TypeError, "config", {"config": {"n_iters": 1}}),
        (TypeError, "embedding_matrix", {"embedding_matrix": weight.tolist()}),
        (ValueError, "embedding_matrix", {"embedding_matrix": weight[0]}),
        (ValueError, "embedding_matrix", {"embedding_matrix": torch.zeros(vocab, 4, dtype=torch.long)}),
        (TypeError, "initial_ids", {"initial_ids": ids.tolist()}),
        (ValueError, "initial_ids", {"initial_ids": ids.float()}),
        (ValueError, "initial_ids", {"initial_ids": ids.unsqueeze(0)}),
        (ValueError, "initial_ids", {"initial_ids": torch.tensor([], dtype=torch.long)}),
        (ValueError, "initial_ids", {"initial_ids": torch.where(ids == ids[0], vocab, ids)}),
        (ValueError, "initial_ids", {"initial_ids": torch.where(ids == ids[0], -1, ids)}),
        (TypeError, "positions", {"positions": positions.tolist()}),
        (ValueError, "positions", {"positions": positions.float()}),
        (ValueError, "positions", {"positions": torch.tensor([], dtype=torch.long)}),
        (ValueError, "positions", {"positions": torch.tensor([0, ids.numel()])}),
        (ValueError, "positions", {"positions": torch.tensor([-1])}),
        (ValueError, "positions", {"positions": torch.tensor([1, 1])}),
        (TypeError, "allowed", {"allowed": allowed.tolist()}),
        (ValueError, "allowed", {"allowed": allowed.long()}),
        (ValueError, "allowed", {"allowed": allowed[:-1]}),
        (ValueError, "allowed", {"allowed": torch.zeros_like(allowed)}),
        (ValueError, "not both", {"tokenizer": tokenizer, "round_trip": lambda ids: True}),
        (TypeError, "round_trip", {"round_trip": True}),
        (TypeError, "tokenizer", {"tokenizer": "gpt2"}),
        (TypeError, "callback", {"callback": "print"}),
        (ValueError, "objective", {"objective": lambda embeds: embeds.sum()}),
    ]
    for error, match, overrides in cases:
        with pytest.raises(error, match=match):
            run(**overrides)

    class WrongIds(GCGFixedTarget):
        def loss_from_ids(self, ids):
            return super().loss_from_ids(ids).unsqueeze(-1)

    with pytest.raises(ValueError, match="loss_from_ids"):
        run(objective=WrongIds(model, objective.target))


def test_gradient_ranks_exactly_on_a_linear_objective():
    """loss = sum_p <embeds[p], w_p> is linear in the one-hot, so its gradient ranks tokens exactly: one iteration
    with top-1 candidates at every position must reach the allowed per-position minimum."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 8, generator=generator)
    directions = torch.randn(12, 8, generator=generator)
    allowed = torch.rand(50, generator=generator) > 0.5
    ids = torch.zeros(12, dtype=torch.long)
    positions = torch.tensor([1, 4, 5, 9])

    def objective(embeds):
        return (embeds * directions).sum((1, 2))

    config = TokenSearchConfig(n_iters=1, topk=1, n_candidates=1, n_top_candidates=1, n_flip=4)
    result = token_search(objective, ids, positions, weight, allowed, config)
    best = (weight @ directions[positions].T).masked_fill(~allowed.unsqueeze(1), float("inf")).argmin(0)
    assert torch.equal(result.ids[positions], best)
    assert result.loss == pytest.approx(objective(weight[result.ids].unsqueeze(0)).item(), abs=1e-5)


def test_stop_callable_ends_the_search(gcg):
    _, _, objective, ids, positions, weight, allowed = gcg
    seen = []
    result = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**BATCH),
                          stop=lambda best: seen.append(best.clone()) or True)
    assert result.stopped and result.iterations == 1 and len(seen) == 1
    with pytest.raises(TypeError, match="`stop`"):
        token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**BATCH), stop=3)
    with pytest.raises(ValueError, match="`step`"):
        TokenSearchConfig(step="greedy")
    with pytest.raises(ValueError, match="`n_replace`"):
        TokenSearchConfig(n_replace=0)
    with pytest.raises(ValueError, match="`buffer_size`"):
        TokenSearchConfig(buffer_size=-1)
