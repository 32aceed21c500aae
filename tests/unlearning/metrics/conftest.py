"""The tiny models the metric tests read: a random one and one that memorised the first two texts."""

import pytest
import torch

from hf_robust.testing import tiny_causal_lm

from .common import TEXTS


@pytest.fixture(scope="module")
def tiny():
    return tiny_causal_lm("llama", seed=0)


@pytest.fixture(scope="module")
def memorising():
    """A tiny LM fitted to the first two texts until it reproduces them (about 40 full-batch Adam steps)."""
    model, tokenizer = tiny_causal_lm("llama", seed=1)
    ids = [tokenizer(text)["input_ids"] for text in TEXTS[:2]]
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.random.fork_rng(devices=[]):
        for _ in range(40):
            model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return model.eval(), tokenizer
