"""Invariants of the discrete attack core: monotone loss, only `positions` change, filters, round trip, determinism."""

import pytest
import torch
import torch.nn.functional as F
from transformers import BertTokenizer

from hf_robust.attacks import (
    TokenFilter,
    TokenObjective,
    TokenSearchConfig,
    allowed_token_mask,
    token_search,
    tokenizer_round_trip,
)
from hf_robust.testing import tiny_causal_lm, tiny_sentence_transformer, tiny_tokenizer

FAST = dict(n_iters=4, topk=32, n_candidates=16, n_top_candidates=8, n_flip=3, batch_size=64)


class GCGFixedTarget:
    """Mean CE of `target` as the last len(target) tokens of the sequence (after prompt + suffix)."""

    def __init__(self, model, target):
        self.model = model
        self.target = target

    def loss_from_embeds(self, embeds):
        n = self.target.numel()
        logits = self.model(inputs_embeds=embeds, use_cache=False).logits[:, -n - 1 : -1].float()
        target = self.target.expand(embeds.shape[0], -1)
        return F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(1)

    def loss_from_ids(self, ids):
        return self.loss_from_embeds(self.model.get_input_embeddings()(ids))


class SimilarityObjective:
    """Negated cosine similarity of the mean-pooled BERT passage embedding to a fixed target direction."""

    def __init__(self, st_model, target):
        self.encoder = st_model[0].auto_model
        self.target = F.normalize(target, dim=-1)

    def loss_from_embeds(self, embeds):
        hidden = self.encoder(inputs_embeds=embeds).last_hidden_state
        return -F.cosine_similarity(hidden.mean(dim=1), self.target, dim=-1)

    def loss_from_ids(self, ids):
        hidden = self.encoder(input_ids=ids).last_hidden_state
        return -F.cosine_similarity(hidden.mean(dim=1), self.target, dim=-1)


@pytest.fixture(scope="module")
def gcg():
    model, tokenizer = tiny_causal_lm("llama", seed=0)
    model.eval()
    prompt = tokenizer("Tell me about France", add_special_tokens=False).input_ids
    suffix = tokenizer("! ! ! ! ! !", add_special_tokens=False).input_ids
    target = tokenizer(" the weather", add_special_tokens=False).input_ids
    ids = torch.tensor(prompt + suffix + target)
    positions = torch.arange(len(prompt), len(prompt) + len(suffix))
    weight = model.get_input_embeddings().weight
    allowed = allowed_token_mask(tokenizer, num_embeddings=weight.shape[0])
    objective = GCGFixedTarget(model, torch.tensor(target))
    return model, tokenizer, objective, ids, positions, weight, allowed


@pytest.fixture(scope="module")
def retrieval():
    st_model = tiny_sentence_transformer(seed=0)
    st_model.eval()
    tokenizer = st_model.tokenizer
    ids = torch.tensor(tokenizer("the weather is nice today ! ! ! ! ! ! ! !").input_ids)
    positions = (ids == tokenizer.convert_tokens_to_ids("!")).nonzero().flatten()  # the trigger; the rest stays
    assert positions.numel() == 8
    weight = st_model[0].auto_model.get_input_embeddings().weight
    allowed = allowed_token_mask(tokenizer, num_embeddings=weight.shape[0])
    target = st_model.encode(["yes thank you very much"], convert_to_tensor=True)[0]
    return st_model, tokenizer, SimilarityObjective(st_model, target), ids, positions, weight, allowed


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
    result = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**FAST, early_stop=1e6))
    assert result.iterations == 0
    result = token_search(objective, ids, positions, weight, allowed, TokenSearchConfig(**FAST, time_limit=1e-9))
    assert result.iterations == 0


def test_allowed_token_mask_byte_level():
    tokenizer = tiny_tokenizer()
    mask = allowed_token_mask(tokenizer, num_embeddings=len(tokenizer) + 8)
    assert mask.dtype == torch.bool and mask.shape == (len(tokenizer) + 8,)
    assert not mask[len(tokenizer):].any()
    assert not mask[tokenizer.all_special_ids].any()
    decoded = {i: tokenizer.decode([i]) for i in range(len(tokenizer))}
    non_ascii = [i for i, text in decoded.items() if not text.isascii()]
    non_printable = [i for i, text in decoded.items() if text.isascii() and not text.isprintable()]
    assert non_ascii and non_printable
    assert not mask[non_ascii].any() and not mask[non_printable].any()
    assert mask[tokenizer.convert_tokens_to_ids("Ġthe")]
    loose = allowed_token_mask(tokenizer, ascii_only=False, printable_only=False, exclude_special=False)
    assert loose.shape == (len(tokenizer),) and loose[non_ascii].any() and loose[tokenizer.all_special_ids].all()
    assert torch.equal(TokenFilter().mask(tokenizer, len(tokenizer) + 8), mask)


def test_allowed_token_mask_unused_and_bert(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]", "hello", "world", "##s", "é"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=False, strip_accents=False)
    mask = allowed_token_mask(tokenizer)
    allowed = {tokenizer.convert_ids_to_tokens(i) for i in mask.nonzero().flatten().tolist()}
    assert allowed == {"hello", "world", "##s"}
    assert "[unused0]" in {
        tokenizer.convert_ids_to_tokens(i) for i in allowed_token_mask(tokenizer, exclude_unused=False).nonzero()
        .flatten().tolist()
    }


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
        ({"progress": None}, "progress"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenSearchConfig(**kwargs)


def test_token_filter_and_mask_errors():
    with pytest.raises(ValueError, match="ascii_only"):
        TokenFilter(ascii_only="yes")
    with pytest.raises(TypeError, match="tokenizer"):
        allowed_token_mask(object())
    tokenizer = tiny_tokenizer()
    with pytest.raises(TypeError, match="printable_only"):
        allowed_token_mask(tokenizer, printable_only=None)
    with pytest.raises(ValueError, match="num_embeddings"):
        allowed_token_mask(tokenizer, num_embeddings=0)


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


# --------------------------------------------------------------------------------------------------------------------
# The 'batch' step (GCG)
# --------------------------------------------------------------------------------------------------------------------

BATCH = dict(n_iters=3, topk=8, n_candidates=24, n_top_candidates=0, step="batch", batch_size=64, seed=0)


class Recording:
    """Wraps an objective and keeps every candidate batch scored by `loss_from_ids`."""

    def __init__(self, objective):
        self.objective = objective
        self.batches = []

    def loss_from_embeds(self, embeds):
        return self.objective.loss_from_embeds(embeds)

    def loss_from_ids(self, ids):
        self.batches.append(ids.clone())
        return self.objective.loss_from_ids(ids)


class DistanceToStart:
    """Squared distance of the embeddings to those of the start: the start is the unique minimum (loss 0)."""

    def __init__(self, weight, start):
        self.weight = weight.detach()
        self.reference = self.weight[start]

    def loss_from_embeds(self, embeds):
        return ((embeds.float() - self.reference) ** 2).sum(dim=(1, 2))

    def loss_from_ids(self, ids):
        return self.loss_from_embeds(self.weight[ids])


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
