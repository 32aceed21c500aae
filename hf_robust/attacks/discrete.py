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

Where the code lives: the iteration itself (steps 2-4 and the bookkeeping) is `TokenSearch` in
`hf_robust.attacks.token_search_state`, a stepwise object that asks for the model's answers (losses of candidate
ids, the token scores of step 1) instead of calling the model; `token_search` below is the plain driver that answers
them one search at a time, and `hf_robust.attacks.lockstep.lockstep_token_search` answers several searches' requests
with one batched forward (e.g. GASLITE's k-means clusters on a GPU). Both run the same loop.

Example (GCG-like, `model` a causal LM, the suffix at `positions`, the target after it):

    >>> E = model.get_input_embeddings().weight
    >>> allowed = allowed_token_mask(tokenizer, num_embeddings=E.shape[0])
    >>> result = token_search(objective, ids, positions, E, allowed, TokenSearchConfig(n_iters=50),
    ...                       tokenizer=tokenizer)
    >>> adversarial_ids = result.ids
"""

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .search_config import STOP_REASONS, TokenObjective, TokenSearchConfig, TokenSearchResult
from .token_filter import TokenFilter, allowed_token_mask
from .token_search_state import Proposal, TokenSearch, gram_matrix, tokenizer_round_trip

__all__ = ["STOP_REASONS", "Proposal", "TokenFilter", "TokenObjective", "TokenSearch", "TokenSearchConfig",
           "TokenSearchResult", "allowed_token_mask", "gram_matrix", "token_search", "tokenizer_round_trip"]

logger = logging.getLogger("hf_robust")


class _CallableObjective:
    def __init__(self, function: Callable[[Tensor], Tensor], embedding_matrix: Tensor):
        self.function = function
        self.embedding_matrix = embedding_matrix

    def loss_from_embeds(self, inputs_embeds: Tensor) -> Tensor:
        return self.function(inputs_embeds)

    def loss_from_ids(self, input_ids: Tensor) -> Tensor:
        return self.function(self.embedding_matrix[input_ids])


def _checked_objective(objective: Any, embedding_matrix: Tensor) -> TokenObjective:
    """`objective` as a `TokenObjective` (a plain callable is wrapped); TypeError for anything else."""
    if not isinstance(objective, TokenObjective) and callable(objective):
        objective = _CallableObjective(objective, embedding_matrix.detach())
    if not isinstance(objective, TokenObjective):
        raise TypeError(
            "`objective` must have `loss_from_embeds(embeds) -> (batch,)` and `loss_from_ids(ids) -> (batch,)`, "
            f"or be a callable embeds (batch, seq, hidden) -> loss (batch,); got {type(objective).__name__}."
        )
    return objective


def _checked_loss(loss: Any, rows: int, method: str) -> Tensor:
    if not isinstance(loss, Tensor) or loss.shape != (rows,) or not loss.dtype.is_floating_point:
        got = f"shape {tuple(loss.shape)}, dtype {loss.dtype}" if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"`objective.{method}` must return a floating tensor of shape ({rows},), got {got}.")
    return loss


# --------------------------------------------------------------------------------------------------------------------
# The model's answers: token scores (step 1) and candidate losses
# --------------------------------------------------------------------------------------------------------------------


def _gradient_rows(ids: Tensor, positions: Tensor, allowed_ids: Tensor, config: TokenSearchConfig,
                   generator: torch.Generator) -> Tensor:
    """The sequences whose gradients are averaged: LongTensor (n_grad, seq) on `ids`' device.

    Row 0 is `ids` (seq,); each other row changes one random optimised position to a random allowed token. Drawn on
    CPU from the search's `generator`, so a seed gives the same rows on every device.
    """
    rows = ids.unsqueeze(0).repeat(config.n_grad, 1)
    if config.n_grad > 1:
        at = torch.randint(positions.shape[0], (config.n_grad - 1,), generator=generator)
        token = allowed_ids[torch.randint(allowed_ids.numel(), (config.n_grad - 1,), generator=generator)]
        rows[torch.arange(1, config.n_grad), positions.cpu()[at].to(ids.device)] = token.to(ids.device)
    return rows


def _embedding_gradient(loss_from_embeds: Callable[[Tensor], Tensor], weight: Tensor, rows: Tensor) -> Tensor:
    """d loss.sum() / d embeds at embeds = E[rows]: Tensor (rows, seq, hidden) in E's dtype (E = `weight`, detached).

    Row r's gradient is that of its own loss: rows do not interact, so rows of several searches can share a chunk.
    """
    with torch.enable_grad():
        embeds = weight[rows].requires_grad_(True)  # == (one-hot @ E) at every position, bit for bit
        loss = _checked_loss(loss_from_embeds(embeds), rows.shape[0], "loss_from_embeds")
        (grad,) = torch.autograd.grad(loss.sum(), embeds)
    return grad


def _averaged_scores(gradients: Tensor, weight: Tensor, config: TokenSearchConfig, gram: Tensor | None) -> Tensor:
    """Step 1 from the gradients G at the optimised positions, Tensor (n_grad, L, hidden), float32.

    Normalised and summed in chunks of `config.batch_size` rows (the chunks of the forward in `_token_scores`), so
    the float rounding is the same whichever driver computed G. Returns Tensor (L, V), float32; higher = better.
    """
    normalize = config.normalize_gradient and config.n_grad > 1
    if normalize and gram is None:
        gram = gram_matrix(weight)
    total = torch.zeros(gradients.shape[1], weight.shape[1], dtype=torch.float32, device=weight.device)
    for grad in gradients.split(config.batch_size):
        if normalize:
            # ||G[r, p] @ E.T||^2 = G[r, p] @ M @ G[r, p]: the one-hot gradient's norm over the vocabulary.
            norm = ((grad @ gram) * grad).sum(dim=-1).clamp_min(0).sqrt()
            grad = grad / norm.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(-1)
        total += grad.sum(dim=0)
    mean = -total / config.n_grad  # (L, hidden)
    return (mean.to(weight.dtype) @ weight.T).float()  # (L, V)


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
    rows = _gradient_rows(ids, positions, allowed_ids, config, generator)
    gradients = [_embedding_gradient(objective.loss_from_embeds, weight, chunk)[:, positions].float()
                 for chunk in rows.split(config.batch_size)]
    return _averaged_scores(torch.cat(gradients), weight, config, gram)


@torch.no_grad()
def _score(objective: TokenObjective, candidates: Tensor, batch_size: int) -> Tensor:
    losses = [
        _checked_loss(objective.loss_from_ids(chunk), chunk.shape[0], "loss_from_ids").float()
        for chunk in candidates.split(batch_size)
    ]
    return torch.cat(losses)


# --------------------------------------------------------------------------------------------------------------------
# The driver of one search
# --------------------------------------------------------------------------------------------------------------------


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
    search = TokenSearch(initial_ids, positions, embedding_matrix, allowed, config, tokenizer=tokenizer,
                         round_trip=round_trip, callback=callback, stop=stop)
    try:
        objective = _checked_objective(objective, embedding_matrix)
        while not search.done:
            proposal = search.propose()
            if proposal.kind == "losses":
                search.update(_score(objective, proposal.ids, search.config.batch_size))
            else:
                search.update(_token_scores(objective, proposal.ids, search.positions, search.embedding_matrix,
                                            search.allowed_ids, search.config, search.generator, search.gram))
    finally:
        search.close()
    return search.result()
