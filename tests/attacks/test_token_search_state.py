"""`TokenSearch`, the stepwise state behind `token_search`: its protocol, driven by hand."""

import pytest
import torch

from hf_robust.attacks import TokenSearchConfig, allowed_token_mask, token_search
from hf_robust.attacks.discrete import _score, _token_scores
from hf_robust.attacks.token_search_state import Proposal, TokenSearch
from hf_robust.testing import tiny_tokenizer

from .test_discrete import Linear  # the cheap exact objective: rows do not interact


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
