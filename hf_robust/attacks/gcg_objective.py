"""The GCG objective on the token-search core: the target cross-entropy of one or several behaviours that share a
suffix. The searched sequence is the suffix alone; each behaviour adds its fixed prefix, template tail and target."""

import copy
import inspect
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gcg_layout import SuffixLayout

logger = logging.getLogger(__name__)


def _forward_parameters(model: nn.Module):
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    return inspect.signature(base.forward).parameters


def accepts_logits_to_keep(model: nn.Module) -> bool:
    return "logits_to_keep" in _forward_parameters(model)


def cache_keyword(model: nn.Module) -> str:
    """The forward's key/value-cache argument: `cache` from transformers 5.25, `past_key_values` before."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


class SuffixTargetLoss:
    """Per-row loss (batch,) = mean over behaviours of the token-mean CE of each behaviour's target tokens.

    `loss_from_ids(suffix_ids (batch, L))` and `loss_from_embeds(suffix_embeds (batch, L, hidden))` are the
    `TokenObjective` methods. With `use_prefix_cache`, each behaviour's prefix (the tokens before the suffix) runs
    once and its key/value cache is reused for every candidate; the cache is checked against a full forward first and
    dropped with a warning when they disagree or the architecture refuses it (`self.prefix_cache` says which).
    """

    def __init__(self, model: nn.Module, layouts: list[SuffixLayout], initial_suffix: Tensor, use_prefix_cache: bool):
        self.model = model
        self.embedding = model.get_input_embeddings()
        device = self.embedding.weight.device

        def tensor(ids: list[int]) -> Tensor:
            return torch.tensor([ids], dtype=torch.long, device=device)

        self.prefixes = [tensor(layout.prefix_ids) for layout in layouts]
        self.tails = [tensor(layout.after_ids + layout.target_ids) for layout in layouts]
        self.targets = [tensor(layout.target_ids)[0] for layout in layouts]
        self.caches = None
        self.prefix_cache = False
        if use_prefix_cache:
            self.prefix_cache = self._try_prefix_cache(initial_suffix.unsqueeze(0))

    def _try_prefix_cache(self, suffix: Tensor) -> bool:
        reference = self.loss_from_ids(suffix)
        try:
            with torch.no_grad():
                outputs = [self.model(input_ids=prefix, use_cache=True) for prefix in self.prefixes]
            self.caches = [
                output["cache"] if "cache" in output else output.get("past_key_values") for output in outputs
            ]
            if any(cache is None for cache in self.caches):
                raise ValueError("the forward returned no cache")
            cached = self.loss_from_ids(suffix)
        except (TypeError, ValueError, RuntimeError, AttributeError) as error:
            self.caches = None
            logger.warning("GCG: this model cannot reuse a prefix cache (%s); running full forwards.", error)
            return False
        if not torch.allclose(cached, reference, rtol=1e-3, atol=1e-3):
            self.caches = None
            logger.warning("GCG: the prefix-cached loss %.6g differs from the full forward's %.6g; running full "
                           "forwards.", float(cached[0]), float(reference[0]))
            return False
        return True

    def _logits(self, index: int, suffix_embeds: Tensor | None, suffix_ids: Tensor | None) -> Tensor:
        rows = (suffix_embeds if suffix_embeds is not None else suffix_ids).shape[0]
        n = self.targets[index].numel()
        kwargs = {"logits_to_keep": n + 1} if accepts_logits_to_keep(self.model) else {}
        tail = self.tails[index].expand(rows, -1)
        if self.caches is not None:
            cache = copy.deepcopy(self.caches[index])  # the forward appends to it
            cache.batch_repeat_interleave(rows)
            kwargs.update({cache_keyword(self.model): cache, "use_cache": True})
            pieces = [suffix_ids, tail] if suffix_embeds is None else [suffix_embeds, self.embedding(tail)]
        else:
            kwargs.update(use_cache=False)
            prefix = self.prefixes[index].expand(rows, -1)
            if suffix_embeds is None:
                pieces = [prefix, suffix_ids, tail]
            else:
                pieces = [self.embedding(prefix), suffix_embeds, self.embedding(tail)]
        if suffix_embeds is None:
            return self.model(input_ids=torch.cat(pieces, dim=1), **kwargs).logits
        return self.model(inputs_embeds=torch.cat(pieces, dim=1), **kwargs).logits

    def _losses(self, suffix_embeds: Tensor | None, suffix_ids: Tensor | None) -> Tensor:
        """(behaviours, batch): each behaviour's target token-mean cross-entropy."""
        losses = []
        for index, target in enumerate(self.targets):
            n = target.numel()
            logits = self._logits(index, suffix_embeds, suffix_ids)[:, -n - 1 : -1].float()  # (batch, n, vocab)
            expanded = target.expand(logits.shape[0], -1)
            losses.append(F.cross_entropy(logits.transpose(1, 2), expanded, reduction="none").mean(dim=1))
        return torch.stack(losses)

    def loss_from_embeds(self, suffix_embeds: Tensor) -> Tensor:
        """suffix_embeds: (batch, L, hidden) -> loss (batch,)."""
        return self._losses(suffix_embeds, None).mean(dim=0)

    def loss_from_ids(self, suffix_ids: Tensor) -> Tensor:
        """suffix_ids: (batch, L) -> loss (batch,)."""
        return self._losses(None, suffix_ids).mean(dim=0)

    @torch.no_grad()
    def behaviour_losses(self, suffix_ids: Tensor) -> list[float]:
        """suffix_ids: (L,) -> one loss per behaviour."""
        return self._losses(None, suffix_ids.unsqueeze(0))[:, 0].tolist()

    @torch.no_grad()
    def greedy_matches(self, suffix_ids: Tensor) -> list[bool]:
        """Per behaviour: the target is the argmax at every target position (teacher forcing), i.e. greedy decoding
        of the ids gives the target. suffix_ids: (L,)."""
        matches = []
        for prefix, tail, target in zip(self.prefixes, self.tails, self.targets):
            ids = torch.cat([prefix, suffix_ids.unsqueeze(0), tail], dim=1)
            n = target.numel()
            predicted = self.model(input_ids=ids, use_cache=False).logits[0, -n - 1 : -1].argmax(dim=-1)
            matches.append(bool(torch.equal(predicted, target)))
        return matches
