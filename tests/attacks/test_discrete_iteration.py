"""The rules of one GASLITE iteration of the discrete attack core, pinned exactly: the gradient rows, the
per-position normalised token scores, the Gram form of the gradient and the coordinate candidates' ranks."""

import pytest
import torch
import torch.nn.functional as F

from hf_robust.attacks import TokenSearchConfig, token_search

from .objectives import Linear, Recording


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
