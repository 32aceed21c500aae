import math

import pytest
import torch

from hf_robust.defenses import Defense, NormFilter, PerplexityFilter
from hf_robust.retrieval.evaluate import encode_corpus, evaluate_poisoning
from hf_robust.testing import tiny_causal_lm, tiny_sentence_transformer

PASSAGES = [
    "the cat sat on the mat",
    "a b",
    "models learn from data and then they are tested on new examples that they have not seen",
    "hello world",
    "zq xv jj kk ll mm nn",
]


@pytest.fixture(scope="module")
def causal_lm():
    return tiny_causal_lm(seed=0)


def unpadded_perplexity(model, tokenizer, text):
    ids = torch.tensor([tokenizer(text).input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    return math.exp(nll.mean().item())


def test_perplexity_is_exp_mean_nll_of_each_unpadded_row(causal_lm):
    model, tokenizer = causal_lm
    model.train()  # perplexity runs in eval mode and restores the mode
    batched = PerplexityFilter(model, tokenizer, batch_size=5).perplexity(PASSAGES)
    assert model.training
    model.eval()
    expected = torch.tensor([unpadded_perplexity(model, tokenizer, text) for text in PASSAGES])
    assert batched.shape == (len(PASSAGES),) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, expected, rtol=1e-4, atol=0)
    # Padding (batch size, batch composition) does not change a passage's perplexity.
    single = PerplexityFilter(model, tokenizer, batch_size=1).perplexity(PASSAGES)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=0)
    assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize("cache", [True, False])
def test_perplexity_cache_scores_each_text_once(causal_lm, cache):
    model, tokenizer = causal_lm
    rows = []
    handle = model.register_forward_hook(lambda module, args, kwargs_output: rows.append(None))
    try:
        defense = PerplexityFilter(model, tokenizer, batch_size=len(PASSAGES), cache=cache)
        first = defense.perplexity(PASSAGES)
        again = defense.perplexity(PASSAGES[::-1] + PASSAGES[:1])
    finally:
        handle.remove()
    torch.testing.assert_close(again, torch.cat([first.flip(0), first[:1]]), rtol=1e-5, atol=0)
    assert len(rows) == (1 if cache else 3)  # without a cache: 6 texts in batches of 5


def test_perplexity_truncates_to_max_length(causal_lm):
    model, tokenizer = causal_lm
    text = PASSAGES[2]
    truncated = PerplexityFilter(model, tokenizer, max_length=4).perplexity([text])
    prefix = tokenizer.decode(tokenizer(text).input_ids[:4])
    assert tokenizer(prefix).input_ids == tokenizer(text).input_ids[:4]
    assert truncated.item() == pytest.approx(unpadded_perplexity(model, tokenizer, prefix), rel=1e-4)


def test_perplexity_filter_calibration_removes_about_the_quantile(causal_lm):
    from hf_robust.retrieval.data import default_corpus

    model, tokenizer = causal_lm
    corpus = default_corpus()[:200]
    defense = PerplexityFilter(model, tokenizer, clean_quantile=0.9, batch_size=32, max_length=32)
    assert defense.threshold is None
    defense.fit(corpus)
    perplexities = defense.perplexity(corpus)
    removed = (~defense.keep(corpus, None)).double().mean().item()
    assert abs(removed - 0.1) <= 1 / len(corpus) + 1e-9
    assert defense.threshold == pytest.approx(torch.quantile(perplexities.double(), 0.9).item(), rel=1e-5)
    # A fixed threshold is used as given.
    fixed = PerplexityFilter(model, tokenizer, threshold=float(perplexities.median()), max_length=32)
    assert torch.equal(fixed.keep(corpus, None), perplexities <= perplexities.median())


def test_norm_filter_calibration_and_keep():
    embeddings = torch.randn(1000, 8, generator=torch.Generator().manual_seed(0))
    defense = NormFilter(clean_quantile=0.95).fit([""] * 1000, embeddings)
    kept = defense.keep([""] * 1000, embeddings)
    assert abs((~kept).double().mean().item() - 0.05) <= 1 / 1000 + 1e-9
    assert torch.equal(kept, embeddings.norm(dim=-1) <= defense.threshold)
    everything = NormFilter(clean_quantile=1.0).fit([""] * 1000, embeddings)
    assert everything.keep([""] * 1000, embeddings).all()


def test_norm_filter_in_poisoning_evaluation_on_a_tiny_dot_model():
    model = tiny_sentence_transformer(similarity="dot", seed=1)
    corpus = [f"passage {i} on the topic of word {word}" for i, word in enumerate("abcdefghijklmnopqrst")]
    embeddings = encode_corpus(model, corpus)
    adv = ["the the the the the", "passage on words"]
    defense = NormFilter(clean_quantile=0.9)
    report = evaluate_poisoning(model, corpus, ["a query about words"], adv, corpus_embeddings=embeddings,
                                defense=defense)
    norms = embeddings.norm(dim=-1)
    assert defense.threshold == pytest.approx(torch.quantile(norms.double(), 0.9).item(), rel=1e-5)
    assert report.defense_name == "norm_filter"
    assert report.clean_removed_fraction == pytest.approx((norms > defense.threshold).double().mean().item())
    adv_norms = encode_corpus(model, adv).norm(dim=-1)
    assert report.adv_removed == (adv_norms > defense.threshold).tolist()
    assert report.n_corpus == int((norms <= defense.threshold).sum())


def test_defenses_follow_the_protocol(causal_lm):
    model, tokenizer = causal_lm
    assert isinstance(NormFilter(), Defense)
    assert isinstance(PerplexityFilter(model, tokenizer), Defense)
    assert "threshold=None" in repr(NormFilter())


def test_bad_inputs(causal_lm):
    model, tokenizer = causal_lm
    for quantile in [0, 0.0, 1.5, -0.1, True, "0.9", None]:
        with pytest.raises(ValueError, match="`clean_quantile` must be"):
            NormFilter(clean_quantile=quantile)
        with pytest.raises(ValueError, match="`clean_quantile` must be"):
            PerplexityFilter(model, tokenizer, clean_quantile=quantile)
    for threshold in ["1", True, [1.0]]:
        with pytest.raises(ValueError, match="`threshold` must be None or a number"):
            NormFilter(threshold=threshold)
    with pytest.raises(TypeError, match="`model` must be a causal LM"):
        PerplexityFilter("gpt2", tokenizer)
    with pytest.raises(TypeError, match="`tokenizer` must be a tokenizer"):
        PerplexityFilter(model, None)
    for name, value in [("batch_size", 0), ("max_length", 0), ("batch_size", 1.5)]:
        with pytest.raises(ValueError, match=f"`{name}` must be an integer >= 1"):
            PerplexityFilter(model, tokenizer, **{name: value})
    with pytest.raises(ValueError, match="`cache` must be True or False"):
        PerplexityFilter(model, tokenizer, cache=1)
    with pytest.raises(ValueError, match="`max_length` must be >= 2"):
        PerplexityFilter(model, tokenizer, max_length=1)
    defense = PerplexityFilter(model, tokenizer)
    with pytest.raises(ValueError, match="`passages` must not be empty"):
        defense.perplexity([])
    with pytest.raises(TypeError, match="`passages` must be a list of strings"):
        defense.perplexity("a passage")
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        defense.perplexity(["fine passage here", ""])
    with pytest.raises(RuntimeError, match="no threshold"):
        defense.keep(PASSAGES, None)
    with pytest.raises(RuntimeError, match="no threshold"):
        NormFilter().keep(PASSAGES, torch.ones(len(PASSAGES), 4))
    for embeddings in [None, torch.ones(4, 4), torch.ones(len(PASSAGES))]:
        with pytest.raises(ValueError, match="`embeddings` must be a tensor of shape"):
            NormFilter(threshold=1.0).keep(PASSAGES, embeddings)
        with pytest.raises(ValueError, match="`embeddings` must be a tensor of shape"):
            NormFilter().fit(PASSAGES, embeddings)


def test_threshold_filter_base_is_abstract():
    from hf_robust.defenses import _ThresholdFilter

    with pytest.raises(TypeError, match="abstract"):
        _ThresholdFilter()
