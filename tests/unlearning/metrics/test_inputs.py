"""Tests for hf_robust.unlearning.metrics.inputs: bad inputs to every metric name the argument."""

import pytest
from datasets import Dataset

from hf_robust.unlearning.metrics import (
    evaluate_unlearning, min_k_percent, multiple_choice_accuracy, sequence_nll, verbatim_memorisation,
)

from .common import QUESTIONS, TEXTS


def test_bad_inputs_name_the_argument(tiny):
    model, tokenizer = tiny
    with pytest.raises(TypeError, match="texts_or_ids"):
        sequence_nll(model, tokenizer, "one string")
    with pytest.raises(ValueError, match="texts_or_ids.*empty"):
        sequence_nll(model, tokenizer, [])
    with pytest.raises(ValueError, match=r"texts_or_ids\[1\].*1 token"):
        sequence_nll(model, None, [[1, 2, 3], [4]])
    with pytest.raises(ValueError, match="tokenizer"):
        sequence_nll(model, None, TEXTS)
    with pytest.raises(ValueError, match="'text' or 'input_ids'"):
        sequence_nll(model, tokenizer, Dataset.from_dict({"prompt": TEXTS}))
    with pytest.raises(TypeError, match=r"texts_or_ids\[1\]"):
        sequence_nll(model, tokenizer, ["text", 3])
    with pytest.raises(ValueError, match="batch_size"):
        sequence_nll(model, tokenizer, TEXTS, batch_size=0)
    with pytest.raises(ValueError, match="`k`"):
        min_k_percent(model, tokenizer, TEXTS, k=0)
    with pytest.raises(ValueError, match="continuations"):
        verbatim_memorisation(model, tokenizer, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="rouge_tokens"):
        verbatim_memorisation(model, tokenizer, ["a"], ["b"], rouge_tokens="chars")
    with pytest.raises(ValueError, match=r"questions\[0\]\['answer'\]"):
        multiple_choice_accuracy(model, tokenizer, [{**QUESTIONS[0], "answer": 4}])
    with pytest.raises(ValueError, match=r"questions\[0\]\['choices'\]"):
        multiple_choice_accuracy(model, tokenizer, [{**QUESTIONS[0], "choices": ["only one"]}])
    with pytest.raises(ValueError, match="scoring"):
        multiple_choice_accuracy(model, tokenizer, QUESTIONS, scoring="best")
    with pytest.raises(TypeError, match="forget"):
        evaluate_unlearning(model, tokenizer, {"text": TEXTS})
    with pytest.raises(ValueError, match="prefix_fraction"):
        evaluate_unlearning(model, tokenizer, TEXTS, prefix_fraction=1.0)
