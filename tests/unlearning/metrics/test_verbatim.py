"""Tests for hf_robust.unlearning.metrics.verbatim: greedy continuations scored with rouge_score, exact match and
token accuracy."""

import pytest
import torch
from rouge_score import rouge_scorer

from hf_robust.unlearning.metrics import verbatim_memorisation
from hf_robust.unlearning.metrics.verbatim import verbatim_from_ids


def test_verbatim_memorisation_scores_greedy_continuations_with_rouge_score(memorising):
    model, tokenizer = memorising
    result = verbatim_memorisation(
        model, tokenizer, ["The quick brown fox", "What is the capital"], [" jumps over the lazy dog.", " of Spain?"]
    )
    # The memorised sentence comes back word for word; the second reference is not what the model says.
    assert result.generations[0] == " jumps over the lazy dog."
    assert result.rouge_l_per_example[0] == 1.0
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    direct = scorer.score(" of Spain?", result.generations[1])["rougeL"].fmeasure
    assert result.rouge_l_per_example[1] == pytest.approx(direct) and direct < 1
    assert result.rouge_l == pytest.approx((1.0 + direct) / 2)
    assert result.exact_match == 0.5
    # ROUGE-L of "jumps over the lazy cat" against "jumps over the lazy dog": LCS 4 of 5 words each way.
    partial = verbatim_memorisation(model, tokenizer, ["The quick brown fox"], [" jumps over the lazy cat"])
    assert partial.rouge_l == pytest.approx(0.8) and partial.exact_match == 0.0
    recall = verbatim_memorisation(model, tokenizer, ["The quick brown fox"], [" jumps over"], rouge_measure="recall")
    assert recall.rouge_l == 1.0 and recall.exact_match == 1.0


def test_verbatim_on_ids_counts_exact_match_and_token_accuracy(tiny):
    model, tokenizer = tiny
    prefix = tokenizer("Hello! How can I")["input_ids"]
    with torch.no_grad():
        greedy = model.generate(torch.tensor([prefix]), max_new_tokens=6, do_sample=False)[0, len(prefix) :].tolist()
    assert len(greedy) == 6
    wrong = greedy[:4] + [1 if token == 0 else 0 for token in greedy[4:]]  # two ordinary tokens changed
    result = verbatim_from_ids(model, tokenizer, [prefix, prefix], [greedy, wrong], rouge_tokens="model")
    assert result.exact_match == 0.5
    assert result.token_accuracy == 10 / 12
    assert result.rouge_l_per_example[0] == 1.0  # identical token strings, scored on the model's tokens
