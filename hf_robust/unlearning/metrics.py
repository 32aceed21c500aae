"""Unlearning metrics: forget/retain NLL, verbatim memorisation, multiple-choice accuracy and Min-k% membership.

Every function here only reads the model: it runs under `torch.no_grad()` in eval mode and restores each submodule's
train/eval flag afterwards, so parameters, their `.grad` and the modes are left as they were.

Inputs are raw texts (a list of strings or a `datasets.Dataset` with a `text` column) or already tokenised sequences
(a list of token-id lists or a `Dataset` with an `input_ids` column). Texts are encoded with the tokenizer's defaults
(`add_special_tokens=True`, so a BOS is prepended where the tokenizer adds one) and truncated to `max_length`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from datasets import Dataset
from rouge_score import rouge_scorer

from ..modeling import eval_mode
from ..sharding import has_sharded_weights

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

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MC_SCORINGS = ("letter", "choice")
ROUGE_TOKENS = ("words", "model")
ROUGE_MEASURES = ("fmeasure", "recall", "precision")


# ---------------------------------------------------------------------------------------------------- input checks


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


def _check_fraction(value, name: str, *, allow_one: bool = True) -> None:
    upper_ok = value <= 1 if allow_one else value < 1
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value and upper_ok):
        bound = "<= 1" if allow_one else "< 1"
        raise ValueError(f"`{name}` must be a number > 0 and {bound}, got {value!r}.")


def _check_choice(value, name: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")


def _is_token_ids(row) -> bool:
    if isinstance(row, torch.Tensor):
        return row.dim() == 1 and not row.is_floating_point() and not row.is_complex()
    return isinstance(row, Sequence) and not isinstance(row, str) and all(
        isinstance(token, numbers.Integral) and not isinstance(token, bool) for token in row
    )


def text_rows(data, name: str) -> list:
    """The rows of `data` as a list of strings or a list of token-id lists (not yet checked for length).

    Accepts a list of strings, a list of token-id lists / 1-D integer tensors, or a `datasets.Dataset` with a `text`
    (preferred) or `input_ids` column. Raises TypeError/ValueError naming `name`.
    """
    if isinstance(data, Dataset):
        column = "text" if "text" in data.column_names else "input_ids" if "input_ids" in data.column_names else None
        if column is None:
            raise ValueError(f"`{name}` must have a 'text' or 'input_ids' column, got columns {data.column_names}.")
        rows = list(data[column])
    elif isinstance(data, torch.Tensor) and data.dim() == 2:
        rows = list(data)
    elif isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Sequence):
        raise TypeError(
            f"`{name}` must be a list of strings, a list of token-id lists or a datasets.Dataset with a 'text' or "
            f"'input_ids' column, got {type(data).__name__}."
        )
    else:
        rows = list(data)
    if not rows:
        raise ValueError(f"`{name}` is empty: give at least one text.")
    if all(isinstance(row, str) for row in rows):
        return rows
    if all(_is_token_ids(row) for row in rows):
        return [[int(token) for token in row] for row in rows]
    bad = next(index for index, row in enumerate(rows) if not isinstance(row, str))
    raise TypeError(
        f"`{name}[{bad}]` must be a string (or every row a list of token ids), got {type(rows[bad]).__name__}."
    )


def encode_rows(tokenizer, data, name: str, max_length: int, *, min_tokens: int = 2) -> list[list[int]]:
    """Token ids of every row of `data`, each truncated to `max_length` and at least `min_tokens` long."""
    _check_positive_int(max_length, "max_length")
    rows = text_rows(data, name)
    if isinstance(rows[0], str):
        if tokenizer is None:
            raise ValueError(f"`{name}` holds texts, so a tokenizer is needed; got tokenizer=None.")
        rows = [tokenizer(text, truncation=True, max_length=max_length)["input_ids"] for text in rows]
    sequences = [list(row[:max_length]) for row in rows]
    for index, sequence in enumerate(sequences):
        if len(sequence) < min_tokens:
            raise ValueError(
                f"`{name}[{index}]` has {len(sequence)} token(s); each row needs at least {min_tokens} "
                "(a prediction needs a token to predict from)."
            )
    return sequences


# ----------------------------------------------------------------------------------------------- token log-probs


def _device(model) -> torch.device:
    return next(model.parameters()).device


def right_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both of shape (batch, longest); padding on the right, so positions stay 0..n-1."""
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


def token_log_probs(
    model, sequences: list[list[int]], batch_size: int, starts: list[int] | None = None
) -> list[torch.Tensor]:
    """log p(x_t | x_<t) of every token from `starts[i]` on (default 1), computed in float32.

    Args:
        sequences: token ids; sequence i must be longer than `starts[i]` and `starts[i] >= 1`.
        batch_size: sequences per forward pass (right-padded with an attention mask).

    Returns:
        One CPU float32 tensor per sequence, shape (len(sequence_i) - starts[i],).
    """
    _check_positive_int(batch_size, "batch_size")
    starts = [1] * len(sequences) if starts is None else starts
    device = _device(model)
    results = []
    with eval_mode(model), torch.no_grad():
        for first in range(0, len(sequences), batch_size):
            batch = sequences[first : first + batch_size]
            input_ids, attention_mask = right_padded(batch, pad_id=0)  # pad id is irrelevant: masked and never scored
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            for row, sequence in enumerate(batch):
                start = starts[first + row]
                # Row by row: a float32 (length, vocab) copy stays small even for large vocabularies.
                row_log_probs = torch.log_softmax(logits[row, start - 1 : len(sequence) - 1].float(), dim=-1)
                targets = input_ids[row, start : len(sequence)].to(device)
                results.append(row_log_probs.gather(-1, targets[:, None]).squeeze(-1).cpu())
    return results


# --------------------------------------------------------------------------------------------------- likelihoods


def sequence_nll(model, tokenizer, texts_or_ids, batch_size: int = 8, max_length: int = 512) -> torch.Tensor:
    """Mean token negative log-likelihood of each sequence (the causal-LM loss of that sequence alone).

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`).
        tokenizer: Its tokenizer; may be None when `texts_or_ids` is already tokenised.
        texts_or_ids: list of strings, list of token-id lists, or a `Dataset` with `text` or `input_ids`.
        batch_size: sequences per forward pass.
        max_length: tokens kept per sequence (truncation from the right).

    Returns:
        float32 tensor of shape (num_sequences,): mean over tokens 2..n of -log p(x_t | x_<t).
    """
    sequences = encode_rows(tokenizer, texts_or_ids, "texts_or_ids", max_length)
    return torch.stack([-values.mean() for values in token_log_probs(model, sequences, batch_size)])


def forget_retain_nll(
    model, tokenizer, forget, retain, batch_size: int = 8, max_length: int = 512
) -> dict[str, float]:
    """{"forget_nll", "retain_nll"}: the mean over sequences of `sequence_nll` on each set."""
    return {
        "forget_nll": float(sequence_nll(model, tokenizer, forget, batch_size, max_length).mean()),
        "retain_nll": float(sequence_nll(model, tokenizer, retain, batch_size, max_length).mean()),
    }


def min_k_percent(model, tokenizer, texts, k: float = 0.2, batch_size: int = 8, max_length: int = 512) -> torch.Tensor:
    """Min-k% Prob membership score (Shi et al., 2024) of each text.

    The mean of the lowest k% token log-probabilities, over max(1, int(k * n)) of the n predicted tokens. Higher
    (closer to 0) means the text looks more like training data; unlearning should lower it on the forget set.

    Returns:
        float32 tensor of shape (num_texts,).
    """
    _check_fraction(k, "k")
    sequences = encode_rows(tokenizer, texts, "texts", max_length)
    return torch.stack([_min_k(values, k) for values in token_log_probs(model, sequences, batch_size)])


def _min_k(values: torch.Tensor, k: float) -> torch.Tensor:
    """Mean of the max(1, int(k * n)) smallest of the n token log-probs in `values` (shape (n,))."""
    return torch.topk(values, max(1, int(k * values.numel())), largest=False).values.mean()


# ------------------------------------------------------------------------------------------- verbatim memorisation


class _ModelTokens:
    """rouge_score tokenizer that splits text into the language model's own tokens (any script, any symbols)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def tokenize(self, text: str) -> list[str]:
        return [str(token) for token in self.tokenizer(text, add_special_tokens=False)["input_ids"]]


def _rouge_scorer(tokenizer, rouge_tokens: str) -> rouge_scorer.RougeScorer:
    _check_choice(rouge_tokens, "rouge_tokens", ROUGE_TOKENS)
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
    input_ids = torch.tensor([prefix], device=_device(model))
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
    _check_choice(rouge_measure, "rouge_measure", ROUGE_MEASURES)
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
        _check_positive_int(max_new_tokens, "max_new_tokens")
    prefix_ids = [tokenizer(prefix)["input_ids"] for prefix in prefixes]
    continuation_ids = [
        tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens] for text in continuations
    ]
    return verbatim_from_ids(model, tokenizer, prefix_ids, continuation_ids, rouge_tokens, rouge_measure)


# ----------------------------------------------------------------------------------------- multiple-choice accuracy


def _checked_questions(questions) -> list[tuple[str, list[str], int]]:
    if isinstance(questions, Dataset):
        questions = list(questions)
    if isinstance(questions, (str, bytes, Mapping)) or not isinstance(questions, Sequence) or not questions:
        raise TypeError("`questions` must be a non-empty list of {'question', 'choices', 'answer'} rows or a Dataset.")
    checked = []
    for index, row in enumerate(questions):
        if not isinstance(row, Mapping):
            raise TypeError(f"`questions[{index}]` must be a mapping, got {type(row).__name__}.")
        question, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"`questions[{index}]['question']` must be a non-empty string, got {question!r}.")
        if (
            isinstance(choices, str)
            or not isinstance(choices, Sequence)
            or not 2 <= len(choices) <= len(LETTERS)
            or not all(isinstance(choice, str) and choice for choice in choices)
        ):
            raise ValueError(f"`questions[{index}]['choices']` must be 2 to 26 non-empty strings, got {choices!r}.")
        if isinstance(answer, bool) or not isinstance(answer, numbers.Integral) or not 0 <= answer < len(choices):
            raise ValueError(
                f"`questions[{index}]['answer']` must be the index of the right choice (0 to {len(choices) - 1}), "
                f"got {answer!r}."
            )
        checked.append((question.strip(), list(choices), int(answer)))
    return checked


def multiple_choice_prompts(question: str, choices: list[str], scoring: str) -> tuple[str, list[str]]:
    """The context and one continuation per choice, as lm-evaluation-harness builds them for WMDP/MMLU.

    "letter": "<question>\\nA. <choice 0>\\nB. <choice 1>...\\nAnswer:" then " A", " B", ...
    "choice": "<question>\\nAnswer:" then " <choice text>".
    """
    if scoring == "letter":
        lines = [question] + [f"{LETTERS[index]}. {choice}" for index, choice in enumerate(choices)]
        return "\n".join(lines) + "\nAnswer:", [f" {LETTERS[index]}" for index in range(len(choices))]
    return f"{question}\nAnswer:", [f" {choice}" for choice in choices]


def multiple_choice_accuracy(
    model, tokenizer, questions, scoring: str = "letter", batch_size: int = 8, max_length: int = 1024
) -> float:
    """Zero-shot multiple-choice accuracy on WMDP-style rows {question, choices (list of str), answer (int index)}.

    The model picks the choice whose continuation has the highest summed log-likelihood after the context; with
    scoring="letter" (default) the continuations are the letters " A", " B", ... after a prompt listing the lettered
    choices, which is lm-evaluation-harness's `acc` on WMDP and MMLU; with scoring="choice" they are the choice
    texts themselves after "<question>\\nAnswer:" (unnormalised summed log-likelihood, favouring short choices).
    Context and continuation are encoded separately (the context with the tokenizer's special tokens), and the
    context is cut from the left when the pair exceeds `max_length`. Ties go to the first choice.
    """
    _check_choice(scoring, "scoring", MC_SCORINGS)
    _check_positive_int(max_length, "max_length")
    rows = _checked_questions(questions)
    sequences, starts = [], []
    for row_index, (question, choices, _) in enumerate(rows):
        context, continuations = multiple_choice_prompts(question, choices, scoring)
        context_ids = tokenizer(context)["input_ids"]
        for continuation in continuations:
            continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            kept = context_ids[max(0, len(context_ids) + len(continuation_ids) - max_length) :]
            if not kept or not continuation_ids:
                raise ValueError(f"`questions[{row_index}]` does not fit in `max_length`={max_length} tokens.")
            sequences.append(kept + continuation_ids)
            starts.append(len(kept))
    totals = [float(values.sum()) for values in token_log_probs(model, sequences, batch_size, starts)]
    correct, position = 0, 0
    for _, choices, answer in rows:
        scores = totals[position : position + len(choices)]
        correct += max(range(len(choices)), key=scores.__getitem__) == answer
        position += len(choices)
    return correct / len(rows)


# ------------------------------------------------------------------------------------------------ all together


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
        min_k.append(float(_min_k(values, k)))
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
    _check_fraction(prefix_fraction, "prefix_fraction", allow_one=False)
    _check_positive_int(max_new_tokens, "max_new_tokens")
    _check_fraction(k, "k")
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
