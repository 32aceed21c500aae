"""Multiple-choice accuracy on WMDP-style questions, scored by letter or by the choice text."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

from datasets import Dataset

from .inputs import check_choice, check_positive_int
from .likelihood import token_log_probs

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MC_SCORINGS = ("letter", "choice")


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
    check_choice(scoring, "scoring", MC_SCORINGS)
    check_positive_int(max_length, "max_length")
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
