"""Baselines with GASLITE's API shape: HotFlip (Zhong et al.), query stuffing and info-only, budgets and errors."""

import pytest
import torch

from hf_robust.retrieval import GasliteResult, HotflipConfig, hotflip_poison, info_only, query_stuffing
from hf_robust.retrieval.gaslite import encoded_similarity
from hf_robust.testing import tiny_sentence_transformer

QUERIES = ["how is the weather today", "is it going to rain tomorrow", "what a nice sunny day", "the weather is cold"]
INFO = "Buy cheap shoes at our store"
FAST = HotflipConfig(n_iters=6, n_candidates=20, progress=False)


@pytest.fixture(scope="module")
def model():
    return tiny_sentence_transformer(seed=0, prompts={"query": "query: ", "document": "passage: "})


def test_hotflip_passage(model):
    result = hotflip_poison(model, QUERIES, INFO, FAST)
    assert isinstance(result, GasliteResult)
    # Zhong's 50-token passage: the info's tokens, then the trigger fills the rest.
    info_tokens = len(model.tokenizer(INFO + ".", add_special_tokens=False).input_ids)
    assert result.trigger_ids.shape == (50 - info_tokens,) and result.trigger_positions.shape == (50 - info_tokens,)
    assert len(model.tokenizer(result.passage, add_special_tokens=False).input_ids) == 50
    assert model.tokenizer("passage: " + result.passage).input_ids == result.ids.tolist()
    assert torch.equal(result.ids[result.trigger_positions], result.trigger_ids)
    assert result.passage.startswith(INFO + ". ")
    history = result.objective_history
    assert all(b >= a for a, b in zip(history, history[1:])) and result.objective == history[-1] > history[0]
    assert result.iterations == FAST.n_iters
    assert float(encoded_similarity(model, [result.passage], QUERIES)[0]) == pytest.approx(result.objective, abs=1e-5)
    # One position per iteration: each step changes at most one trigger token.
    assert (result.trigger_ids != model.tokenizer.convert_tokens_to_ids("!")).sum() <= FAST.n_iters


def test_hotflip_without_info_and_mapping(model):
    result = hotflip_poison(model, QUERIES, "", HotflipConfig(n_iters=2, passage_len=10, include_info=False,
                                                             progress=False))
    assert "shoes" not in result.passage and result.passage == result.trigger and result.trigger_ids.shape == (10,)
    search = HotflipConfig().search_config()
    assert (search.n_iters, search.n_flip, search.topk, search.n_candidates, search.n_top_candidates, search.n_grad,
            search.normalize_gradient) == (5000, 1, 100, 100, 100, 1, False)


def test_hotflip_raw_ids_search_without_filter_or_round_trip(model, monkeypatch):
    from hf_robust.attacks import allowed_token_mask
    from hf_robust.retrieval import gaslite

    calls = []

    def recorded(*args, **kwargs):
        calls.append((args[4], kwargs["round_trip"]))
        return search(*args, **kwargs)

    search = gaslite.token_search
    monkeypatch.setattr(gaslite, "token_search", recorded)
    raw = hotflip_poison(model, QUERIES, INFO, HotflipConfig(n_iters=3, n_candidates=20, text_tokens=False,
                                                             progress=False))
    text = hotflip_poison(model, QUERIES, INFO, FAST)
    vocabulary = model[0].auto_model.get_input_embeddings().num_embeddings
    loose = allowed_token_mask(model.tokenizer, num_embeddings=vocabulary, ascii_only=False, printable_only=False,
                               exclude_unused=False)
    assert torch.equal(calls[0][0], loose) and calls[0][1] is None  # Zhong: any non-special id, no round trip
    assert torch.equal(calls[1][0], allowed_token_mask(model.tokenizer, num_embeddings=vocabulary))
    assert callable(calls[1][1])
    assert not loose[model.tokenizer.all_special_ids].any()
    # The raw-ids passage is the decoded searched trigger after the info; its objective is that of the searched ids.
    assert raw.passage == INFO + ". " + model.tokenizer.decode(raw.trigger_ids.tolist()).strip()
    history = raw.objective_history
    assert all(b >= a for a, b in zip(history, history[1:])) and raw.objective == history[-1]
    assert text.iterations == FAST.n_iters
    with pytest.raises(ValueError, match="text_tokens"):
        HotflipConfig(text_tokens="no")


def test_query_stuffing_budget(model):
    tokenizer = model.tokenizer
    result = query_stuffing(model, QUERIES, INFO, trigger_len=8)
    stuffed = tokenizer(" ".join(QUERIES), add_special_tokens=False).input_ids[:8]
    assert result.trigger_ids.tolist() == stuffed
    assert result.passage.startswith(INFO + ". how is the weather")
    info_tokens = len(tokenizer(INFO + ".", add_special_tokens=False).input_ids)
    assert len(tokenizer(result.passage, add_special_tokens=False).input_ids) == info_tokens + 8
    assert result.objective == pytest.approx(float(encoded_similarity(model, [result.passage], QUERIES)[0]))
    assert result.objective_history == [result.objective] and result.iterations == 0
    short = query_stuffing(model, QUERIES[:1], INFO, trigger_len=100)  # fewer query tokens than the budget
    assert short.passage == INFO + ". " + QUERIES[0]


def test_info_only(model):
    result = info_only(model, QUERIES, INFO)
    assert result.passage == INFO + "." and result.trigger_ids.numel() == 0 and result.iterations == 0
    assert result.objective == pytest.approx(float(encoded_similarity(model, [INFO + "."], QUERIES)[0]), abs=1e-6)
    assert info_only(model, QUERIES, "Shoes!").passage == "Shoes!"
    embeddings = model.encode(QUERIES, prompt_name="query", convert_to_tensor=True)
    assert info_only(model, embeddings, INFO).objective == pytest.approx(result.objective, abs=1e-6)


def test_baseline_errors(model):
    for kwargs, match in [
        ({"passage_len": 0}, "passage_len"), ({"n_iters": -1}, "n_iters"), ({"n_candidates": 0}, "n_candidates"),
        ({"seed": -1}, "seed"), ({"batch_size": 0}, "batch_size"), ({"include_info": 1}, "include_info"),
        ({"progress": None}, "progress"), ({"trigger_init": ""}, "trigger_init"), ({"time_limit": -1}, "time_limit"),
        ({"document_prompt": 1}, "document_prompt"), ({"query_prompt": b"q"}, "query_prompt"),
    ]:
        with pytest.raises(ValueError, match=match):
            HotflipConfig(**kwargs)
    with pytest.raises(TypeError, match="config"):
        hotflip_poison(model, QUERIES, INFO, {"n_iters": 1})
    with pytest.raises(ValueError, match="info"):
        hotflip_poison(model, QUERIES, " ", FAST)
    with pytest.raises(ValueError, match=r"`info` has 23 tokens, no room for a trigger in the `passage_len`=23-token"):
        hotflip_poison(model, QUERIES, INFO, HotflipConfig(passage_len=23, progress=False))
    with pytest.raises(ValueError, match="queries"):
        hotflip_poison(model, [], INFO, FAST)
    with pytest.raises(TypeError, match="model"):
        hotflip_poison(model[0], QUERIES, INFO, FAST)
    with pytest.raises(TypeError, match="Tensor"):
        query_stuffing(model, model.encode(QUERIES, convert_to_tensor=True), INFO)
    with pytest.raises(ValueError, match="trigger_len"):
        query_stuffing(model, QUERIES, INFO, trigger_len=0)
    with pytest.raises(ValueError, match="queries"):
        query_stuffing(model, [], INFO)
    with pytest.raises(ValueError, match="info"):
        query_stuffing(model, QUERIES, "")
    with pytest.raises(TypeError, match="info"):
        info_only(model, QUERIES, None)
    with pytest.raises(ValueError, match="queries"):
        info_only(model, [], INFO)
    with pytest.raises(TypeError, match="model"):
        info_only("model", QUERIES, INFO)
    with pytest.raises(TypeError, match="query_prompt"):
        query_stuffing(model, QUERIES, INFO, query_prompt=1)
    with pytest.raises(TypeError, match="document_prompt"):
        info_only(model, QUERIES, INFO, document_prompt=1)


def test_baselines_use_the_prompt_overrides(model):
    """With E5-style overrides every baseline's `objective` is the similarity of the prompted texts, and HotFlip's
    optimised ids start with the document prompt."""
    from hf_robust.retrieval.objective import centroid_similarity, query_centroid

    prompts = {"document_prompt": "passage: ", "query_prompt": "query: "}
    centroid = query_centroid(model.encode(QUERIES, prompt="query: ", convert_to_tensor=True))
    hotflip = hotflip_poison(model, QUERIES, INFO, HotflipConfig(n_iters=2, n_candidates=8, progress=False,
                                                                 **prompts))
    assert hotflip.ids.tolist() == model.tokenizer("passage: " + hotflip.passage).input_ids
    for result in (hotflip, query_stuffing(model, QUERIES, INFO, 8, **prompts), info_only(model, QUERIES, INFO,
                                                                                           **prompts)):
        embedding = model.encode([result.passage], prompt="passage: ", convert_to_tensor=True)
        assert float(centroid_similarity(embedding, centroid, "cosine")[0]) == pytest.approx(result.objective,
                                                                                            abs=1e-5)
