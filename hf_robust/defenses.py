"""Defenses against corpus poisoning: filters that drop suspicious passages from a retrieval corpus.

A defense is any object with a `name` and `keep(passages, embeddings) -> BoolTensor (n,)` (True = the passage stays
in the index), plus an optional `fit(clean_passages, embeddings)` that calibrates it on a clean corpus.
`hf_robust.retrieval.evaluate.evaluate_poisoning(..., defense=...)` fits a defense whose `threshold` is None on the
clean corpus, filters the corpus and the adversarial passages, and reports the attack after filtering together with
the share of clean passages the filter removed.

- `PerplexityFilter`: perplexity of each passage under a causal LM; adversarial triggers are gibberish, so their
  perplexity is high.
- `NormFilter`: L2 norm of the passage embedding; on dot-product retrievers an attack can win by inflating the norm.
  (For cosine retrievers every embedding has norm 1 and the filter is meaningless.)

Both remove a passage when its score is above `threshold`; with `threshold=None`, `fit` sets it to the
`clean_quantile` quantile of the clean corpus's scores, so about (1 - clean_quantile) of clean passages are removed.
"""

import abc
import numbers
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.nn import functional

from .modeling import eval_mode
from .checks import check_integer, check_texts

__all__ = ["Defense", "NormFilter", "PerplexityFilter"]


@runtime_checkable
class Defense(Protocol):
    """A passage filter: `keep` returns a BoolTensor of shape (len(passages),), True for passages that survive."""

    name: str

    def keep(self, passages: list[str], embeddings: Tensor | None) -> Tensor: ...




class _ThresholdFilter(abc.ABC):
    """Removes passages whose `scores` exceed `threshold`; `fit` calibrates the threshold as a clean quantile."""

    name = "threshold_filter"

    def __init__(self, threshold: float | None = None, clean_quantile: float = 0.99):
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)):
            raise ValueError(f"`threshold` must be None or a number, got {threshold!r}")
        if isinstance(clean_quantile, bool) or not isinstance(clean_quantile, numbers.Real):
            raise ValueError(f"`clean_quantile` must be a number in (0, 1], got {clean_quantile!r}")
        if not 0 < clean_quantile <= 1:
            raise ValueError(f"`clean_quantile` must be in (0, 1], got {clean_quantile!r}")
        self.threshold = None if threshold is None else float(threshold)
        self.clean_quantile = float(clean_quantile)

    @abc.abstractmethod
    def scores(self, passages: list[str], embeddings: Tensor | None) -> Tensor:
        """Per-passage score, Tensor (len(passages),); higher = more suspicious. Each filter defines its own."""

    def fit(self, clean_passages: list[str], embeddings: Tensor | None = None) -> "_ThresholdFilter":
        """Set `threshold` to the `clean_quantile` quantile (linear interpolation) of the clean passages' scores."""
        scores = self.scores(clean_passages, embeddings).double().cpu()
        self.threshold = torch.quantile(scores, self.clean_quantile).item()
        return self

    def keep(self, passages: list[str], embeddings: Tensor | None = None) -> Tensor:
        """BoolTensor (len(passages),): True where the score is <= `threshold`.

        Raises:
            RuntimeError: no threshold yet (pass one or call `fit`).
        """
        if self.threshold is None:
            raise RuntimeError(f"{type(self).__name__} has no threshold: pass `threshold` or call fit() first")
        return (self.scores(passages, embeddings) <= self.threshold).cpu()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold}, clean_quantile={self.clean_quantile})"


class PerplexityFilter(_ThresholdFilter):
    """Removes passages whose perplexity under a causal LM exceeds `threshold`.

    Perplexity = exp(mean next-token NLL) over the passage's tokens as the tokenizer encodes them (special tokens
    such as BOS included where the tokenizer adds them), truncated to `max_length` tokens. Rows are right-padded by
    hand (the tokenizer is not changed), padding is masked and labelled -100, so padding never changes a score.

    Args:
        model: any Hugging Face causal LM (`model(input_ids, attention_mask).logits`), e.g. from `load_smollm2()`.
        tokenizer: its tokenizer.
        threshold: perplexity above which a passage is removed; None = calibrate with `fit`.
        clean_quantile: quantile of clean perplexities `fit` uses as the threshold.
        batch_size: passages per forward (passages are sorted by length to limit padding).
        max_length: tokens kept per passage.
        cache: remember each text's perplexity, so that filtering the same clean corpus against many attacks scores
            it once (the LM is assumed frozen while the filter is used).
    """

    name = "perplexity_filter"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        threshold: float | None = None,
        clean_quantile: float = 0.99,
        batch_size: int = 16,
        max_length: int = 256,
        cache: bool = True,
    ):
        super().__init__(threshold, clean_quantile)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a causal LM (torch.nn.Module), got {type(model).__name__}")
        if not callable(tokenizer):
            raise TypeError(f"`tokenizer` must be a tokenizer, got {type(tokenizer).__name__}")
        check_integer("batch_size", batch_size, 1)
        check_integer("max_length", max_length, 1)
        if max_length < 2:
            raise ValueError(f"`max_length` must be >= 2 (one predicted token), got {max_length}")
        self.model, self.tokenizer = model, tokenizer
        if not isinstance(cache, bool):
            raise ValueError(f"`cache` must be True or False, got {cache!r}")
        self.batch_size, self.max_length = batch_size, max_length
        self._cache: dict[str, float] | None = {} if cache else None

    @torch.no_grad()
    def perplexity(self, passages: list[str]) -> Tensor:
        """Perplexity of each passage: Tensor, shape (len(passages),), float32 on CPU.

        Raises:
            ValueError: `passages` empty or not strings, or a passage with fewer than 2 tokens (nothing to predict).
        """
        check_texts("passages", passages)
        if self._cache is None:
            return self._perplexity(list(passages))
        missing = list(dict.fromkeys(text for text in passages if text not in self._cache))
        if missing:
            self._cache.update(zip(missing, self._perplexity(missing).tolist()))
        return torch.tensor([self._cache[text] for text in passages], dtype=torch.float32)

    def _perplexity(self, passages: list[str]) -> Tensor:
        ids = self.tokenizer(passages, truncation=True, max_length=self.max_length).input_ids
        short = [index for index, row in enumerate(ids) if len(row) < 2]
        if short:
            raise ValueError(f"`passages` {short[:5]} have fewer than 2 tokens: perplexity needs a predicted token")
        device = next(self.model.parameters()).device
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        order = sorted(range(len(ids)), key=lambda index: len(ids[index]))
        result = torch.empty(len(ids), dtype=torch.float32)
        with eval_mode(self.model):
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                width = max(len(ids[index]) for index in chunk)
                input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, index in enumerate(chunk):
                    input_ids[row, : len(ids[index])] = torch.tensor(ids[index])
                    attention_mask[row, : len(ids[index])] = 1
                labels = input_ids.masked_fill(attention_mask == 0, -100)
                logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
                nll = functional.cross_entropy(
                    logits[:, :-1].float().transpose(1, 2), labels[:, 1:].to(device), reduction="none"
                )  # (batch, width - 1), 0 where the label is -100
                counts = (labels[:, 1:] != -100).sum(dim=1).to(device)
                result[chunk] = torch.exp(nll.sum(dim=1) / counts).float().cpu()
        return result

    def scores(self, passages: list[str], embeddings: Tensor | None = None) -> Tensor:
        return self.perplexity(passages)


class NormFilter(_ThresholdFilter):
    """Removes passages whose embedding L2 norm exceeds `threshold` (for dot-product retrievers).

    Args:
        threshold: norm above which a passage is removed; None = calibrate with `fit`.
        clean_quantile: quantile of clean norms `fit` uses as the threshold.
    """

    name = "norm_filter"

    def scores(self, passages: list[str], embeddings: Tensor | None = None) -> Tensor:
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 2 or embeddings.shape[0] != len(passages):
            shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise ValueError(
                f"`embeddings` must be a tensor of shape (len(passages), dim) = ({len(passages)}, dim), got {shape}"
            )
        return embeddings.detach().float().norm(dim=-1).cpu()
