"""Verbatim memorisation: greedy continuations of forget-row prefixes scored with ROUGE-L, exact match, token
accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from rouge_score import rouge_scorer

from ...modeling import eval_mode
from ...sharding import has_sharded_weights
from .inputs import check_choice, check_positive_int
from .likelihood import model_device

ROUGE_TOKENS = ("words", "model")
ROUGE_MEASURES = ("fmeasure", "recall", "precision")


class _ModelTokens:
    """rouge_score tokenizer that splits text into the language model's own tokens (any script, any symbols)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def tokenize(self, text: str) -> list[str]:
        return [str(token) for token in self.tokenizer(text, add_special_tokens=False)["input_ids"]]


def _rouge_scorer(tokenizer, rouge_tokens: str) -> rouge_scorer.RougeScorer:
    check_choice(rouge_tokens, "rouge_tokens", ROUGE_TOKENS)
    custom = _ModelTokens(tokenizer) if rouge_tokens == "model" else None
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=custom)


@dataclass
class VerbatimResult:
    """Greedy continuations of prefixes compared with the true continuations.

    Attributes:
        rouge_l: Mean ROUGE-L (`rouge_measure` of rouge_score's LCS score) over examples.
        exact_match: Fraction of examples whose greedy continuation reproduces every true continuation token.
        token_accuracy: Fraction of true continuation tokens reproduced at their position, over all examples.
        rouge_l_per_example: ROUGE-L of each example.
        generations: Decoded greedy continuations.
    """

    rouge_l: float
    exact_match: float
    token_accuracy: float
    rouge_l_per_example: list[float] = field(default_factory=list)
    generations: list[str] = field(default_factory=list)


def _greedy_continuation(model, prefix: list[int], length: int, pad_id: int | None) -> list[int]:
    """Up to `length` greedily decoded token ids after `prefix` (fewer if the model emits its eos token)."""
    input_ids = torch.tensor([prefix], device=model_device(model))
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=length,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        # transformers syncs every rank's steps whenever ZeRO-3 is on; a plain model evaluated on one rank must not.
        synced_gpus=has_sharded_weights(model),
    )
    return output[0, len(prefix) :].tolist()


def verbatim_from_ids(
    model, tokenizer, prefixes: list[list[int]], continuations: list[list[int]], rouge_tokens: str = "words",
    rouge_measure: str = "fmeasure",
) -> VerbatimResult:
    """`verbatim_memorisation` on token ids: prefixes and continuations already split at a token boundary."""
    check_choice(rouge_measure, "rouge_measure", ROUGE_MEASURES)
    scorer = _rouge_scorer(tokenizer, rouge_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores, generations, exact, matched = [], [], 0, 0
    with eval_mode(model), torch.no_grad():
        for prefix, continuation in zip(prefixes, continuations, strict=True):
            generated = _greedy_continuation(model, prefix, len(continuation), pad_id)
            text = tokenizer.decode(generated, skip_special_tokens=True)
            reference = tokenizer.decode(continuation, skip_special_tokens=True)
            scores.append(float(getattr(scorer.score(reference, text)["rougeL"], rouge_measure)))
            generations.append(text)
            exact += generated == continuation
            matched += sum(a == b for a, b in zip(generated, continuation))
    return VerbatimResult(
        rouge_l=sum(scores) / len(scores),
        exact_match=exact / len(scores),
        token_accuracy=matched / sum(len(continuation) for continuation in continuations),
        rouge_l_per_example=scores,
        generations=generations,
    )


def verbatim_memorisation(
    model, tokenizer, prefixes: Sequence[str], continuations: Sequence[str], max_new_tokens: int | None = None,
    rouge_tokens: str = "words", rouge_measure: str = "fmeasure",
) -> VerbatimResult:
    """How much of each true continuation greedy decoding from its prefix reproduces (MUSE's VerbMem style).

    Each prefix is encoded with the tokenizer's defaults, its continuation without special tokens; the model decodes
    greedily for as many tokens as the continuation has (capped at `max_new_tokens`), one example at a time so no
    padding enters generation.

    Args:
        prefixes, continuations: equal-length lists of non-empty strings.
        max_new_tokens: truncate every continuation to this many tokens (None: keep them whole).
        rouge_tokens: "words" scores ROUGE-L with rouge_score's default tokenizer (lower-cased ASCII letters and
            digits only, as MUSE and TOFU report it); "model" with the language model's own tokens, which also
            scores texts made of symbols or other scripts.
        rouge_measure: "fmeasure", "recall" or "precision" of rouge_score's ROUGE-L.
    """
    for name, values in (("prefixes", prefixes), ("continuations", continuations)):
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise TypeError(f"`{name}` must be a non-empty list of strings, got {type(values).__name__}.")
        for index, value in enumerate(values):
            if not isinstance(value, str) or not value:
                raise ValueError(f"`{name}[{index}]` must be a non-empty string, got {value!r}.")
    if len(prefixes) != len(continuations):
        raise ValueError(f"`prefixes` has {len(prefixes)} rows but `continuations` has {len(continuations)}.")
    if max_new_tokens is not None:
        check_positive_int(max_new_tokens, "max_new_tokens")
    prefix_ids = [tokenizer(prefix)["input_ids"] for prefix in prefixes]
    continuation_ids = [
        tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens] for text in continuations
    ]
    return verbatim_from_ids(model, tokenizer, prefix_ids, continuation_ids, rouge_tokens, rouge_measure)
