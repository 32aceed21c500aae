"""`TokenSearch`, the stepwise state behind `token_search`: its protocol, driven by hand."""

import pytest
import torch

from hf_robust.attacks import TokenSearchConfig, allowed_token_mask, token_search, tokenizer_round_trip
from hf_robust.attacks.discrete import _score, _token_scores
from hf_robust.attacks.token_search_state import Proposal, TokenSearch
from hf_robust.testing import tiny_tokenizer

from .objectives import BATCH, DistanceToStart, Linear, Recording


@pytest.fixture(scope="module")
def problem():
    tokenizer = tiny_tokenizer()
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(len(tokenizer), 8, generator=generator)
    ids = torch.tensor(tokenizer("the weather ! ! ! !", add_special_tokens=False).input_ids)
    positions = torch.arange(ids.numel() - 4, ids.numel())
    allowed = allowed_token_mask(tokenizer, num_embeddings=weight.shape[0])
    return Linear(weight, torch.randn(ids.numel(), 8, generator=generator)), weight, ids, positions, allowed


def test_driven_by_hand_equals_token_search(problem):
    objective, weight, ids, positions, allowed = problem
    config = TokenSearchConfig(n_iters=3, topk=16, n_candidates=8, n_top_candidates=4, n_flip=2, n_grad=3, seed=4)
    search = TokenSearch(ids, positions, weight, allowed, config)
    first = search.propose()
    assert isinstance(first, Proposal) and first.kind == "losses" and torch.equal(first.ids, ids.unsqueeze(0))
    assert search.propose() is first  # pending until answered
    with pytest.raises(RuntimeError, match="not finished"):
        search.result()
    kinds = []
    while not search.done:
        proposal = search.propose()
        kinds.append(proposal.kind)
        if proposal.kind == "losses":
            search.update(_score(objective, proposal.ids, config.batch_size))
        else:
            assert proposal.ids.shape == ids.shape
            search.update(_token_scores(objective, proposal.ids, search.positions, search.embedding_matrix,
                                        search.allowed_ids, search.config, search.generator, search.gram))
    # The initial scoring, then per iteration: the token scores and one "losses" request per flipped position.
    assert kinds == ["losses"] + ["token_scores", "losses", "losses"] * config.n_iters
    by_hand, reference = search.result(), token_search(objective, ids, positions, weight, allowed, config)
    assert torch.equal(by_hand.ids, reference.ids) and by_hand.history == reference.history
    assert torch.equal(by_hand.trajectory, reference.trajectory)
    with pytest.raises(RuntimeError, match="done"):
        search.propose()
    with pytest.raises(RuntimeError, match="done"):
        search.update(torch.zeros(1))


def test_validates_like_token_search(problem):
    objective, weight, ids, positions, allowed = problem
    with pytest.raises(ValueError, match="`positions`"):
        TokenSearch(ids, positions.flip(0).repeat(2), weight, allowed)
    with pytest.raises(TypeError, match="`config`"):
        TokenSearch(ids, positions, weight, allowed, {"n_iters": 1})
    with pytest.raises(TypeError, match="`objective`"):
        token_search(3, ids, positions, weight, allowed)


def test_an_error_in_a_callback_ends_the_search(problem):
    objective, weight, ids, positions, allowed = problem
    search = TokenSearch(ids, positions, weight, allowed, TokenSearchConfig(n_iters=3, topk=8, n_candidates=4,
                                                                             n_top_candidates=2, n_flip=1),
                         callback=lambda iteration, loss: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        while not search.done:
            proposal = search.propose()
            if proposal.kind == "losses":
                search.update(_score(objective, proposal.ids, 64))
            else:
                search.update(_token_scores(objective, proposal.ids, search.positions, search.embedding_matrix,
                                            search.allowed_ids, search.config, search.generator))
    assert search.done
    with pytest.raises(RuntimeError, match="not finished"):
        search.result()


# --------------------------------------------------------------------------------------------------------------------
# The 'batch' step (GCG)
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_replace", [1, 2])
def test_batch_candidates_spread_over_positions_with_n_replace_changes(gcg, n_replace):
    _, _, objective, ids, positions, weight, allowed = gcg
    recording = Recording(objective)
    config = TokenSearchConfig(**{**BATCH, "n_iters": 1, "n_replace": n_replace})
    token_search(recording, ids, positions, weight, allowed, config)
    candidates = torch.cat(recording.batches[1:])  # batch 0 is the initial sequence
    changed = candidates != ids
    assert (changed.sum(dim=1) <= n_replace).all() and (changed.sum(dim=1) >= 1).all()
    assert changed.any(dim=0).nonzero().flatten().numel() >= 2  # one iteration's batch covers several positions
    assert set(changed.any(dim=0).nonzero().flatten().tolist()) <= set(positions.tolist())
    assert allowed[candidates[changed]].all()
    assert candidates.unique(dim=0).shape[0] == candidates.shape[0]  # deduplicated


def test_batch_step_moves_to_a_worse_candidate_and_returns_the_best_ever(gcg):
    _, _, _, ids, positions, weight, allowed = gcg
    objective = DistanceToStart(weight, ids)
    result = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**BATCH))
    assert result.history[0] == 0.0 and result.history[1] > 0.0  # GCG moved to the batch's best, a worse sequence
    assert torch.equal(result.ids, ids) and result.loss == 0.0  # the best ever is returned
    buffered = token_search(objective, ids, positions, weight, allowed,
                            TokenSearchConfig(**{**BATCH, "buffer_size": 1}))
    assert buffered.history == [0.0] * (BATCH["n_iters"] + 1)  # a buffer of one only accepts improvements


def test_batch_step_drops_candidates_failing_the_round_trip_before_scoring(gcg):
    _, tokenizer, objective, ids, positions, weight, allowed = gcg
    recording = Recording(objective)
    rule = tokenizer_round_trip(tokenizer, positions)
    token_search(recording, ids, positions, weight, allowed, TokenSearchConfig(**BATCH), round_trip=rule)
    scored = torch.cat(recording.batches[1:])
    assert all(rule(row) for row in scored)
    recording.batches.clear()
    result = token_search(recording, ids, positions, weight, allowed, TokenSearchConfig(**BATCH),
                          round_trip=lambda row: False)
    assert len(recording.batches) == 1 and torch.equal(result.ids, ids)  # nothing survives: nothing scored
