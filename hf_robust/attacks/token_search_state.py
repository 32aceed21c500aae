"""One token search as a stepwise object, so that one search or several in lockstep run the same iteration code.

`TokenSearch` holds everything of one search (current and best sequence, histories, its own CPU generator, the
stopping rules) and runs the iteration of `hf_robust.attacks.discrete` (its module docstring gives the rules) up to
each point where the model is needed; there it hands the request out as a `Proposal`:

- "losses": `ids` (rows, seq), sequences to score; answer with `loss_from_ids(ids)`, Tensor (rows,), float32.
- "token_scores": `ids` (seq,), the current sequence; answer with the averaged token-gradient scores of
  `discrete._token_scores` for this search, Tensor (L, V), float32 (its gradient rows are drawn from
  `search.generator`, so the search's random stream is the same whoever answers).

A driver answers each proposal with `update(values)` until `done`, then reads `result()`. `token_search` is the plain
driver over one search; `hf_robust.attacks.lockstep.lockstep_token_search` answers the proposals of several searches
with one batched forward per kind. The model stays out of this object: that is what lets one forward serve several
searches while the iteration code stays in one place.

Example (what `token_search` does):

    >>> search = TokenSearch(ids, positions, E, allowed, TokenSearchConfig(n_iters=10))
    >>> while not search.done:
    ...     proposal = search.propose()
    ...     search.update(answer(proposal))  # losses or token scores, by `proposal.kind`
    >>> result = search.result()
"""

import logging
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .search_config import TokenSearchConfig, TokenSearchResult

logger = logging.getLogger("hf_robust")

PROPOSAL_KINDS = ("losses", "token_scores")


@dataclass
class Proposal:
    """What a `TokenSearch` needs from the model next.

    Attributes:
        kind: "losses" (answer: losses of `ids`, Tensor (rows,)) or "token_scores" (answer: the averaged token
            scores at the current sequence, Tensor (L, V)).
        ids: LongTensor on the embedding matrix's device: (rows, seq) for "losses", (seq,) for "token_scores".
    """

    kind: str
    ids: Tensor


def _is_integer_dtype(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def gram_matrix(embedding_matrix: Tensor) -> Tensor:
    """M = E.T @ E of the embedding matrix E (V, hidden): Tensor (hidden, hidden), float32 (computed in E's dtype)."""
    weight = embedding_matrix.detach()
    return (weight.T @ weight).float()


def tokenizer_round_trip(tokenizer: Any, positions: Tensor) -> Callable[[Tensor], bool]:
    """The default round-trip rule used by `token_search(..., tokenizer=...)`.

    Returns a callable `ids (seq,) -> bool` that is True when the optimised tokens `ids[positions]` (in the order of
    `positions`) survive text: `tokenizer(tokenizer.decode(span), add_special_tokens=False).input_ids == span`.
    """
    index = positions.detach().cpu()

    def round_trip(ids: Tensor) -> bool:
        span = ids.detach().cpu()[index].tolist()
        return tokenizer(tokenizer.decode(span), add_special_tokens=False).input_ids == span

    return round_trip


def _validate(initial_ids, positions, embedding_matrix, allowed, config, tokenizer, round_trip, callback, stop):
    config = TokenSearchConfig() if config is None else config
    if not isinstance(config, TokenSearchConfig):
        raise TypeError(f"`config` must be a TokenSearchConfig, got {type(config).__name__}.")
    if not isinstance(embedding_matrix, Tensor):
        raise TypeError(f"`embedding_matrix` must be a torch.Tensor, got {type(embedding_matrix).__name__}.")
    if embedding_matrix.dim() != 2 or embedding_matrix.shape[0] == 0 or not embedding_matrix.dtype.is_floating_point:
        raise ValueError(
            "`embedding_matrix` must be a non-empty floating tensor of shape (vocab, hidden), got "
            f"{embedding_matrix.dtype} {tuple(embedding_matrix.shape)}."
        )
    vocab = embedding_matrix.shape[0]
    for name, value in (("initial_ids", initial_ids), ("positions", positions), ("allowed", allowed)):
        if not isinstance(value, Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    if initial_ids.dim() != 1 or initial_ids.numel() == 0 or not _is_integer_dtype(initial_ids.dtype):
        raise ValueError(
            f"`initial_ids` must be a non-empty 1-D integer tensor (seq,), got {initial_ids.dtype} "
            f"{tuple(initial_ids.shape)}."
        )
    if (initial_ids < 0).any() or (initial_ids >= vocab).any():
        raise ValueError(f"`initial_ids` must be token ids in [0, {vocab}) (rows of `embedding_matrix`).")
    seq = initial_ids.shape[0]
    if positions.dim() != 1 or positions.numel() == 0 or not _is_integer_dtype(positions.dtype):
        raise ValueError(
            f"`positions` must be a non-empty 1-D integer tensor (L,), got {positions.dtype} {tuple(positions.shape)}."
        )
    if (positions < 0).any() or (positions >= seq).any():
        raise ValueError(f"`positions` must be indices in [0, {seq}) into `initial_ids`.")
    if positions.unique().numel() != positions.numel():
        raise ValueError("`positions` must not repeat an index.")
    if allowed.dtype != torch.bool or allowed.shape != (vocab,):
        raise ValueError(
            f"`allowed` must be a bool tensor of shape ({vocab},) (rows of `embedding_matrix`), got {allowed.dtype} "
            f"{tuple(allowed.shape)}."
        )
    if not allowed.any():
        raise ValueError("`allowed` must allow at least one token.")
    if round_trip is not None and tokenizer is not None:
        raise ValueError("Pass either `round_trip` or `tokenizer` (for the default round-trip rule), not both.")
    if round_trip is not None and not callable(round_trip):
        raise TypeError(f"`round_trip` must be a callable ids (seq,) -> bool, got {type(round_trip).__name__}.")
    if tokenizer is not None and not (callable(tokenizer) and callable(getattr(tokenizer, "decode", None))):
        raise TypeError(f"`tokenizer` must be a Hugging Face tokenizer, got {type(tokenizer).__name__}.")
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` must be a callable (iteration, loss) -> None, got {type(callback).__name__}.")
    if stop is not None and not callable(stop):
        raise TypeError(f"`stop` must be a callable ids (seq,) -> bool, got {type(stop).__name__}.")
    return config


class TokenSearch:
    """The state of one token search, stepped from outside (module docstring).

    Args:
        initial_ids, positions, embedding_matrix, allowed, config, tokenizer, round_trip, callback, stop: As in
            `hf_robust.attacks.discrete.token_search` (validated the same way, with the same errors).

    Attributes read by drivers: `config`, `positions` (L,) and `embedding_matrix` (V, hidden) on its device,
    `allowed_ids` (n_allowed,) on CPU, `generator` (the search's CPU generator), `gram` ((hidden, hidden) or None).
    """

    def __init__(self, initial_ids: Tensor, positions: Tensor, embedding_matrix: Tensor, allowed: Tensor,
                 config: TokenSearchConfig | None = None, *, tokenizer: Any = None,
                 round_trip: Callable[[Tensor], bool] | None = None,
                 callback: Callable[[int, float], None] | None = None, stop: Callable[[Tensor], bool] | None = None):
        self.config = _validate(initial_ids, positions, embedding_matrix, allowed, config, tokenizer, round_trip,
                                callback, stop)
        self.start = time.perf_counter()
        device = embedding_matrix.device
        self.embedding_matrix = embedding_matrix
        self.output_device = initial_ids.device
        self.positions = positions.to(device=device, dtype=torch.long)
        self.initial_ids = initial_ids.to(device=device, dtype=torch.long).clone()
        self.round_trip = tokenizer_round_trip(tokenizer, self.positions) if tokenizer is not None else round_trip
        self.callback, self.stop = callback, stop
        self.allowed = allowed.to(device)
        self.allowed_ids = self.allowed.nonzero().flatten().cpu()
        self.generator = torch.Generator().manual_seed(self.config.seed)
        needs_gram = self.config.normalize_gradient and self.config.n_grad > 1
        self.gram = gram_matrix(embedding_matrix) if needs_gram else None  # built once per search, not per iteration
        self._result: TokenSearchResult | None = None
        # The iteration is a generator: it reads as the plain loop it is, and each `yield` is where a driver's
        # forward pass comes in.
        self._steps = self._search()
        self._proposal: Proposal | None = next(self._steps)

    @property
    def done(self) -> bool:
        """True once a stopping rule ended the search (or an error did); `result()` is then available."""
        return self._proposal is None

    def propose(self) -> Proposal:
        """The pending request (the same object until `update` answers it). RuntimeError once `done`."""
        if self._proposal is None:
            raise RuntimeError("The token search is done: read `result()`.")
        return self._proposal

    def update(self, values: Tensor) -> None:
        """Answer the pending proposal: losses (rows,) for "losses", scores (L, V) for "token_scores"."""
        if self._proposal is None:
            raise RuntimeError("The token search is done: there is no proposal to answer.")
        try:
            self._proposal = self._steps.send(values)
        except StopIteration:
            self._proposal = None
        except BaseException:
            self._proposal = None  # the generator is finished; result() says the search did not end
            raise

    def close(self) -> None:
        """End the search where it is (closes its progress bar); a driver calls it when it stops driving early."""
        self._steps.close()
        self._proposal = None

    def result(self) -> TokenSearchResult:
        """The `TokenSearchResult` (see `token_search`). RuntimeError before the search ended by a stopping rule."""
        if self._result is None:
            raise RuntimeError("The token search has not finished: answer its proposals until `done`.")
        return self._result

    def _search(self) -> Generator[Proposal, Tensor, None]:
        config, positions, allowed_ids = self.config, self.positions, self.allowed_ids
        ids = self.initial_ids
        length = positions.shape[0]
        topk = min(config.topk, allowed_ids.numel())
        n_top = min(config.n_top_candidates, topk)
        n_sampled = config.n_candidates - n_top if topk > n_top else 0
        n_flip = config.n_flip if config.n_flip <= length else max(1, int(0.67 * length))

        loss = float((yield Proposal("losses", ids.unsqueeze(0)))[0])
        history = [loss]
        best_ids, best_loss = ids, loss
        best_losses = [loss]  # the lowest loss up to each iteration: the patience rule's series
        trajectory = [ids[positions].cpu()]
        buffer = [(loss, ids)]  # 'batch' step with buffer_size >= 1: the best sequences seen, ascending loss
        logger.debug("token_search: L=%d, V=%d, %d allowed, initial loss %.6g", length, self.allowed.numel(),
                     allowed_ids.numel(), loss)
        iterations, reason, iteration_seconds = 0, "n_iters", []
        bar = tqdm(total=config.n_iters, desc="token search", disable=not config.progress)
        try:
            for _ in range(config.n_iters):
                if config.early_stop is not None and best_loss <= config.early_stop:
                    reason = "early_stop"
                    break
                if config.time_limit is not None and time.perf_counter() - self.start >= config.time_limit:
                    reason = "time_limit"
                    break
                began = time.perf_counter()
                scores = yield Proposal("token_scores", ids)
                scores = scores.masked_fill(~self.allowed, -math.inf)
                top = scores.topk(topk, dim=-1).indices.cpu()  # (L, topk)
                if config.step == "coordinate":
                    ids, loss = yield from _coordinate_step(ids, loss, positions, top, n_flip, n_top, n_sampled,
                                                            self.round_trip, self.generator)
                else:
                    ids, loss = yield from _batch_step(ids, loss, positions, top, config, self.round_trip,
                                                       self.generator, buffer)
                if loss < best_loss:
                    best_ids, best_loss = ids, loss
                iterations += 1
                history.append(loss)
                best_losses.append(best_loss)
                trajectory.append(ids[positions].cpu())
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}", best=f"{best_loss:.4g}")
                logger.debug("token_search: iteration %d, loss %.6g", iterations, loss)
                if self.callback is not None:
                    self.callback(iterations, loss)
                stop_now = self.stop is not None and bool(self.stop(best_ids))
                iteration_seconds.append(time.perf_counter() - began)
                if stop_now:
                    reason = "stop"
                    break
                if config.plateaued(best_losses):
                    reason = "patience"
                    break
        finally:
            bar.close()
        seconds = time.perf_counter() - self.start
        logger.debug("token_search: %d iterations (%s), loss %.6g -> %.6g in %.2fs", iterations, reason, history[0],
                     best_loss, seconds)
        self._result = TokenSearchResult(
            ids=best_ids.to(self.output_device), loss=best_loss, history=history, iterations=iterations,
            seconds=seconds, stopped=reason == "stop", iteration_seconds=iteration_seconds, stop_reason=reason,
            trajectory=torch.stack(trajectory),
        )


def _coordinate_step(ids, loss, positions, top, n_flip, n_top, n_sampled, round_trip,
                     generator) -> Generator[Proposal, Tensor, tuple[Tensor, float]]:
    """GASLITE's greedy multi-coordinate step: keep a swap only if it lowers the loss and passes the round trip."""
    length, topk = top.shape
    flips = torch.randperm(length, generator=generator)[:n_flip].sort().values
    for index in flips.tolist():
        tokens = top[index, :n_top]
        if n_sampled:
            ranks = torch.randint(n_top, topk, (n_sampled,), generator=generator)
            tokens = torch.cat([tokens, top[index, ranks]])
        current = int(ids[positions[index]])
        # Deduplicate in first-seen order; the current token is the unflipped sequence, scored already.
        seen, unique = {current}, []
        for token in tokens.tolist():
            if token not in seen:
                seen.add(token)
                unique.append(token)
        if not unique:
            continue
        candidates = ids.unsqueeze(0).repeat(len(unique), 1)
        candidates[:, positions[index]] = torch.tensor(unique, device=ids.device)
        losses = (yield Proposal("losses", candidates)).cpu()
        for row in torch.sort(losses, stable=True).indices.tolist():
            if not float(losses[row]) < loss:
                break  # the current sequence is next in ascending order: keep it
            if round_trip is None or bool(round_trip(candidates[row])):
                ids, loss = candidates[row].clone(), float(losses[row])
                break
    return ids, loss


def _batch_step(ids, loss, positions, top, config, round_trip, generator,
                buffer) -> Generator[Proposal, Tensor, tuple[Tensor, float]]:
    """GCG's step: `n_candidates` candidates spread over random positions, each `n_replace` positions set to tokens
    drawn uniformly from their top-k lists; candidates failing the round trip are dropped before scoring."""
    length, topk = top.shape
    n_replace = min(config.n_replace, length)
    at = torch.rand(config.n_candidates, length, generator=generator).argsort(dim=1)[:, :n_replace]  # (W, r)
    ranks = torch.randint(topk, (config.n_candidates, n_replace), generator=generator)
    candidates = ids.cpu().unsqueeze(0).repeat(config.n_candidates, 1)
    candidates.scatter_(1, positions.cpu()[at], top[at, ranks])
    candidates = candidates[_first_occurrences(candidates)]
    candidates = candidates[(candidates != ids.cpu()).any(dim=1)]  # a candidate equal to the iterate is no move
    if round_trip is not None and candidates.shape[0]:
        candidates = candidates[torch.tensor([bool(round_trip(row)) for row in candidates], dtype=torch.bool)]
    if not candidates.shape[0]:
        logger.debug("token_search: no candidate survived the round trip; the iterate stays")
        return ids, loss
    candidates = candidates.to(ids.device)
    losses = (yield Proposal("losses", candidates)).cpu()
    row = int(losses.argmin())
    found, found_loss = candidates[row].clone(), float(losses[row])
    if config.buffer_size == 0:
        return found, found_loss  # GCG: the batch's best, even when worse than the iterate
    if len(buffer) < config.buffer_size:
        buffer.append((found_loss, found))
    elif found_loss < buffer[-1][0]:
        buffer[-1] = (found_loss, found)
    buffer.sort(key=lambda item: item[0])
    return buffer[0][1], buffer[0][0]


def _first_occurrences(rows: Tensor) -> Tensor:
    """Indices of the first occurrence of each distinct row, in first-seen order: LongTensor (n_unique,)."""
    seen, keep = set(), []
    for index, row in enumerate(rows.tolist()):
        key = tuple(row)
        if key not in seen:
            seen.add(key)
            keep.append(index)
    return torch.tensor(keep, dtype=torch.long)
