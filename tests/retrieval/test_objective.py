"""The GASLITE objective: ids path == inputs_embeds path == model.encode, batching, centroid algebra, layout."""

import pytest
import torch
import torch.nn.functional as F

from hf_robust.retrieval.gaslite import check_model, document_prompt_name, target_embeddings
from hf_robust.retrieval.objective import (
    CentroidObjective,
    centroid_similarity,
    passage_layout,
    query_centroid,
    with_full_stop,
)
from hf_robust.testing import tiny_sentence_transformer

QUERIES = ["how is the weather today", "is it going to rain tomorrow", "what a nice sunny day", "the weather is cold"]
INFO = "Buy cheap shoes at our store"
MODELS = {
    "cosine": {},
    "dot": {"similarity": "dot"},
    "prompts": {"prompts": {"query": "query: ", "document": "passage: "}},
}


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request):
    model = tiny_sentence_transformer(seed=0, **MODELS[request.param]).eval()
    name = document_prompt_name(model)
    prompt = model.prompts[name] if name else ""
    layout, features = passage_layout(model, INFO, prompt, 6, "suffix", "!")
    centroid = query_centroid(target_embeddings(model, QUERIES))
    objective = CentroidObjective(model, features, centroid, check_model(model))
    return model, prompt, layout, objective


def random_triggers(layout, rows, vocab, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch = layout.ids.unsqueeze(0).repeat(rows, 1)
    batch[:, layout.positions] = torch.randint(100, vocab, (rows, layout.positions.numel()), generator=generator)
    return batch


def test_inputs_embeds_path_equals_input_ids_path(setup):
    model, prompt, layout, objective = setup
    weight = model[0].auto_model.get_input_embeddings().weight
    batch = random_triggers(layout, 5, weight.shape[0])
    one_hot = F.one_hot(batch[:, layout.positions], weight.shape[0]).to(weight.dtype)
    with torch.no_grad():
        embeds = weight[batch].clone()
        embeds[:, layout.positions] = one_hot @ weight
        torch.testing.assert_close(objective.loss_from_embeds(embeds), objective.loss_from_ids(batch), rtol=0,
                                   atol=1e-6)
        assert objective.loss_from_ids(batch).shape == (5,)


def test_batched_scoring_equals_per_row(setup):
    model, prompt, layout, objective = setup
    batch = random_triggers(layout, 7, len(model.tokenizer), seed=1)
    with torch.no_grad():
        batched = objective.loss_from_ids(batch)
        rows = torch.cat([objective.loss_from_ids(row.unsqueeze(0)) for row in batch])
    torch.testing.assert_close(batched, rows, rtol=0, atol=1e-6)
    assert batched.unique().numel() > 1  # the rows really differ


def test_ids_path_equals_model_encode_with_the_document_prompt(setup):
    model, prompt, layout, objective = setup
    passage = layout.passage(layout.ids[layout.positions])
    assert model.tokenizer(prompt + passage).input_ids == layout.ids.tolist()
    with torch.no_grad():
        ours = objective.embed_from_ids(layout.ids.unsqueeze(0))[0]
    encoded = model.encode(passage, prompt_name=document_prompt_name(model), convert_to_tensor=True)
    torch.testing.assert_close(ours, encoded, rtol=0, atol=1e-5)
    # Without the prompt the embedding differs, so the prompt really is part of the objective.
    if prompt:
        assert (model.encode(passage, prompt="", convert_to_tensor=True) - encoded).abs().max() > 1e-4


def test_centroid_equivalence():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(6, 32, generator=generator) * torch.rand(6, 1, generator=generator) * 5
    passages = torch.randn(3, 32, generator=generator)
    centroid = query_centroid(queries)
    unit = F.normalize(queries, dim=-1)
    # Cosine: cos(f, c) * ||c|| is the mean cosine to the queries.
    cosine = centroid_similarity(passages, centroid, "cosine") * centroid.norm()
    torch.testing.assert_close(cosine, F.cosine_similarity(passages[:, None], unit[None], dim=-1).mean(1),
                               rtol=0, atol=1e-6)
    # Dot: f . c is the mean dot product with the normalised queries.
    torch.testing.assert_close(centroid_similarity(passages, centroid, "dot"), (passages @ unit.T).mean(1),
                               rtol=0, atol=1e-5)
    assert query_centroid(queries[0]).shape == (32,)
    torch.testing.assert_close(query_centroid(queries[0]), unit[0])
    assert centroid.norm() < 1


def test_centroid_equivalence_on_the_model():
    model = tiny_sentence_transformer(seed=0)
    queries = target_embeddings(model, QUERIES)
    passage = model.encode(["shoes for sale"], convert_to_tensor=True)
    centroid = query_centroid(queries)
    ours = centroid_similarity(passage, centroid, "cosine") * centroid.norm()
    torch.testing.assert_close(ours, model.similarity(passage, queries).mean(1), rtol=0, atol=1e-6)


def test_with_full_stop():
    assert with_full_stop("Buy shoes") == "Buy shoes."
    assert with_full_stop("  Buy shoes!  ") == "Buy shoes!"
    assert with_full_stop("Really?") == "Really?"


@pytest.mark.parametrize("position", ["suffix", "prefix", "middle", "trigger_only"])
def test_passage_layout_positions(position):
    model = tiny_sentence_transformer(seed=0, prompts={"document": "passage: "})
    layout, features = passage_layout(model, INFO, "passage: ", 5, position, "!")
    assert features["input_ids"][0].tolist() == layout.ids.tolist()
    assert layout.positions.tolist() == list(range(int(layout.positions[0]), int(layout.positions[0]) + 5))
    bang = model.tokenizer.convert_tokens_to_ids("!")
    assert (layout.ids[layout.positions] == bang).all()
    assert (layout.ids == bang).sum() == 5  # no other "!" in the passage
    passage = layout.passage(layout.ids[layout.positions])
    expected = {"suffix": INFO + ". !!!!!", "prefix": "!!!!! " + INFO + ".",
                "middle": "Buy cheap shoes !!!!! at our store.", "trigger_only": "!!!!!"}[position]
    assert passage.replace("! ", "!") == expected.replace("! ", "!")
    assert layout.round_trip(layout.ids)
    changed = layout.ids.clone()
    changed[layout.positions[0]] = model.tokenizer.convert_tokens_to_ids("##s")  # glues to the previous word
    assert not layout.round_trip(changed)


def test_passage_layout_trigger_init_and_errors():
    model = tiny_sentence_transformer(seed=0)
    tokenizer = model.tokenizer
    layout, _ = passage_layout(model, INFO, "", 6, "suffix", "the weather")
    expected = tokenizer("the weather ! ! ! !", add_special_tokens=False).input_ids
    assert layout.ids[layout.positions].tolist() == expected
    layout, _ = passage_layout(model, INFO, "", 2, "suffix", "the weather is nice")
    assert layout.ids[layout.positions].tolist() == expected[:2]
    layout, _ = passage_layout(model, INFO, "", 3, "suffix", "weather")
    assert layout.ids[layout.positions].tolist() == expected[1:2] * 3
    with pytest.raises(ValueError, match="max_seq_length 128.*trigger_len"):
        passage_layout(model, INFO, "", 120, "suffix", "!")


def test_passage_layout_rejects_a_trigger_that_does_not_tokenise_back():
    model = tiny_sentence_transformer(seed=0)

    class GluingTokenizer:
        """Decodes every trigger with a leading "x", so the trigger gains a token in the passage."""

        def __call__(self, *args, **kwargs):
            return model.tokenizer(*args, **kwargs)

        def decode(self, ids):
            return "x " + model.tokenizer.decode(ids)

    stub = type("Stub", (), {"tokenizer": GluingTokenizer(), "max_seq_length": 128, "preprocess": model.preprocess})
    with pytest.raises(ValueError, match="trigger_init"):
        passage_layout(stub(), INFO, "", 4, "suffix", "!")
