"""The metrics' inputs: texts or token ids (lists or a `datasets.Dataset`), and the checks of their arguments."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch
from datasets import Dataset


def check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


def check_fraction(value, name: str, *, allow_one: bool = True) -> None:
    upper_ok = value <= 1 if allow_one else value < 1
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value and upper_ok):
        bound = "<= 1" if allow_one else "< 1"
        raise ValueError(f"`{name}` must be a number > 0 and {bound}, got {value!r}.")


def check_choice(value, name: str, choices: Sequence[str]) -> None:
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
    check_positive_int(max_length, "max_length")
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
