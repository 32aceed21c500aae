"""Argument checks shared by the configs and public functions: each raises with the argument's name and what is
allowed, so that bad input fails early and says how to fix it."""

import math
import numbers
from collections.abc import Mapping
from typing import Any


def check_number(name: str, value: Any, minimum: float, *, strict: bool = False) -> None:
    """ValueError unless `value` is a finite real number >= `minimum` (> with `strict`); bools are refused."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and (value > minimum if strict else value >= minimum)):
        raise ValueError(f"`{name}` must be a finite number {'>' if strict else '>='} {minimum}, got {value!r}.")


def is_integer(value: Any) -> bool:
    """True for Python and numpy integers, False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_integer(name: str, value: Any, minimum: int) -> None:
    """ValueError unless `value` is an integer >= `minimum`; bools are refused."""
    if not (is_integer(value) and value >= minimum):
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """ValueError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")


def check_texts(name: str, value: Any) -> None:
    """TypeError unless `value` is a list or tuple of strings; ValueError if it is empty."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(text, str) for text in value):
        raise TypeError(f"`{name}` must be a list of strings, got {type(value).__name__}.")
    if len(value) == 0:
        raise ValueError(f"`{name}` must not be empty.")


def checked_behaviours(behaviours: Any) -> list[tuple[str, str]]:
    """[(prompt, target)] from a list of {"prompt", "target"} mappings or a `datasets.Dataset` with those columns.

    Raises:
        TypeError: `behaviours` is a string, a mapping or has no length.
        ValueError: it is empty, or a row lacks a non-empty string prompt or target (the message names the row).
    """
    if isinstance(behaviours, (str, bytes, Mapping)) or not hasattr(behaviours, "__len__"):
        raise TypeError("`behaviours` must be a list of {'prompt', 'target'} mappings or a datasets.Dataset with "
                        f"those columns, got {type(behaviours).__name__}.")
    rows = [behaviours[index] for index in range(len(behaviours))]
    if not rows:
        raise ValueError("`behaviours` is empty: give at least one {'prompt': ..., 'target': ...}.")
    pairs = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping) or not all(isinstance(row.get(key), str) and row.get(key)
                                                   for key in ("prompt", "target")):
            raise ValueError(f"`behaviours[{index}]` must have non-empty string 'prompt' and 'target', got {row!r}.")
        pairs.append((row["prompt"], row["target"]))
    return pairs
