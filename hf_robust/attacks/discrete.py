"""Gradient-guided discrete token search: the one token-search loop of hf-robust.

`token_search(objective, initial_ids, positions, embedding_matrix, allowed, config)` changes the tokens of
`initial_ids` at `positions` to minimise a per-row loss. GASLITE (passage embedding -> query centroid, loss = negated
similarity), GCG (causal-LM target cross-entropy of a suffix) and prompt attacks on CLIP text encoders are objectives
plugged into this loop; the loop itself knows nothing about the model.

One iteration:

1. **Gradient.** The token gradient is the gradient of the loss with respect to a one-hot matrix X of shape
   (rows, L, V) (L = len(positions), V = vocabulary rows of the embedding matrix E) whose product `X @ E` gives the
   input embeddings at `positions` (the detached `E[ids]` elsewhere). With G = d loss / d embeds, shape
   (rows, L, hidden), it is exactly `G @ E.T`, so X is never built: the loop differentiates `E[ids]` directly
   (`torch.autograd.grad` of `loss.sum()`, cast to float32). With `n_grad > 1`, row 0 is the current sequence and each
   other row changes one random optimised position to a random allowed token (GASLITE); each (row, position)
   gradient is L2-normalised over the vocabulary (`normalize_gradient`) and the rows are averaged. The Gram form
   computes this without any (rows, L, V) tensor: the norm is `||G[r, p] @ E.T|| = sqrt(G[r, p] @ M @ G[r, p])` with
   M = E.T @ E, shape (hidden, hidden), built once per search, and the average is
   `(mean_r G[r, p] / ||G[r, p] @ E.T||) @ E.T`: one (L, hidden) x (hidden, V) product per iteration instead of the
   (rows, L, V) x (V, hidden) one-hot product and its backward. With `n_grad = 1` the normalisation is skipped (it
   would rescale each position's scores by a positive number, leaving every ranking unchanged).
2. **Candidates.** Disallowed tokens get -inf in the negated gradient; the `topk` best tokens per position are kept.
3. **Step** (`config.step`). 'coordinate' (GASLITE), a greedy multi-coordinate step: `n_flip` distinct random
   positions are visited in sorted order. At each, the candidate tokens are the top `n_top_candidates` of the top-k
   list plus `n_candidates - n_top_candidates` tokens drawn with replacement from ranks `n_top_candidates..topk-1`,
   deduplicated, without the current token. Each candidate sequence differs from the current one at that position
   only; they are scored by `loss_from_ids` under `torch.no_grad()` in chunks of `batch_size`. The current
   (unflipped) sequence is always a candidate: candidates are taken in ascending-loss order and the first one with a
   strictly lower loss that passes the round-trip rule replaces the current sequence; if none does, the sequence is
   kept. So the loss never increases.
   'batch' (GCG, Zou et al. 2023, as nanoGCG 0.3): `n_candidates` candidates, each with `n_replace` distinct random
   positions set to tokens drawn uniformly from those positions' top-k lists (so a batch spreads over many
   positions); duplicates and candidates failing the round-trip rule are dropped before scoring; the search moves to
   the batch's best candidate even when it is worse (`buffer_size=0`) or keeps nanoGCG's buffer of the
   `buffer_size` best sequences and continues from the best of them. The best sequence ever scored is returned.

4. **Stopping.** `n_iters`, `time_limit`, `early_stop`, the `stop` callable, and the patience rule (`patience`,
   `min_delta`: stop once the best loss fell by at most `min_delta` over the last `patience` iterations); the result
   says which one ended the search (`stop_reason`) and how long every iteration took (`iteration_seconds`).

The model is never touched by the loop: gradients are taken with `torch.autograd.grad` with respect to the input
embeddings only, so no parameter `.grad` is created. Train/eval mode is the objective's business (see
`hf_robust.attacks.eval_mode`). Randomness comes from a local CPU `torch.Generator` seeded with `config.seed` (the
global RNG is untouched), so a seed gives the same search on every device up to floating-point ties.

Example (GCG-like, `model` a causal LM, the suffix at `positions`, the target after it):

    >>> E = model.get_input_embeddings().weight
    >>> allowed = allowed_token_mask(tokenizer, num_embeddings=E.shape[0])
    >>> result = token_search(objective, ids, positions, E, allowed, TokenSearchConfig(n_iters=50),
    ...                       tokenizer=tokenizer)
    >>> adversarial_ids = result.ids
"""

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .search_config import STOP_REASONS, TokenObjective, TokenSearchConfig, TokenSearchResult
from .token_filter import TokenFilter, allowed_token_mask

__all__ = ["STOP_REASONS", "TokenFilter", "TokenObjective", "TokenSearchConfig", "TokenSearchResult",
           "allowed_token_mask", "token_search", "tokenizer_round_trip"]

logger = logging.getLogger("hf_robust")


def _is_integer_dtype(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


class _CallableObjective:
    def __init__(self, function: Callable[[Tensor], Tensor], embedding_matrix: Tensor):
        self.function = function
        self.embedding_matrix = embedding_matrix

    def loss_from_embeds(self, inputs_embeds: Tensor) -> Tensor:
        return self.function(inputs_embeds)

    def loss_from_ids(self, input_ids: Tensor) -> Tensor:
        return self.function(self.embedding_matrix[input_ids])


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


# --------------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------------


def _checked_loss(loss: Any, rows: int, method: str) -> Tensor:
    if not isinstance(loss, Tensor) or loss.shape != (rows,) or not loss.dtype.is_floating_point:
        got = f"shape {tuple(loss.shape)}, dtype {loss.dtype}" if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"`objective.{method}` must return a floating tensor of shape ({rows},), got {got}.")
    return loss


def _validate(objective, initial_ids, positions, embedding_matrix, allowed, config, tokenizer, round_trip, callback,
              stop):
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
    if not isinstance(objective, TokenObjective) and callable(objective):
        objective = _CallableObjective(objective, embedding_matrix.detach())
    if not isinstance(objective, TokenObjective):
        raise TypeError(
            "`objective` must have `loss_from_embeds(embeds) -> (batch,)` and `loss_from_ids(ids) -> (batch,)`, "
            f"or be a callable embeds (batch, seq, hidden) -> loss (batch,); got {type(objective).__name__}."
        )
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
    return objective, config


def gram_matrix(embedding_matrix: Tensor) -> Tensor:
    """M = E.T @ E of the embedding matrix E (V, hidden): Tensor (hidden, hidden), float32 (computed in E's dtype)."""
    weight = embedding_matrix.detach()
    return (weight.T @ weight).float()


def _token_scores(
    objective: TokenObjective,
    ids: Tensor,
    positions: Tensor,
    embedding_matrix: Tensor,
    allowed_ids: Tensor,
    config: TokenSearchConfig,
    generator: torch.Generator,
    gram: Tensor | None = None,
) -> Tensor:
    """Averaged, per-(row, position) normalised NEGATIVE one-hot token gradient (module docstring, step 1).

    Args:
        ids: LongTensor (seq,), the current sequence; positions: LongTensor (L,); embedding_matrix: E, (V, hidden);
        allowed_ids: LongTensor (n_allowed,) on CPU, the tokens the perturbed gradient rows may use;
        gram: `gram_matrix(E)`, (hidden, hidden), needed when `config.normalize_gradient` and `config.n_grad > 1`.

    Returns:
        Tensor (L, V), float32: `-(1 / n_grad) sum_r normalise_V(dloss/dX[r])` (normalise_V = identity when
        `n_grad == 1` or not `normalize_gradient`); higher = better token. The Gram form gives the one-hot form's
        scores up to float rounding (tests/attacks/test_discrete.py: 1e-6 on a tiny BERT).
    """
    weight = embedding_matrix.detach()
    length = positions.shape[0]
    rows = ids.unsqueeze(0).repeat(config.n_grad, 1)
    if config.n_grad > 1:
        # Row 0 is the current sequence; each other row changes one random optimised position to a random allowed
        # token. Drawn on CPU so a seed gives the same rows on every device.
        at = torch.randint(length, (config.n_grad - 1,), generator=generator)
        token = allowed_ids[torch.randint(allowed_ids.numel(), (config.n_grad - 1,), generator=generator)]
        rows[torch.arange(1, config.n_grad), positions.cpu()[at].to(ids.device)] = token.to(ids.device)
    normalize = config.normalize_gradient and config.n_grad > 1
    if normalize and gram is None:
        gram = gram_matrix(weight)
    total = torch.zeros(length, weight.shape[1], dtype=torch.float32, device=weight.device)
    for chunk in rows.split(config.batch_size):
        with torch.enable_grad():
            embeds = weight[chunk].requires_grad_(True)  # == (one-hot @ E) at `positions`, bit for bit
            loss = _checked_loss(objective.loss_from_embeds(embeds), chunk.shape[0], "loss_from_embeds")
            (grad,) = torch.autograd.grad(loss.sum(), embeds)
        grad = grad[:, positions].float()  # G, (chunk, L, hidden)
        if normalize:
            # ||G[r, p] @ E.T||^2 = G[r, p] @ M @ G[r, p]: the one-hot gradient's norm over the vocabulary.
            norm = ((grad @ gram) * grad).sum(dim=-1).clamp_min(0).sqrt()
            grad = grad / norm.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(-1)
        total += grad.sum(dim=0)
    mean = -total / config.n_grad  # (L, hidden)
    return (mean.to(weight.dtype) @ weight.T).float()  # (L, V)


@torch.no_grad()
def _score(objective: TokenObjective, candidates: Tensor, batch_size: int) -> Tensor:
    losses = [
        _checked_loss(objective.loss_from_ids(chunk), chunk.shape[0], "loss_from_ids").float()
        for chunk in candidates.split(batch_size)
    ]
    return torch.cat(losses)


def _coordinate_step(objective, ids, loss, positions, top, n_flip, n_top, n_sampled, batch_size, round_trip,
                     generator) -> tuple[Tensor, float]:
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
        losses = _score(objective, candidates, batch_size).cpu()
        for row in torch.sort(losses, stable=True).indices.tolist():
            if not float(losses[row]) < loss:
                break  # the current sequence is next in ascending order: keep it
            if round_trip is None or bool(round_trip(candidates[row])):
                ids, loss = candidates[row].clone(), float(losses[row])
                break
    return ids, loss


def _batch_step(objective, ids, loss, positions, top, config, round_trip, generator, buffer) -> tuple[Tensor, float]:
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
    losses = _score(objective, candidates, config.batch_size).cpu()
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


def token_search(
    objective: TokenObjective | Callable[[Tensor], Tensor],
    initial_ids: Tensor,
    positions: Tensor,
    embedding_matrix: Tensor,
    allowed: Tensor,
    config: TokenSearchConfig | None = None,
    *,
    tokenizer: Any = None,
    round_trip: Callable[[Tensor], bool] | None = None,
    callback: Callable[[int, float], None] | None = None,
    stop: Callable[[Tensor], bool] | None = None,
) -> TokenSearchResult:
    """Gradient-guided greedy token search minimising `objective` over the tokens at `positions` (module docstring).

    Args:
        objective: A `TokenObjective` (`loss_from_embeds(embeds (batch, seq, hidden)) -> (batch,)` and
            `loss_from_ids(ids (batch, seq)) -> (batch,)`, the loss to minimise), or a plain callable
            `embeds -> (batch,)` used for both.
        initial_ids: LongTensor, shape (seq,). The whole sequence fed to the objective (special tokens, prompt,
            target included); ids must be rows of `embedding_matrix`.
        positions: LongTensor, shape (L,). Distinct indices into `initial_ids` that may change.
        embedding_matrix: Tensor, shape (V, hidden). The model's input embedding matrix (its dtype and device are
            used; it is only read, never differentiated).
        allowed: Tensor, shape (V,), bool. Tokens that may be placed (see `allowed_token_mask`). The initial tokens
            need not be allowed.
        config: Search settings; defaults to `TokenSearchConfig()`.
        tokenizer: Enables the default round-trip rule `tokenizer_round_trip(tokenizer, positions)`: the optimised
            tokens, decoded and re-encoded without special tokens, give the same ids.
        round_trip: A custom rule instead, `ids (seq,) LongTensor -> bool`. Checked lazily, only on the candidate about
            to be accepted (candidates in ascending-loss order; the first that passes wins); the current sequence is
            assumed valid. Neither given: no round-trip rule.
        callback: Called after every iteration as `callback(iteration, loss)` (iteration counted from 1), e.g. for a
            caller's own progress bar that shows its objective instead of the loss.
        stop: Called after every iteration with the best sequence so far (seq,); True ends the search (e.g. GCG's
            early stop once the target is the model's greedy output).

    Returns:
        `TokenSearchResult` with `ids` (seq,), `loss`, `history`, `iterations`, `seconds`, `iteration_seconds`,
        `stop_reason` (see `hf_robust.attacks.search_config` for the stopping rules, `patience` among them) and
        `trajectory` (iterations + 1, L).

    Raises:
        TypeError: `objective`, `config`, `tokenizer`, `round_trip` or `callback` of the wrong kind, or an input not a
            tensor.
        ValueError: bad shapes, dtypes or values (the message names the argument), both `tokenizer` and
            `round_trip`, or an objective output of the wrong shape.
    """
    objective, config = _validate(
        objective, initial_ids, positions, embedding_matrix, allowed, config, tokenizer, round_trip, callback, stop
    )
    start = time.perf_counter()
    device = embedding_matrix.device
    output_device = initial_ids.device
    positions = positions.to(device=device, dtype=torch.long)
    ids = initial_ids.to(device=device, dtype=torch.long).clone()
    if tokenizer is not None:
        round_trip = tokenizer_round_trip(tokenizer, positions)
    allowed = allowed.to(device)
    allowed_ids = allowed.nonzero().flatten().cpu()
    length = positions.shape[0]
    topk = min(config.topk, allowed_ids.numel())
    n_top = min(config.n_top_candidates, topk)
    n_sampled = config.n_candidates - n_top if topk > n_top else 0
    n_flip = config.n_flip if config.n_flip <= length else max(1, int(0.67 * length))
    generator = torch.Generator().manual_seed(config.seed)

    gram = gram_matrix(embedding_matrix) if config.normalize_gradient and config.n_grad > 1 else None

    loss = float(_score(objective, ids.unsqueeze(0), 1)[0])
    history = [loss]
    best_ids, best_loss = ids, loss
    best_losses = [loss]  # the lowest loss up to each iteration: the patience rule's series
    trajectory = [ids[positions].cpu()]
    buffer = [(loss, ids)]  # 'batch' step with buffer_size >= 1: the best sequences seen, ascending loss
    logger.debug("token_search: L=%d, V=%d, %d allowed, initial loss %.6g", length, allowed.numel(),
                 allowed_ids.numel(), loss)
    iterations, reason, iteration_seconds = 0, "n_iters", []
    bar = tqdm(total=config.n_iters, desc="token search", disable=not config.progress)
    try:
        for _ in range(config.n_iters):
            if config.early_stop is not None and best_loss <= config.early_stop:
                reason = "early_stop"
                break
            if config.time_limit is not None and time.perf_counter() - start >= config.time_limit:
                reason = "time_limit"
                break
            began = time.perf_counter()
            scores = _token_scores(objective, ids, positions, embedding_matrix, allowed_ids, config, generator, gram)
            scores = scores.masked_fill(~allowed, -math.inf)
            top = scores.topk(topk, dim=-1).indices.cpu()  # (L, topk)
            if config.step == "coordinate":
                ids, loss = _coordinate_step(objective, ids, loss, positions, top, n_flip, n_top, n_sampled,
                                             config.batch_size, round_trip, generator)
            else:
                ids, loss = _batch_step(objective, ids, loss, positions, top, config, round_trip, generator, buffer)
            if loss < best_loss:
                best_ids, best_loss = ids, loss
            iterations += 1
            history.append(loss)
            best_losses.append(best_loss)
            trajectory.append(ids[positions].cpu())
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", best=f"{best_loss:.4g}")
            logger.debug("token_search: iteration %d, loss %.6g", iterations, loss)
            if callback is not None:
                callback(iterations, loss)
            stop_now = stop is not None and bool(stop(best_ids))
            iteration_seconds.append(time.perf_counter() - began)
            if stop_now:
                reason = "stop"
                break
            if config.plateaued(best_losses):
                reason = "patience"
                break
    finally:
        bar.close()
    ids, loss = best_ids, best_loss
    seconds = time.perf_counter() - start
    logger.debug("token_search: %d iterations (%s), loss %.6g -> %.6g in %.2fs", iterations, reason, history[0], loss,
                 seconds)
    return TokenSearchResult(
        ids=ids.to(output_device), loss=loss, history=history, iterations=iterations, seconds=seconds,
        stopped=reason == "stop", iteration_seconds=iteration_seconds, stop_reason=reason,
        trajectory=torch.stack(trajectory),
    )
