"""Tests for hf_robust.unlearning.metrics.likelihood: per-sequence NLL is the model's own loss, Min-k% the mean of the
lowest token log-probs."""

import pytest
import torch
from datasets import Dataset

from hf_robust.unlearning.metrics import forget_retain_nll, min_k_percent, sequence_nll

from .common import TEXTS, own_loss


def test_sequence_nll_is_the_models_own_loss_of_each_sequence(tiny):
    model, tokenizer = tiny
    values = sequence_nll(model, tokenizer, TEXTS, batch_size=2)  # a padded batch and a batch of one
    expected = torch.stack([own_loss(model, tokenizer(text)["input_ids"]) for text in TEXTS])
    assert values.shape == (3,) and values.dtype == torch.float32
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)
    # The same numbers from token ids (no tokenizer needed), a Dataset of texts and a Dataset of ids.
    ids = [tokenizer(text)["input_ids"] for text in TEXTS]
    for tokenizer_or_none, rows in [
        (None, ids), (tokenizer, Dataset.from_dict({"text": TEXTS})), (None, Dataset.from_dict({"input_ids": ids}))
    ]:  # fmt: skip
        torch.testing.assert_close(sequence_nll(model, tokenizer_or_none, rows), values, atol=1e-5, rtol=1e-5)
    # Truncation keeps the first max_length tokens.
    torch.testing.assert_close(sequence_nll(model, None, [ids[0]], max_length=5), own_loss(model, ids[0][:5])[None])
    split = forget_retain_nll(model, tokenizer, TEXTS[:1], TEXTS[1:])
    assert split["forget_nll"] == pytest.approx(float(values[0]), abs=1e-5)
    assert split["retain_nll"] == pytest.approx(float(values[1:].mean()), abs=1e-5)


def test_min_k_percent_is_the_mean_of_the_lowest_token_log_probs(tiny):
    model, tokenizer = tiny
    for k in (0.2, 0.5):
        scores = min_k_percent(model, tokenizer, TEXTS, k=k)
        for text, score in zip(TEXTS, scores):
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            with torch.no_grad():
                log_probs = torch.log_softmax(model(ids).logits[0, :-1], dim=-1).gather(-1, ids[0, 1:, None])[:, 0]
            lowest = sorted(log_probs.tolist())[: max(1, int(k * len(log_probs)))]
            assert float(score) == pytest.approx(sum(lowest) / len(lowest), abs=1e-5)
    # k = 1 averages every token: minus the NLL.
    torch.testing.assert_close(min_k_percent(model, tokenizer, TEXTS, k=1.0), -sequence_nll(model, tokenizer, TEXTS))
