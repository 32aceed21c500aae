"""Tests for hf_robust.testing.retrieval: the tiny sentence transformer scores, takes prompts, is seeded."""

import pytest
import torch

from hf_robust.testing import tiny_sentence_transformer


# ---------------------------------------------------------------- tiny_sentence_transformer


def test_sentence_transformer_cosine_and_dot():
    texts = ["a photo of a cat", "how do I bake bread?", "zzz unseen wörds"]
    cosine = tiny_sentence_transformer()
    embeddings = cosine.encode(texts, convert_to_tensor=True)
    assert embeddings.shape == (3, 32) and cosine.similarity_fn_name == "cosine"
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    dot = tiny_sentence_transformer(similarity="dot")
    dot_embeddings = dot.encode(texts, convert_to_tensor=True)
    assert dot.similarity_fn_name == "dot"
    assert not torch.allclose(dot_embeddings.norm(dim=-1), torch.ones(3), atol=1e-3)
    # Same seed, same weights: cosine is the normalised dot model.
    torch.testing.assert_close(embeddings, torch.nn.functional.normalize(dot_embeddings, dim=-1))


def test_sentence_transformer_prompts_and_seed():
    prompts = {"query": "query: ", "passage": "passage: "}
    model = tiny_sentence_transformer(prompts=prompts)
    # sentence-transformers 6 also fills in blank "query"/"document" prompts; ours must win.
    assert model.prompts.items() >= prompts.items()
    with_prompt = model.encode(["best way to learn"], prompt_name="query", convert_to_tensor=True)
    spelled_out = model.encode(["query: best way to learn"], convert_to_tensor=True)
    plain = model.encode(["best way to learn"], convert_to_tensor=True)
    torch.testing.assert_close(with_prompt, spelled_out)
    torch.testing.assert_close(model.encode_query(["best way to learn"], convert_to_tensor=True), spelled_out)
    assert not torch.allclose(with_prompt, plain)
    same = tiny_sentence_transformer().encode(["best way to learn"], convert_to_tensor=True)
    other = tiny_sentence_transformer(seed=1).encode(["best way to learn"], convert_to_tensor=True)
    assert torch.equal(plain, same) and not torch.allclose(plain, other)


def test_sentence_transformer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="similarity.*cosine.*dot"):
        tiny_sentence_transformer(similarity="euclidean")
    with pytest.raises(TypeError, match="prompts"):
        tiny_sentence_transformer(prompts=["query: "])
    with pytest.raises(TypeError, match="seed"):
        tiny_sentence_transformer(seed=None)
