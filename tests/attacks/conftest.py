"""Token-search problems shared by the attack tests: a GCG suffix on a tiny llama and a retrieval trigger on a tiny
sentence transformer, each as (model, tokenizer, objective, ids, positions, embedding weight, allowed mask)."""

import pytest
import torch

from hf_robust.attacks import allowed_token_mask
from hf_robust.testing import tiny_causal_lm, tiny_sentence_transformer

from .objectives import GCGFixedTarget, SimilarityObjective


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
