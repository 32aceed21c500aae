"""Searches in lockstep: the same searches as `token_search` one by one, one batched call per request kind and
round."""

import pytest
import torch

from hf_robust.attacks import TokenSearchConfig, allowed_token_mask, token_search
from hf_robust.attacks.lockstep import JointObjective, lockstep_token_search
from hf_robust.attacks.token_search_state import TokenSearch
from hf_robust.testing import tiny_tokenizer

from .objectives import Linear  # the cheap exact objective: rows do not interact

HIDDEN = 8
SMALL = dict(n_iters=5, topk=16, n_candidates=8, n_top_candidates=4, n_flip=3)


class JointLinear:
    """The `JointObjective` of several `Linear`s; records (kind, rows) of every call."""

    def __init__(self, objectives):
        self.objectives, self.calls = objectives, []

    def _losses(self, embeds, problems):
        losses = embeds.new_zeros(embeds.shape[0])
        for problem in problems.unique().tolist():
            rows = (problems == problem).nonzero().flatten()
            losses = losses.index_put((rows,), self.objectives[problem].loss_from_embeds(embeds[rows]))
        return losses

    def loss_from_embeds(self, embeds, problems):
        self.calls.append(("gradient", embeds.shape[0]))
        return self._losses(embeds, problems)

    def loss_from_ids(self, ids, problems):
        self.calls.append(("losses", ids.shape[0]))
        return self._losses(self.objectives[0].weight[ids], problems)


class Counting:
    """Wraps a `Linear` for `token_search`; records (kind, rows) of every call."""

    def __init__(self, objective):
        self.objective, self.calls = objective, []

    def loss_from_embeds(self, embeds):
        self.calls.append(("gradient", embeds.shape[0]))
        return self.objective.loss_from_embeds(embeds)

    def loss_from_ids(self, ids):
        self.calls.append(("losses", ids.shape[0]))
        return self.objective.loss_from_ids(ids)


@pytest.fixture(scope="module")
def problem():
    tokenizer = tiny_tokenizer()
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(len(tokenizer), HIDDEN, generator=generator)
    ids = torch.tensor(tokenizer("the weather is nice today ! ! ! ! ! !", add_special_tokens=False).input_ids)
    positions = torch.arange(ids.numel() - 6, ids.numel())
    allowed = allowed_token_mask(tokenizer, num_embeddings=weight.shape[0])
    objectives = [Linear(weight, torch.randn(ids.numel(), HIDDEN, generator=generator) / 10) for _ in range(3)]
    return tokenizer, weight, ids, positions, allowed, objectives


def run_both(problem, configs, extras=None):
    """The searches of `configs` (one per objective) one by one with `token_search`, then in lockstep; `extras`
    maps a search's index to its keyword arguments (tokenizer, round_trip, stop...)."""
    tokenizer, weight, ids, positions, allowed, objectives = problem
    extras = [(extras or {}).get(index, {}) for index in range(len(configs))]
    counted = [Counting(objective) for objective in objectives]
    alone = [token_search(objective, ids, positions, weight, allowed, config, **extra)
             for objective, config, extra in zip(counted, configs, extras)]
    joint = JointLinear(objectives[: len(configs)])
    searches = [TokenSearch(ids, positions, weight, allowed, config, **extra)
                for config, extra in zip(configs, extras)]
    together = lockstep_token_search(joint, searches)
    return alone, together, [objective.calls for objective in counted], joint.calls


def assert_same(alone, together):
    for one, other in zip(alone, together, strict=True):
        assert torch.equal(one.ids, other.ids) and torch.equal(one.trajectory, other.trajectory)
        assert one.history == other.history  # exactly: rows do not interact and the float ops are the same
        assert (one.iterations, one.stop_reason, one.loss) == (other.iterations, other.stop_reason, other.loss)
        assert len(other.iteration_seconds) == other.iterations


@pytest.mark.parametrize("settings", [
    dict(SMALL, n_grad=3, batch_size=5),  # gradient rows of several searches share a chunk
    dict(SMALL, step="batch", n_replace=2),
    dict(SMALL, step="batch", buffer_size=2, n_grad=2),
    dict(SMALL, n_flip=100),
], ids=["coordinate", "batch", "buffer", "all_positions"])
def test_lockstep_equals_one_search_after_another(problem, settings):
    configs = [TokenSearchConfig(**settings, seed=seed) for seed in (0, 1, 2)]
    tokenizer = problem[0]
    # A round-trip rule on one search only, a custom one on another: each search keeps its own rules.
    alone, together, _, _ = run_both(problem, configs, {0: {"tokenizer": tokenizer},
                                                        1: {"round_trip": lambda ids: int(ids[-1]) % 2 == 0}})
    assert_same(alone, together)
    assert alone[0].history != alone[1].history  # the searches are distinct problems with distinct seeds


def test_stopped_searches_drop_out_while_the_others_go_on(problem):
    configs = [TokenSearchConfig(**{**SMALL, "n_iters": 8}, seed=0),
               TokenSearchConfig(**{**SMALL, "n_iters": 8}, seed=1, patience=1, min_delta=1e9),
               TokenSearchConfig(**{**SMALL, "n_iters": 8}, seed=2)]
    seen = []  # shared by the run alone and the run in lockstep: each stops at its own 3rd iteration
    stop = {"stop": lambda best: seen.append(1) or len(seen) % 3 == 0}
    alone, together, alone_calls, joint_calls = run_both(problem, configs, {2: stop})
    assert_same(alone, together)
    assert [result.stop_reason for result in together] == ["n_iters", "patience", "stop"]
    assert [result.iterations for result in together] == [8, 1, 3]
    assert_one_call_per_kind_and_round(alone_calls, joint_calls, batch_size=configs[0].batch_size)


def expected_joint_calls(alone_calls, batch_size):
    """Round r of the lockstep answers request r of every search still running: the rows of all its "losses"
    requests in ceil(total / batch_size) calls, then those of its "gradient" requests likewise."""
    expected = []
    for round_index in range(max(len(calls) for calls in alone_calls)):
        for kind in ("losses", "gradient"):
            total = sum(calls[round_index][1] for calls in alone_calls
                        if round_index < len(calls) and calls[round_index][0] == kind)
            expected += [(kind, min(batch_size, total - start)) for start in range(0, total, batch_size)]
    return expected


def assert_one_call_per_kind_and_round(alone_calls, joint_calls, batch_size):
    assert all(rows <= batch_size for calls in alone_calls for _, rows in calls)  # alone: one call per request
    assert joint_calls == expected_joint_calls(alone_calls, batch_size)
    assert len(joint_calls) < sum(len(calls) for calls in alone_calls)


def test_one_scoring_call_per_round_chunked_by_batch_size(problem):
    # 3 searches x up to 8 candidates per flipped position, batch_size 10: ceil(total / 10) calls per round where
    # one search at a time makes one call per search; 3 x 3 gradient rows likewise.
    configs = [TokenSearchConfig(**SMALL, n_grad=3, batch_size=10, seed=seed) for seed in (0, 1, 2)]
    alone, together, alone_calls, joint_calls = run_both(problem, configs)
    assert_same(alone, together)
    assert any(rows == 10 for kind, rows in joint_calls if kind == "losses")  # chunks really are cut
    assert_one_call_per_kind_and_round(alone_calls, joint_calls, batch_size=10)
    # An explicit batch_size overrides the configs' (here: every round's rows of a kind in one call).
    tokenizer, weight, ids, positions, allowed, objectives = problem
    joint = JointLinear(objectives)
    searches = [TokenSearch(ids, positions, weight, allowed, config) for config in configs]
    assert_same(alone, lockstep_token_search(joint, searches, batch_size=1000))
    assert joint.calls == expected_joint_calls(alone_calls, 1000)


def test_lockstep_errors(problem):
    tokenizer, weight, ids, positions, allowed, objectives = problem
    joint = JointLinear(objectives)

    def search(**overrides):
        arguments = dict(initial_ids=ids, positions=positions, embedding_matrix=weight, allowed=allowed,
                         config=TokenSearchConfig(**SMALL))
        return TokenSearch(**{**arguments, **overrides})

    assert isinstance(joint, JointObjective)
    for objective in (objectives[0].loss_from_embeds, objectives[0]):  # one-search objectives take no `problems`
        with pytest.raises(TypeError, match="`objective`"):
            lockstep_token_search(objective, [search()])
    for searches in ([], search(), [search(), "search"]):
        with pytest.raises(TypeError, match="`searches`"):
            lockstep_token_search(joint, searches)
    same = search()
    with pytest.raises(ValueError, match="repeat"):
        lockstep_token_search(joint, [same, same])
    with pytest.raises(ValueError, match=r"`searches\[1\]`.*embedding matrix"):
        lockstep_token_search(joint, [search(), search(embedding_matrix=weight.clone())])
    with pytest.raises(ValueError, match=r"`searches\[1\]`.*length"):
        lockstep_token_search(joint, [search(), search(initial_ids=ids[1:], positions=positions - 1)])
    for batch_size in (0, 2.0, True):
        with pytest.raises(ValueError, match="`batch_size`"):
            lockstep_token_search(joint, [search()], batch_size=batch_size)
    with pytest.raises(ValueError, match="loss_from_ids"):
        lockstep_token_search(WrongShape(), [search()])


class WrongShape:
    def loss_from_embeds(self, embeds, problems):
        return embeds.sum()

    def loss_from_ids(self, ids, problems):
        return ids.float().sum()
