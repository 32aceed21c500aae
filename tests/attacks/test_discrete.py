"""Invariants of the discrete attack core: monotone loss, only `positions` change, round trip, determinism, stopping
rules, and the rules of one GASLITE iteration pinned exactly."""

import pytest
import torch
import torch.nn.functional as F

from hf_robust.attacks import TokenSearchConfig, token_search, tokenizer_round_trip

from .objectives import BATCH, GCGFixedTarget, Linear, Recording

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


# --------------------------------------------------------------------------------------------------------------------
# The rules of one GASLITE iteration, pinned exactly
# --------------------------------------------------------------------------------------------------------------------


def gradient_rows(ids, positions, allowed, n_grad, seed):
    """The gradient rows of `_token_scores`: the current sequence, then n_grad - 1 single random substitutions of an
    optimised position by a random allowed token (drawn from a CPU generator seeded with `seed`)."""
    generator = torch.Generator().manual_seed(seed)
    allowed_ids = allowed.nonzero().flatten()
    rows = ids.unsqueeze(0).repeat(n_grad, 1)
    at = torch.randint(positions.numel(), (n_grad - 1,), generator=generator)
    token = allowed_ids[torch.randint(allowed_ids.numel(), (n_grad - 1,), generator=generator)]
    rows[torch.arange(1, n_grad), positions[at]] = token
    return rows, allowed_ids


def test_token_scores_are_the_per_position_normalised_average_by_hand():
    """loss(embeds) = sum_s <tanh(embeds[s] @ A[s]), w[s]>: d loss / d one-hot[r, p, v] = E[v] . g[r, p] with
    g[r, p] = A[p] @ (w[p] * (1 - tanh(e[r, p] @ A[p])^2)). `_token_scores` must be -(1/n) sum_r g'[r, p] where g' is
    E @ g[r, p] L2-normalised over the vocabulary for each (row, position) separately."""
    from hf_robust.attacks.discrete import _token_scores

    generator = torch.Generator().manual_seed(0)
    vocab, hidden, seq, k = 40, 6, 7, 5
    weight = torch.randn(vocab, hidden, generator=generator, dtype=torch.float64)
    project = torch.randn(seq, hidden, k, generator=generator, dtype=torch.float64)
    directions = torch.randn(seq, k, generator=generator, dtype=torch.float64)
    allowed = torch.rand(vocab, generator=generator) > 0.3
    ids = torch.randint(vocab, (seq,), generator=generator)
    positions = torch.tensor([1, 3, 4, 6])

    def objective(embeds):  # (batch, seq, hidden) -> (batch,)
        return (torch.tanh(torch.einsum("bsh,shk->bsk", embeds, project)) * directions).sum((1, 2))

    n_grad, seed = 3, 5
    config = TokenSearchConfig(n_grad=n_grad, normalize_gradient=True, seed=seed)
    rows, allowed_ids = gradient_rows(ids, positions, allowed, n_grad, seed)
    assert (rows[1:] != ids).sum(dim=1).le(1).all()
    expected = torch.zeros(positions.numel(), vocab, dtype=torch.float64)
    unnormalised = torch.zeros_like(expected)
    for row in rows:
        for index, position in enumerate(positions.tolist()):
            e = weight[row[position]]
            g = project[position] @ (directions[position] * (1 - torch.tanh(e @ project[position]) ** 2))
            one_hot_gradient = weight @ g  # (V,)
            expected[index] -= one_hot_gradient / one_hot_gradient.norm() / n_grad
            unnormalised[index] -= one_hot_gradient / n_grad
    from hf_robust.attacks.discrete import _CallableObjective

    scores = _token_scores(_CallableObjective(objective, weight), ids, positions, weight, allowed_ids, config,
                           torch.Generator().manual_seed(seed))
    assert scores.shape == (positions.numel(), vocab) and scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), expected, rtol=0, atol=1e-6)
    # The test tells the rule apart: no normalisation, or one norm per position over rows and vocabulary, differ.
    assert (scores.double() - unnormalised).abs().max() > 1e-3
    per_position = unnormalised / unnormalised.norm(dim=-1, keepdim=True)
    assert (scores.double() - per_position).abs().max() > 1e-3


def one_hot_token_scores(objective, ids, positions, weight, allowed, config):
    """The one-hot form of the averaged gradient, as the reference implementation computes it: X (rows, L, V) with
    grad, embeds = X @ E at `positions`, dloss/dX normalised over V per (row, position), averaged, negated."""
    rows, _ = gradient_rows(ids, positions, allowed, config.n_grad, config.seed)
    one_hot = F.one_hot(rows[:, positions], weight.shape[0]).to(weight.dtype).requires_grad_(True)
    embeds = weight.detach()[rows].clone()
    embeds[:, positions] = one_hot @ weight.detach()
    (grad,) = torch.autograd.grad(objective.loss_from_embeds(embeds).sum(), one_hot)
    if config.normalize_gradient:
        grad = grad / grad.norm(dim=-1, keepdim=True)
    return -grad.float().mean(dim=0)


@pytest.mark.parametrize("normalize", [True, False])
def test_gram_form_gradient_equals_the_one_hot_form(retrieval, normalize):
    from hf_robust.attacks.discrete import _token_scores

    model, tokenizer, objective, ids, positions, weight, allowed = retrieval
    config = TokenSearchConfig(n_grad=5, normalize_gradient=normalize, seed=3, batch_size=2)  # 3 gradient chunks
    expected = one_hot_token_scores(objective, ids, positions, weight, allowed, config)
    scores = _token_scores(objective, ids, positions, weight, allowed.nonzero().flatten(), config,
                           torch.Generator().manual_seed(config.seed))
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
    assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize("n_top, n_candidates, topk", [(4, 10, 12), (64, 128, 256), (0, 6, 9), (5, 5, 20)])
def test_coordinate_candidates_come_from_the_configured_ranks(monkeypatch, n_top, n_candidates, topk):
    """At each flipped position the candidates are exactly the top `n_top_candidates` of the top-k list (in rank
    order, the current token left out), then at most n_candidates - n_top_candidates distinct tokens of ranks
    n_top_candidates..topk-1, and nothing else."""
    from hf_robust.attacks import discrete

    generator = torch.Generator().manual_seed(0)
    vocab, seq = 400, 9
    weight = torch.randn(vocab, 4, generator=generator)
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[::7] = False
    ranked = allowed.nonzero().flatten()  # the fixed scores below rank allowed tokens by ascending id
    monkeypatch.setattr(discrete, "_token_scores",
                        lambda objective, ids, positions, *args: -torch.arange(vocab, dtype=torch.float32).expand(
                            positions.numel(), vocab))
    ids = torch.full((seq,), vocab - 1)  # not among the top-k: every rank is a candidate
    positions = torch.tensor([1, 2, 4, 5, 7])
    recording = Recording(Linear(weight, torch.randn(seq, 4, generator=generator)))
    config = TokenSearchConfig(n_iters=2, topk=topk, n_candidates=n_candidates, n_top_candidates=n_top, n_flip=4)
    # Every swap refused: the sequence stays `ids`, so each batch is one position's full candidate list.
    token_search(recording, ids, positions, weight, allowed, config, round_trip=lambda candidate: False)
    top, rest = ranked[:n_top].tolist(), set(ranked[n_top:topk].tolist())
    batches = recording.batches[1:]  # batch 0 scores the initial sequence
    assert len(batches) == 2 * config.n_flip
    sampled_ranks = set()
    for iteration in range(2):
        visited = []
        for batch in batches[iteration * config.n_flip : (iteration + 1) * config.n_flip]:
            varying = (batch != ids).any(dim=0).nonzero().flatten()
            assert varying.numel() == 1  # one position per batch
            visited.append(int(varying[0]))
            tokens = batch[:, varying[0]].tolist()
            assert tokens[:n_top] == top  # the best-ranked, in rank order
            sampled = tokens[n_top:]
            assert set(sampled) <= rest and len(sampled) == len(set(sampled)) <= n_candidates - n_top
            assert bool(sampled) == (n_candidates > n_top)
            sampled_ranks.update(ranked.tolist().index(token) for token in sampled)
        assert visited == sorted(visited) and set(visited) <= set(positions.tolist())  # distinct, in order
        assert len(set(visited)) == config.n_flip
    if n_candidates > n_top:  # the draws cover the whole range of ranks n_top..topk-1, not a part of it
        assert min(sampled_ranks) < n_top + (topk - n_top) // 4 and max(sampled_ranks) >= topk - (topk - n_top) // 4
