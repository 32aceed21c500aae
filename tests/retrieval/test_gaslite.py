"""GASLITE on tiny sentence-transformers: monotone objective, valid passages, prompts, k-means, determinism, errors."""

from dataclasses import replace

import pytest
import torch

from hf_robust.attacks import allowed_token_mask
from hf_robust.retrieval import (
    GasliteConfig,
    GasliteResult,
    craft_poison_passages,
    document_prompt,
    document_prompt_name,
    gaslite_attack,
    query_prompt,
    query_prompt_name,
)
from hf_robust.retrieval.gaslite import encoded_similarity, target_embeddings
from hf_robust.testing import tiny_sentence_transformer

QUERIES = [
    "how is the weather today", "is it going to rain tomorrow", "what a nice sunny day", "the weather is cold",
    "where can i buy a new car", "how much does a used car cost", "tell me about the capital of france",
]
INFO = "Buy cheap shoes at our store"
# patience=0: exactly n_iters iterations, whatever the early-stop defaults (test_early_stop_patience tests those).
FAST = GasliteConfig(trigger_len=6, n_iters=4, n_grad=4, topk=32, n_candidates=16, n_flip=3, patience=0,
                     progress=False)
MODELS = {
    "cosine": {},
    "dot": {"similarity": "dot"},
    "prompts": {"prompts": {"query": "query: ", "document": "passage: "}},
    "default_prompt": {"prompts": {"doc": "doc: "}},  # default_prompt_name = "doc": encode() applies it to all texts
}


def with_default_prompt(model):
    model.default_prompt_name = "doc"
    return model


@pytest.fixture(scope="module")
def models():
    models = {name: tiny_sentence_transformer(seed=0, **kwargs) for name, kwargs in MODELS.items()}
    with_default_prompt(models["default_prompt"])
    return models


def prompt_of(model, config=None):
    return document_prompt(model, config.document_prompt if config else None)


def assert_valid(model, result, config, queries=QUERIES):
    tokenizer = model.tokenizer
    history = result.objective_history
    assert len(history) == result.iterations + 1 == len(result.passage_history)
    assert len(result.iteration_seconds) == result.iterations and all(s > 0 for s in result.iteration_seconds)
    assert sum(result.iteration_seconds) <= result.seconds
    assert result.stop_reason in ("n_iters", "patience", "time_limit")
    assert all(b >= a for a, b in zip(history, history[1:])), history
    assert result.objective == history[-1] == max(history)
    assert result.passage_history[-1] == result.passage
    # The passage alone (through model.encode with the document prompt) reproduces the tracked objective, and so do
    # the intermediate passages their own.
    prompts = {"document_prompt": config.document_prompt, "query_prompt": config.query_prompt}
    encoded = encoded_similarity(model, result.passage_history, queries, **prompts)
    torch.testing.assert_close(encoded, torch.tensor(history), rtol=0, atol=1e-5)
    # Round trip: the text gives exactly the optimised ids, with L trigger tokens where the search put them.
    assert tokenizer(prompt_of(model, config) + result.passage).input_ids == result.ids.tolist()
    assert result.trigger_ids.shape == (config.trigger_len,)
    assert torch.equal(result.ids[result.trigger_positions], result.trigger_ids)
    allowed = allowed_token_mask(tokenizer, num_embeddings=model[0].auto_model.get_input_embeddings().num_embeddings)
    assert allowed[result.trigger_ids].all()
    assert isinstance(result.passage, str) and result.seconds > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_attack_invariants(models, name):
    model = models[name]
    training = model.training
    result = gaslite_attack(model, QUERIES, INFO, FAST)
    assert isinstance(result, GasliteResult)
    assert_valid(model, result, FAST)
    assert result.iterations == FAST.n_iters
    assert result.objective > result.objective_history[0]  # the search improved on the "!" trigger
    assert result.passage.startswith(INFO + ". ")  # info verbatim, full stop added, trigger after it
    assert model.training == training and all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize("position", ["prefix", "middle", "trigger_only"])
def test_trigger_positions(models, position):
    model = models["prompts"]
    config = replace(FAST, trigger_position=position)
    result = gaslite_attack(model, QUERIES, INFO, config)
    assert_valid(model, result, config)
    if position == "prefix":
        assert result.passage.endswith(" " + INFO + ".")
    elif position == "middle":
        assert result.passage.startswith("Buy cheap shoes ") and result.passage.endswith(" at our store.")
    else:
        assert "shoes" not in result.passage and result.passage == result.trigger


def test_tensor_queries_and_determinism(models):
    model = models["cosine"]
    result = gaslite_attack(model, QUERIES, INFO, FAST)
    embeddings = model.encode(QUERIES, convert_to_tensor=True)
    from_tensor = gaslite_attack(model, embeddings, INFO, FAST)
    assert from_tensor.passage == result.passage and from_tensor.objective_history == result.objective_history
    # A single (dim,) target is the centroid direction itself.
    single = gaslite_attack(model, embeddings[0], INFO, FAST)
    assert_valid(model, single, FAST, queries=QUERIES[:1])
    # A different seed searches differently (the passages may coincide, the histories do not here).
    other = gaslite_attack(model, QUERIES, INFO, replace(FAST, seed=1))
    assert other.objective_history != result.objective_history


def test_trigger_init_string_and_time_limit(models):
    model = models["cosine"]
    tokenizer = model.tokenizer
    result = gaslite_attack(model, QUERIES, INFO, replace(FAST, trigger_init="the weather", n_iters=0))
    expected = tokenizer("the weather ! ! ! !", add_special_tokens=False).input_ids
    assert result.trigger_ids.tolist() == expected and result.iterations == 0
    assert result.passage.startswith(INFO + ". the weather") and result.trigger.startswith("the weather")
    assert tokenizer(result.passage, add_special_tokens=False).input_ids[-6:] == expected
    result = gaslite_attack(model, QUERIES, INFO, replace(FAST, time_limit=1e-9))
    assert result.iterations == 0 and result.objective_history == [result.objective]


def test_progress_bar_shows_the_similarity(models, capsys):
    capsys.readouterr()
    gaslite_attack(models["cosine"], QUERIES, INFO, replace(FAST, n_iters=2, progress=True))
    err = capsys.readouterr().err
    assert "GASLITE" in err and "similarity=" in err and "loss=" not in err


def test_prompt_names():
    assert (document_prompt_name(tiny_sentence_transformer()), query_prompt_name(tiny_sentence_transformer())) == (
        None, None)
    e5 = tiny_sentence_transformer(prompts={"query": "query: ", "passage": "passage: "})
    assert (document_prompt_name(e5), query_prompt_name(e5)) == ("passage", "query")
    both = tiny_sentence_transformer(prompts={"document": "doc: ", "passage": "passage: "})
    assert (document_prompt_name(both), query_prompt_name(both)) == ("document", None)


def test_prompt_strings_follow_model_encode():
    plain = tiny_sentence_transformer()
    assert (document_prompt(plain), query_prompt(plain)) == ("", "")
    e5 = tiny_sentence_transformer(prompts={"query": "query: ", "passage": "passage: "})
    assert (document_prompt(e5), query_prompt(e5)) == ("passage: ", "query: ")
    default = with_default_prompt(tiny_sentence_transformer(prompts={"doc": "doc: "}))
    assert (document_prompt_name(default), query_prompt_name(default)) == (None, None)
    assert (document_prompt(default), query_prompt(default)) == ("doc: ", "doc: ")  # encode(prompt_name=None)
    assert (document_prompt(default, ""), query_prompt(plain, "query: ")) == ("", "query: ")  # overrides
    for text_prompt, model in ((document_prompt(default), default), (document_prompt(e5), e5)):
        torch.testing.assert_close(model.encode(["some text"], prompt=text_prompt),
                                   model.encode(["some text"], prompt_name=document_prompt_name(model)))
    with pytest.raises(TypeError, match="document_prompt"):
        document_prompt(plain, 1)
    with pytest.raises(TypeError, match="query_prompt"):
        query_prompt(plain, b"query: ")


def test_default_prompt_name_tracked_objective_equals_the_re_encoded_similarity(models):
    """A model whose `default_prompt_name` prompt `encode` applies to every text: the attack optimises the embedding
    that plain `model.encode(passage)` gives, so an index built with encode reproduces the tracked objective."""
    from hf_robust.retrieval.objective import centroid_similarity, query_centroid

    model = models["default_prompt"]
    result = gaslite_attack(model, QUERIES, INFO, FAST)
    assert_valid(model, result, FAST)
    # The default prompt is in the optimised sequence.
    assert result.ids.tolist() == model.tokenizer("doc: " + result.passage).input_ids
    assert result.ids.tolist() != model.tokenizer(result.passage).input_ids
    centroid = query_centroid(model.encode(QUERIES, convert_to_tensor=True))
    indexed = model.encode([result.passage], convert_to_tensor=True)  # as a retriever indexes it
    assert float(centroid_similarity(indexed, centroid, "cosine")[0]) == pytest.approx(result.objective, abs=1e-5)


def test_prompt_overrides_for_a_checkpoint_without_prompts(models):
    from hf_robust.retrieval import evaluate_poisoning
    from hf_robust.retrieval.objective import centroid_similarity, query_centroid

    model = models["cosine"]
    config = replace(FAST, document_prompt="passage: ", query_prompt="query: ")
    result = gaslite_attack(model, QUERIES, INFO, config)
    assert_valid(model, result, config)
    centroid = query_centroid(model.encode(QUERIES, prompt="query: ", convert_to_tensor=True))
    indexed = model.encode([result.passage], prompt="passage: ", convert_to_tensor=True)
    assert float(centroid_similarity(indexed, centroid, "cosine")[0]) == pytest.approx(result.objective, abs=1e-5)
    unprompted = model.encode([result.passage], convert_to_tensor=True)
    assert abs(float(centroid_similarity(unprompted, centroid, "cosine")[0]) - result.objective) > 1e-4
    # Evaluation with the same overrides ranks what the attack optimised.
    corpus = ["the weather is sunny", "cheap cars for sale", "paris is the capital of france"]
    prompted = evaluate_poisoning(model, corpus, QUERIES, [result.passage], document_prompt="passage: ",
                                  query_prompt="query: ")
    manual = model.similarity(model.encode(QUERIES, prompt="query: "), model.encode(corpus + [result.passage],
                                                                                    prompt="passage: "))
    assert prompted.ranks == (manual[:, :3] >= manual[:, 3:]).sum(dim=1).tolist()


def test_early_stop_patience(models):
    model = models["cosine"]
    config = replace(FAST, n_iters=6, patience=2, min_delta=1.0)  # any gain below 1.0 stops at iteration 2
    result = gaslite_attack(model, QUERIES, INFO, config)
    assert_valid(model, result, config)
    assert (result.iterations, result.stop_reason) == (2, "patience")
    full = gaslite_attack(model, QUERIES, INFO, replace(config, patience=0))
    assert (full.iterations, full.stop_reason) == (6, "n_iters")
    assert full.objective_history[:3] == result.objective_history  # the same search, cut short
    assert full.passage_history[:3] == result.passage_history


def test_queries_are_encoded_with_the_query_prompt(models):
    model = models["prompts"]
    expected = model.encode(QUERIES, prompt="query: ", convert_to_tensor=True)
    torch.testing.assert_close(target_embeddings(model, QUERIES), expected)


def test_craft_poison_passages_clusters(models):
    model = models["cosine"]
    results = craft_poison_passages(model, QUERIES, INFO, 3, FAST)
    assert len(results) == 3
    covered = sorted(index for result in results for index in result.query_indices)
    assert covered == list(range(len(QUERIES)))  # every query in exactly one cluster
    embeddings = model.encode(QUERIES, convert_to_tensor=True)
    for cluster, result in enumerate(results):
        targets = [QUERIES[index] for index in result.query_indices]
        assert_valid(model, result, FAST, queries=targets)
        # Cluster i is one GASLITE attack on its queries with seed + i.
        alone = gaslite_attack(model, embeddings[result.query_indices], INFO, replace(FAST, seed=cluster))
        assert alone.passage == result.passage
    again = craft_poison_passages(model, QUERIES, INFO, 3, FAST)
    assert [result.passage for result in again] == [result.passage for result in results]
    assert [result.query_indices for result in again] == [result.query_indices for result in results]
    (single,) = craft_poison_passages(model, QUERIES, INFO, 1, FAST)
    assert single.query_indices == list(range(len(QUERIES)))
    assert single.passage == gaslite_attack(model, QUERIES, INFO, FAST).passage


def test_config_mapping_and_errors():
    search = GasliteConfig().search_config()
    assert (search.n_iters, search.n_grad, search.topk, search.n_candidates, search.n_top_candidates,
            search.n_flip, search.normalize_gradient) == (100, 50, 256, 128, 64, 20, True)
    assert (search.patience, search.min_delta) == (GasliteConfig().patience, GasliteConfig().min_delta)
    search = GasliteConfig(patience=4, min_delta=0.002).search_config()
    assert (search.patience, search.min_delta) == (4, 0.002)
    assert GasliteConfig(n_candidates=16, topk=4).search_config().n_top_candidates == 4
    for kwargs, match in [
        ({"trigger_len": 0}, "trigger_len"), ({"trigger_len": 2.0}, "trigger_len"), ({"n_iters": -1}, "n_iters"),
        ({"n_grad": 0}, "n_grad"), ({"topk": 0}, "topk"), ({"n_candidates": 0}, "n_candidates"),
        ({"n_flip": 0}, "n_flip"), ({"seed": -1}, "seed"), ({"batch_size": 0}, "batch_size"),
        ({"trigger_position": "end"}, "trigger_position"), ({"trigger_init": " "}, "trigger_init"),
        ({"trigger_init": 1}, "trigger_init"), ({"time_limit": 0}, "time_limit"),
        ({"time_limit": float("inf")}, "time_limit"), ({"time_limit": True}, "time_limit"),
        ({"progress": 1}, "progress"), ({"patience": -1}, "patience"), ({"patience": 2.0}, "patience"),
        ({"patience": None}, "patience"), ({"min_delta": -0.01}, "min_delta"),
        ({"min_delta": float("nan")}, "min_delta"), ({"min_delta": "0"}, "min_delta"),
        ({"document_prompt": 1}, "document_prompt"), ({"query_prompt": ["query: "]}, "query_prompt"),
    ]:
        with pytest.raises(ValueError, match=match):
            GasliteConfig(**kwargs)


def test_attack_errors(models):
    model = models["cosine"]
    embeddings = model.encode(QUERIES, convert_to_tensor=True)
    cases = [
        (TypeError, "model", dict(model=model[0])),
        (TypeError, "config", dict(config={"n_iters": 1})),
        (TypeError, "info", dict(info=None)),
        (ValueError, "info", dict(info="  ")),
        (TypeError, "queries", dict(queries="how is the weather")),
        (TypeError, "queries", dict(queries=[1, 2])),
        (ValueError, "queries", dict(queries=[])),
        (ValueError, "queries", dict(queries=["fine", " "])),
        (ValueError, "queries", dict(queries=embeddings[:, :5])),
        (ValueError, "queries", dict(queries=embeddings[:0])),
        (ValueError, "queries", dict(queries=embeddings[None])),
        (ValueError, "queries", dict(queries=torch.zeros_like(embeddings))),
        (ValueError, "queries", dict(queries=embeddings.long())),
        (ValueError, "max_seq_length", dict(config=replace(FAST, trigger_len=125))),
    ]
    for error, match, overrides in cases:
        arguments = {"model": model, "queries": QUERIES, "info": INFO, "config": FAST, **overrides}
        with pytest.raises(error, match=match):
            gaslite_attack(**arguments)
    # trigger_only leaves the info out, so it may be empty there.
    gaslite_attack(model, QUERIES, "", replace(FAST, trigger_position="trigger_only", n_iters=0))
    euclidean = tiny_sentence_transformer()
    euclidean.similarity_fn_name = "euclidean"
    with pytest.raises(ValueError, match="similarity"):
        gaslite_attack(euclidean, QUERIES, INFO, FAST)


def test_craft_poison_passages_errors(models):
    model = models["cosine"]
    for error, match, overrides in [
        (ValueError, "n_passages", {"n_passages": 0}),
        (ValueError, "n_passages", {"n_passages": len(QUERIES) + 1}),
        (ValueError, "n_passages", {"n_passages": 2.0}),
        (ValueError, "queries", {"queries": []}),
        (TypeError, "info", {"info": 3}),
        (TypeError, "config", {"config": FAST.search_config()}),
        (TypeError, "model", {"model": "all-MiniLM-L6-v2"}),
    ]:
        arguments = {"model": model, "queries": QUERIES, "info": INFO, "n_passages": 2, "config": FAST, **overrides}
        with pytest.raises(error, match=match):
            craft_poison_passages(**arguments)
    with pytest.raises(ValueError, match="distinct clusters"):
        craft_poison_passages(model, ["same query"] * 3, INFO, 2, FAST)


@pytest.mark.real
def test_minilm_concept_passage_reaches_held_out_queries():
    """One L=30 passage with a reduced budget puts the info into the top 10 of at least half the unseen concept
    queries (info alone: none), and beats HotFlip given the same number of flipped positions (a deterministic budget:
    GASLITE's n_iters x n_flip = HotFlip's one-position iterations, each HotFlip position trying 100 candidates to
    GASLITE's 32; equal seconds would make the comparison depend on the machine's load)."""
    from hf_robust.retrieval import (
        DEFAULT_INFO,
        HotflipConfig,
        concept_queries,
        default_corpus,
        encode_corpus,
        evaluate_poisoning,
        hotflip_poison,
        info_only,
    )
    from hf_robust.testing import load_minilm

    model = load_minilm("cpu")
    corpus, attack, held_out = default_corpus(), concept_queries("attack"), concept_queries("held_out")
    corpus_embeddings = encode_corpus(model, corpus)

    def appeared_at_10(passage):
        report = evaluate_poisoning(model, corpus, held_out, [passage], corpus_embeddings=corpus_embeddings)
        return report.appeared_at[10]

    assert appeared_at_10(info_only(model, attack, DEFAULT_INFO).passage) == 0
    config = GasliteConfig(trigger_len=30, n_iters=8, n_grad=10, n_flip=5, n_candidates=32, patience=0,
                           progress=False)
    result = gaslite_attack(model, attack, DEFAULT_INFO, config)
    assert_valid(model, result, config, queries=attack)
    assert result.passage.startswith(DEFAULT_INFO) and result.iterations == config.n_iters
    gaslite = appeared_at_10(result.passage)
    assert gaslite >= 0.5
    hotflip = hotflip_poison(model, attack, DEFAULT_INFO,
                             HotflipConfig(n_iters=config.n_iters * config.n_flip, progress=False))
    assert hotflip.iterations == config.n_iters * config.n_flip
    assert hotflip.objective < result.objective
    assert appeared_at_10(hotflip.passage) < gaslite
