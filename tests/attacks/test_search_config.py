"""Tests for hf_robust.attacks.search_config: the objective protocol, and bad settings named."""

import pytest

from hf_robust.attacks import TokenObjective, TokenSearchConfig


def test_objective_protocol():
    class Both:
        def loss_from_embeds(self, embeds):
            return embeds.sum((1, 2))

        def loss_from_ids(self, ids):
            return ids.float().sum(1)

    assert isinstance(Both(), TokenObjective)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_iters": -1}, "n_iters"),
        ({"topk": 0}, "topk"),
        ({"n_candidates": 0}, "n_candidates"),
        ({"n_top_candidates": -1}, "n_top_candidates"),
        ({"n_top_candidates": 65, "n_candidates": 64}, "n_top_candidates"),
        ({"n_top_candidates": 10, "topk": 5}, "n_top_candidates"),
        ({"n_flip": 0}, "n_flip"),
        ({"n_grad": 0}, "n_grad"),
        ({"normalize_gradient": 1}, "normalize_gradient"),
        ({"time_limit": 0}, "time_limit"),
        ({"time_limit": float("inf")}, "time_limit"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"early_stop": float("nan")}, "early_stop"),
        ({"early_stop": "0"}, "early_stop"),
        ({"patience": -1}, "patience"),
        ({"patience": 1.5}, "patience"),
        ({"patience": True}, "patience"),
        ({"patience": None}, "patience"),
        ({"min_delta": -0.1}, "min_delta"),
        ({"min_delta": float("nan")}, "min_delta"),
        ({"min_delta": float("inf")}, "min_delta"),
        ({"min_delta": "0"}, "min_delta"),
        ({"min_delta": True}, "min_delta"),
        ({"progress": None}, "progress"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenSearchConfig(**kwargs)
