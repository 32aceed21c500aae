"""`evaluate_unlearning`: every metric of a model on forget / retain rows at once, as `UnlearningMetrics`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .inputs import check_fraction, check_positive_int, encode_rows
from .likelihood import min_k_score, token_log_probs
from .multiple_choice import multiple_choice_accuracy
from .verbatim import verbatim_from_ids


@dataclass
class UnlearningMetrics:
    """What `evaluate_unlearning` measures. Averages are over rows; None where that data was not given.

    Attributes:
        forget_nll, retain_nll: Mean per-sequence token NLL (`sequence_nll`); unlearning raises forget_nll.
        forget_rouge_l: Mean ROUGE-L of greedy continuations of forget-row prefixes (`verbatim_memorisation`).
        forget_exact_match: Fraction of forget rows whose continuation is reproduced exactly.
        forget_token_accuracy: Fraction of forget continuation tokens reproduced at their position.
        forget_min_k, retain_min_k: Mean Min-k% score (`min_k_percent`); higher looks more like training data.
        mc_accuracy: Multiple-choice accuracy (`multiple_choice_accuracy`) on the given questions.
        forget_rows, retain_rows: How many rows were measured.
    """

    forget_nll: float
    forget_rouge_l: float
    forget_exact_match: float
    forget_token_accuracy: float
    forget_min_k: float
    forget_rows: int
    retain_nll: float | None = None
    retain_min_k: float | None = None
    retain_rows: int | None = None
    mc_accuracy: float | None = None

    def as_dict(self) -> dict[str, float | int]:
        """The measured values by name (fields that are None are left out)."""
        return {name: value for name, value in asdict(self).items() if value is not None}


def _likelihood_metrics(model, sequences, k, batch_size) -> tuple[float, float]:
    """(mean NLL, mean Min-k%) over `sequences` from one pass of token log-probs."""
    nll, min_k = [], []
    for values in token_log_probs(model, sequences, batch_size):
        nll.append(float(-values.mean()))
        min_k.append(float(min_k_score(values, k)))
    return sum(nll) / len(nll), sum(min_k) / len(min_k)


def evaluate_unlearning(
    model, tokenizer, forget, retain=None, *, mc_questions=None, mc_scoring: str = "letter",
    prefix_fraction: float = 0.5, max_new_tokens: int = 128, k: float = 0.2, batch_size: int = 8,
    max_length: int = 512, rouge_tokens: str = "words",
) -> UnlearningMetrics:
    """Forget/retain NLL and Min-k%, verbatim memorisation of the forget rows and optional multiple-choice accuracy.

    Each forget row (truncated to `max_length` tokens) is split at token int(prefix_fraction * n) (at least 1): the
    model greedily continues the prefix for the rest of the row, at most `max_new_tokens` tokens, and the result is
    scored against the true rest with ROUGE-L F-measure and exact match (see `verbatim_memorisation`).

    Args:
        forget, retain: list of strings / token-id lists or a `Dataset` with `text` or `input_ids`; retain optional.
        mc_questions: WMDP-style rows for `multiple_choice_accuracy` (scored with `mc_scoring`), or None.
        k: fraction for Min-k%.
        rouge_tokens: "words" (rouge_score's tokenizer) or "model" (the model's tokens; needed for texts without
            ASCII letters or digits, e.g. random token strings).
    """
    check_fraction(prefix_fraction, "prefix_fraction", allow_one=False)
    check_positive_int(max_new_tokens, "max_new_tokens")
    check_fraction(k, "k")
    forget_ids = encode_rows(tokenizer, forget, "forget", max_length)
    retain_ids = None if retain is None else encode_rows(tokenizer, retain, "retain", max_length)
    forget_nll, forget_min_k = _likelihood_metrics(model, forget_ids, k, batch_size)
    cuts = [max(1, int(prefix_fraction * len(ids))) for ids in forget_ids]
    verbatim = verbatim_from_ids(
        model, tokenizer, [ids[:cut] for ids, cut in zip(forget_ids, cuts)],
        [ids[cut : cut + max_new_tokens] for ids, cut in zip(forget_ids, cuts)], rouge_tokens,
    )  # fmt: skip
    metrics = UnlearningMetrics(
        forget_nll=forget_nll,
        forget_rouge_l=verbatim.rouge_l,
        forget_exact_match=verbatim.exact_match,
        forget_token_accuracy=verbatim.token_accuracy,
        forget_min_k=forget_min_k,
        forget_rows=len(forget_ids),
    )
    if retain_ids is not None:
        metrics.retain_nll, metrics.retain_min_k = _likelihood_metrics(model, retain_ids, k, batch_size)
        metrics.retain_rows = len(retain_ids)
    if mc_questions is not None:
        metrics.mc_accuracy = multiple_choice_accuracy(model, tokenizer, mc_questions, mc_scoring, batch_size)
    return metrics
