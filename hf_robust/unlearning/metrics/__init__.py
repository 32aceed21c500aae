"""Unlearning metrics: forget/retain NLL, verbatim memorisation, multiple-choice accuracy and Min-k% membership.

Every function here only reads the model: it runs under `torch.no_grad()` in eval mode and restores each submodule's
train/eval flag afterwards, so parameters, their `.grad` and the modes are left as they were.

Inputs are raw texts (a list of strings or a `datasets.Dataset` with a `text` column) or already tokenised sequences
(a list of token-id lists or a `Dataset` with an `input_ids` column). Texts are encoded with the tokenizer's defaults
(`add_special_tokens=True`, so a BOS is prepended where the tokenizer adds one) and truncated to `max_length`.
"""

from .likelihood import forget_retain_nll, min_k_percent, sequence_nll
from .multiple_choice import multiple_choice_accuracy
from .summary import UnlearningMetrics, evaluate_unlearning
from .verbatim import VerbatimResult, verbatim_memorisation

__all__ = [
    "sequence_nll",
    "forget_retain_nll",
    "VerbatimResult",
    "verbatim_memorisation",
    "multiple_choice_accuracy",
    "min_k_percent",
    "UnlearningMetrics",
    "evaluate_unlearning",
]
