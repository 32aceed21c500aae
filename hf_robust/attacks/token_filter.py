"""Which tokens a discrete attack may place: `allowed_token_mask` and its config form `TokenFilter`.

The mask is built by decoding every token of the vocabulary once (about 0.4 s for BERT's 30,522 tokens on a CPU), so it
is cached per tokenizer object (weakly: the cache entry goes with the tokenizer) and per settings; every call returns
a fresh copy, which the caller may modify.
"""

import re
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..checks import is_integer

_UNUSED_TOKEN = re.compile(r"\[unused\d+\]")
# tokenizer -> {(len(tokenizer), num_embeddings, flags...): mask}; len(tokenizer) changes when tokens are added.
_MASKS: "weakref.WeakKeyDictionary[Any, dict[tuple, Tensor]]" = weakref.WeakKeyDictionary()


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def allowed_token_mask(
    tokenizer: Any,
    *,
    num_embeddings: int | None = None,
    ascii_only: bool = True,
    printable_only: bool = True,
    exclude_special: bool = True,
    exclude_unused: bool = True,
) -> Tensor:
    """Tokens a discrete attack may place: a bool mask over the rows of the input embedding matrix.

    A token id i < len(tokenizer) is disallowed when `tokenizer.decode([i])` is empty, or (each switchable)
    - `exclude_special`: i is in `tokenizer.all_special_ids` or is an added token marked special;
    - `ascii_only`: the decoded text is not ASCII (this includes the U+FFFD of partial UTF-8 byte tokens);
    - `printable_only`: the decoded text is not `str.isprintable()` (control characters, newlines, tabs);
    - `exclude_unused`: the token string or its decoding is a BERT placeholder `[unusedN]`.
    Rows of the embedding matrix beyond the tokenizer (`i >= len(tokenizer)`, padding rows) are always disallowed.
    The mask is computed once per tokenizer object and settings (a tokenizer whose length changed, e.g. by added
    tokens, is decoded again).

    Args:
        tokenizer: A Hugging Face tokenizer.
        num_embeddings: Number of rows of the input embedding matrix, i.e. the mask length. None: `len(tokenizer)`.
        ascii_only, printable_only, exclude_special, exclude_unused: The filters above.

    Returns:
        Tensor, shape (num_embeddings,), bool, on CPU (a new tensor on every call). True where the token is allowed.

    Raises:
        TypeError: `tokenizer` lacks `decode`/`__len__`, or a flag is not a bool.
        ValueError: `num_embeddings` is not a positive integer.
    """
    if not callable(getattr(tokenizer, "decode", None)) or not hasattr(tokenizer, "__len__"):
        raise TypeError(
            f"`tokenizer` must be a Hugging Face tokenizer (decode, __len__), got {type(tokenizer).__name__}."
        )
    flags = (("ascii_only", ascii_only), ("printable_only", printable_only), ("exclude_special", exclude_special),
             ("exclude_unused", exclude_unused))
    for name, value in flags:
        if not _is_bool(value):
            raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    vocab = len(tokenizer)
    if num_embeddings is None:
        num_embeddings = vocab
    if not is_integer(num_embeddings) or num_embeddings <= 0:
        raise ValueError(f"`num_embeddings` must be None or an integer > 0, got {num_embeddings!r}.")
    key = (vocab, int(num_embeddings), ascii_only, printable_only, exclude_special, exclude_unused)
    try:
        cached = _MASKS.setdefault(tokenizer, {})
    except TypeError:  # an object that cannot be weakly referenced or hashed: no cache
        cached = {}
    if key not in cached:
        cached[key] = _build_mask(tokenizer, vocab, int(num_embeddings), ascii_only, printable_only, exclude_special,
                                  exclude_unused)
    return cached[key].clone()


def _build_mask(tokenizer: Any, vocab: int, num_embeddings: int, ascii_only: bool, printable_only: bool,
                exclude_special: bool, exclude_unused: bool) -> Tensor:
    mask = torch.zeros(num_embeddings, dtype=torch.bool)
    special = set()
    if exclude_special:
        special.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
        for i, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(token, "special", False):
                special.add(int(i))
    for i in range(min(vocab, num_embeddings)):
        if i in special:
            continue
        text = tokenizer.decode([i])
        if not text:
            continue
        if ascii_only and not text.isascii():
            continue
        if printable_only and not text.isprintable():
            continue
        if exclude_unused:
            token = tokenizer.convert_ids_to_tokens(i) if hasattr(tokenizer, "convert_ids_to_tokens") else None
            if _UNUSED_TOKEN.fullmatch(text.strip()) or (isinstance(token, str) and _UNUSED_TOKEN.fullmatch(token)):
                continue
        mask[i] = True
    return mask


@dataclass
class TokenFilter:
    """Which tokens a discrete attack may place; `mask(tokenizer, num_embeddings)` calls `allowed_token_mask`."""

    ascii_only: bool = field(default=True, metadata={"help": "Disallow tokens whose decoding is not ASCII."})
    printable_only: bool = field(
        default=True, metadata={"help": "Disallow tokens whose decoding is not printable (str.isprintable)."}
    )
    exclude_special: bool = field(default=True, metadata={"help": "Disallow the tokenizer's special tokens."})
    exclude_unused: bool = field(default=True, metadata={"help": "Disallow BERT placeholder tokens [unusedN]."})

    def __post_init__(self):
        for name in ("ascii_only", "printable_only", "exclude_special", "exclude_unused"):
            if not _is_bool(getattr(self, name)):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")

    def mask(self, tokenizer: Any, num_embeddings: int | None = None) -> Tensor:
        """Tensor, shape (num_embeddings,), bool: see `allowed_token_mask`."""
        return allowed_token_mask(
            tokenizer,
            num_embeddings=num_embeddings,
            ascii_only=self.ascii_only,
            printable_only=self.printable_only,
            exclude_special=self.exclude_special,
            exclude_unused=self.exclude_unused,
        )
