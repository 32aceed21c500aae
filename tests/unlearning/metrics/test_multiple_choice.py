"""Tests for hf_robust.unlearning.metrics.multiple_choice: the most likely continuation is the model's answer."""

import pytest
from datasets import Dataset

from hf_robust.unlearning.metrics import multiple_choice_accuracy
from hf_robust.unlearning.metrics.multiple_choice import multiple_choice_prompts

from .common import QUESTIONS, own_loss


@pytest.mark.parametrize("scoring", ["letter", "choice"])
def test_multiple_choice_picks_the_most_likely_continuation(tiny, scoring):
    model, tokenizer = tiny
    best = []
    for row in QUESTIONS:
        context, continuations = multiple_choice_prompts(row["question"], row["choices"], scoring)
        context_ids = tokenizer(context)["input_ids"]
        totals = []
        for continuation in continuations:
            continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            mean_nll = own_loss(model, context_ids + continuation_ids, start=len(context_ids))
            totals.append(-float(mean_nll) * len(continuation_ids))
        best.append(max(range(len(totals)), key=totals.__getitem__))
    if scoring == "letter":
        assert multiple_choice_prompts("Q?", ["x", "y"], "letter") == ("Q?\nA. x\nB. y\nAnswer:", [" A", " B"])
    # Right where the answer is the most likely choice, wrong elsewhere: accuracy 2/3.
    answers = [best[0], best[1], (best[2] + 1) % 3]
    rows = [{**row, "answer": answer} for row, answer in zip(QUESTIONS, answers)]
    assert multiple_choice_accuracy(model, tokenizer, rows, scoring=scoring) == pytest.approx(2 / 3)
    as_dataset = multiple_choice_accuracy(model, tokenizer, Dataset.from_list(rows), scoring=scoring, batch_size=1)
    assert as_dataset == pytest.approx(2 / 3)
