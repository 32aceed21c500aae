"""Tests for hf_robust.unlearning.metrics.summary: evaluate_unlearning gathers every metric and leaves the model as it
was."""

import pytest
import torch

from hf_robust.unlearning.metrics import UnlearningMetrics, evaluate_unlearning, min_k_percent, sequence_nll

from .common import QUESTIONS, TEXTS


def test_evaluate_unlearning_gathers_the_metrics(memorising):
    model, tokenizer = memorising
    metrics = evaluate_unlearning(
        model, tokenizer, TEXTS[:2], TEXTS[2:], mc_questions=QUESTIONS[:1], max_new_tokens=64
    )
    assert isinstance(metrics, UnlearningMetrics)
    assert metrics.forget_nll == pytest.approx(float(sequence_nll(model, tokenizer, TEXTS[:2]).mean()), abs=1e-5)
    assert metrics.retain_nll == pytest.approx(float(sequence_nll(model, tokenizer, TEXTS[2:]).mean()), abs=1e-5)
    assert metrics.forget_min_k == pytest.approx(float(min_k_percent(model, tokenizer, TEXTS[:2]).mean()), abs=1e-5)
    assert metrics.retain_min_k == pytest.approx(float(min_k_percent(model, tokenizer, TEXTS[2:]).mean()), abs=1e-5)
    # Memorised rows: the second half of each comes back exactly from its first half.
    assert (metrics.forget_rouge_l, metrics.forget_exact_match, metrics.forget_token_accuracy) == (1.0, 1.0, 1.0)
    assert metrics.forget_nll < 1 < metrics.retain_nll
    assert metrics.mc_accuracy in (0.0, 1.0) and (metrics.forget_rows, metrics.retain_rows) == (2, 1)
    plain = evaluate_unlearning(model, tokenizer, TEXTS[:2])
    assert plain.retain_nll is None and plain.mc_accuracy is None
    assert set(plain.as_dict()) == {
        "forget_nll", "forget_rouge_l", "forget_exact_match", "forget_token_accuracy", "forget_min_k", "forget_rows"
    }  # fmt: skip


def test_metrics_leave_the_model_as_it_was(tiny):
    model, tokenizer = tiny
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back as it was
    modes = [module.training for module in model.modules()]
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    model.lm_head.weight.grad = torch.ones_like(model.lm_head.weight)
    try:
        evaluate_unlearning(model, tokenizer, TEXTS[:2], TEXTS[2:], mc_questions=QUESTIONS[:1], max_new_tokens=4)
        assert [module.training for module in model.modules()] == modes
        for name, parameter in model.named_parameters():
            assert torch.equal(parameter, before[name]), name
            if name != "lm_head.weight":
                assert parameter.grad is None, name
        assert torch.equal(model.lm_head.weight.grad, torch.ones_like(model.lm_head.weight))
    finally:
        model.lm_head.weight.grad = None
        model.eval()
