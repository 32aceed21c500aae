"""Gradient-guided discrete token search: the one token-search loop of hf-robust.

`token_search(objective, initial_ids, positions, embedding_matrix, allowed, config)` changes the tokens of
`initial_ids` at `positions` to minimise a per-row loss. GASLITE (passage embedding -> query centroid, loss = negated
similarity), GCG (causal-LM target cross-entropy of a suffix) and prompt attacks on CLIP text encoders are objectives
plugged into this loop; the loop itself knows nothing about the model.

One iteration:

1. **Gradient.** A one-hot matrix X of shape (rows, L, V) (L = len(positions), V = vocabulary rows of the embedding
   matrix E) with `requires_grad`; the input embeddings are the detached `E[ids]` outside `positions` and `X @ E`
   inside. `torch.autograd.grad(loss.sum(), X)` gives the token gradient (cast to float32). With `n_grad > 1`, row 0
   is the current sequence and each other row changes one random optimised position to a random allowed token
   (GASLITE); each (row, position) gradient is L2-normalised over the vocabulary (`normalize_gradient`) and the rows
   are averaged.
2. **Candidates.** Disallowed tokens get -inf in the negated gradient; the `topk` best tokens per position are kept.
3. **Step** (`config.step`). 'coordinate' (GASLITE), a greedy multi-coordinate step: `n_flip` distinct random positions are visited in sorted order. At each, the
   candidate tokens are the top `n_top_candidates` of the top-k list plus `n_candidates - n_top_candidates` tokens
   drawn with replacement from ranks `n_top_candidates..topk-1`, deduplicated, without the current token. Each
   candidate sequence differs from the current one at that position only; they are scored by `loss_from_ids` under
   `torch.no_grad()` in chunks of `batch_size`. The current (unflipped) sequence is always a candidate: candidates are
   taken in ascending-loss order and the first one with a strictly lower loss that passes the round-trip rule
   replaces the current sequence; if none does, the sequence is kept. So the loss never increases.
   'batch' (GCG, Zou et al. 2023, as nanoGCG 0.3): `n_candidates` candidates, each with `n_replace` distinct random
   positions set to tokens drawn uniformly from those positions' top-k lists (so a batch spreads over many
   positions); duplicates and candidates failing the round-trip rule are dropped before scoring; the search moves to
   the batch's best candidate even when it is worse (`buffer_size=0`) or keeps nanoGCG's buffer of the
   `buffer_size` best sequences and continues from the best of them. The best sequence ever scored is returned.

The model is never touched by the loop: gradients are taken with `torch.autograd.grad` with respect to the one-hot
matrix only, so no parameter `.grad` is created. Train/eval mode is the objective's business (see
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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..checks import check_integer, is_integer

logger = logging.getLogger("hf_robust")

_UNUSED_TOKEN = re.compile(r"\[unused\d+\]")


def _is_integer_dtype(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


# --------------------------------------------------------------------------------------------------------------------
# Token filter
# --------------------------------------------------------------------------------------------------------------------


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

    Args:
        tokenizer: A Hugging Face tokenizer.
        num_embeddings: Number of rows of the input embedding matrix, i.e. the mask length. None: `len(tokenizer)`.
        ascii_only, printable_only, exclude_special, exclude_unused: The filters above.

    Returns:
        Tensor, shape (num_embeddings,), bool, on CPU. True where the token is allowed.

    Raises:
        TypeError: `tokenizer` lacks `decode`/`__len__`, or a flag is not a bool.
        ValueError: `num_embeddings` is not a positive integer.
    """
    if not callable(getattr(tokenizer, "decode", None)) or not hasattr(tokenizer, "__len__"):
        raise TypeError(
            f"`tokenizer` must be a Hugging Face tokenizer (decode, __len__), got {type(tokenizer).__name__}."
        )
    for name, value in (
        ("ascii_only", ascii_only),
        ("printable_only", printable_only),
        ("exclude_special", exclude_special),
        ("exclude_unused", exclude_unused),
    ):
        if not _is_bool(value):
            raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    vocab = len(tokenizer)
    if num_embeddings is None:
        num_embeddings = vocab
    if not is_integer(num_embeddings) or num_embeddings <= 0:
        raise ValueError(f"`num_embeddings` must be None or an integer > 0, got {num_embeddings!r}.")
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


# --------------------------------------------------------------------------------------------------------------------
# Config, objective protocol, result
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TokenSearchConfig:
    """Settings of `token_search`. Defaults follow GASLITE's `ours.yaml` except `n_grad` (1: plain GCG gradient)."""

    n_iters: int = field(default=100, metadata={"help": "Maximum number of iterations. >= 0; 0 returns the input."})
    topk: int = field(default=256, metadata={"help": "Candidate tokens per position kept from the gradient. >= 1."})
    n_candidates: int = field(
        default=128, metadata={"help": "Candidate tokens tried per flipped position (before deduplication). >= 1."}
    )
    n_top_candidates: int = field(
        default=64,
        metadata={"help": "Of `n_candidates`, how many are the best-ranked; the rest are drawn with replacement from "
                  "ranks n_top_candidates..topk-1. 0 <= n_top_candidates <= min(n_candidates, topk)."},
    )
    n_flip: int = field(
        default=20,
        metadata={"help": "Positions changed greedily per iteration. >= 1; above the number L of optimised positions, "
                  "max(1, int(0.67 * L)) is used."},
    )
    step: str = field(
        default="coordinate",
        metadata={"help": "'coordinate' (GASLITE): greedy swaps at `n_flip` positions, a swap kept only if it lowers "
                  "the loss. 'batch' (GCG): `n_candidates` candidates, each `n_replace` random positions set to "
                  "random top-k tokens; move to the batch's best even when worse (`buffer_size`).",
                  "choices": ["coordinate", "batch"]},
    )
    n_replace: int = field(
        default=1, metadata={"help": "'batch' step: positions changed per candidate (GCG's n_replace). >= 1."}
    )
    buffer_size: int = field(
        default=0,
        metadata={"help": "'batch' step: 0 moves to the batch's best candidate every iteration (GCG); k >= 1 keeps "
                  "the k best sequences seen and searches from the best of them (nanoGCG's buffer). >= 0."},
    )
    n_grad: int = field(
        default=1,
        metadata={"help": "Gradient rows: 1 = the gradient at the current sequence; > 1 = GASLITE's average over the "
                  "current sequence and n_grad - 1 random single-token perturbations of it. >= 1."},
    )
    normalize_gradient: bool = field(
        default=True,
        metadata={"help": "L2-normalise each (row, position) gradient over the vocabulary before averaging rows."},
    )
    time_limit: float | None = field(
        default=None, metadata={"help": "Stop before an iteration starts once this many seconds passed. > 0 or None."}
    )
    batch_size: int = field(
        default=128, metadata={"help": "Rows per forward when scoring candidates and per gradient chunk. >= 1."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the local generator (global RNG untouched). >= 0."})
    early_stop: float | None = field(
        default=None, metadata={"help": "Stop once the loss is <= this value. A finite number or None."}
    )
    progress: bool = field(default=False, metadata={"help": "Show a tqdm progress bar over iterations."})

    def __post_init__(self):
        for name, minimum in (
            ("n_iters", 0), ("topk", 1), ("n_candidates", 1), ("n_top_candidates", 0), ("n_flip", 1),
            ("n_grad", 1), ("batch_size", 1), ("seed", 0), ("n_replace", 1), ("buffer_size", 0),
        ):
            check_integer(name, getattr(self, name), minimum)
        if self.step not in ("coordinate", "batch"):
            raise ValueError(f"`step` must be 'coordinate' or 'batch', got {self.step!r}.")
        if self.n_top_candidates > min(self.n_candidates, self.topk):
            raise ValueError(
                f"`n_top_candidates` must be <= min(n_candidates, topk) = {min(self.n_candidates, self.topk)}, "
                f"got {self.n_top_candidates!r}."
            )
        if not _is_bool(self.normalize_gradient):
            raise ValueError(f"`normalize_gradient` must be True or False, got {self.normalize_gradient!r}.")
        if not _is_bool(self.progress):
            raise ValueError(f"`progress` must be True or False, got {self.progress!r}.")
        if self.time_limit is not None and (
            not isinstance(self.time_limit, Real) or _is_bool(self.time_limit)
            or not math.isfinite(self.time_limit) or self.time_limit <= 0
        ):
            raise ValueError(f"`time_limit` must be None or a finite number > 0, got {self.time_limit!r}.")
        if self.early_stop is not None and (
            not isinstance(self.early_stop, Real) or _is_bool(self.early_stop) or not math.isfinite(self.early_stop)
        ):
            raise ValueError(f"`early_stop` must be None or a finite number, got {self.early_stop!r}.")


@runtime_checkable
class TokenObjective(Protocol):
    """What `token_search` minimises. Both methods return the per-row loss to MINIMISE, Tensor of shape (batch,).

    - `loss_from_embeds(inputs_embeds)`: inputs_embeds is Tensor, shape (batch, seq, hidden), in the embedding
      matrix's dtype and device; differentiable (called with grad enabled for the token gradient).
    - `loss_from_ids(input_ids)`: input_ids is LongTensor, shape (batch, seq), on the embedding matrix's device; called
      under `torch.no_grad()` to score candidates. It must agree with `loss_from_embeds(E[input_ids])`.

    Anything else the model needs (attention mask, targets, pooling, the query centroid) lives in the object. A plain
    callable `inputs_embeds -> (batch,)` is also accepted; its `loss_from_ids` is then `f(E[input_ids])`.
    """

    def loss_from_embeds(self, inputs_embeds: Tensor) -> Tensor: ...

    def loss_from_ids(self, input_ids: Tensor) -> Tensor: ...


@dataclass
class TokenSearchResult:
    """Output of `token_search`.

    Attributes:
        ids: LongTensor, shape (seq,), on `initial_ids.device`. The best sequence found (lowest loss ever scored);
            equal to `initial_ids` outside `positions`.
        loss: float. `loss_from_ids` of `ids` as scored during the search: `min(history)`.
        history: list of `iterations + 1` floats: `history[0]` is the initial loss, `history[t]` the loss of the
            iterate after iteration t. Non-increasing for the 'coordinate' step and the 'batch' step with a buffer;
            the GCG 'batch' step without buffer may move to a worse sequence.
        iterations: int. Iterations run (fewer than `n_iters` after `time_limit`, `early_stop` or `stop`).
        seconds: float. Wall-clock time of the search.
        stopped: bool. The `stop` callable ended the search.
    """

    ids: Tensor
    loss: float
    history: list[float]
    iterations: int
    seconds: float
    stopped: bool = False


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


def _token_scores(
    objective: TokenObjective,
    ids: Tensor,
    positions: Tensor,
    embedding_matrix: Tensor,
    allowed_ids: Tensor,
    config: TokenSearchConfig,
    generator: torch.Generator,
) -> Tensor:
    """Averaged, per-position normalised NEGATIVE token gradient: Tensor (L, V), float32; higher = better token."""
    weight = embedding_matrix.detach()
    length, vocab = positions.shape[0], weight.shape[0]
    rows = ids.unsqueeze(0).repeat(config.n_grad, 1)
    if config.n_grad > 1:
        # Row 0 is the current sequence; each other row changes one random optimised position to a random allowed
        # token. Drawn on CPU so a seed gives the same rows on every device.
        at = torch.randint(length, (config.n_grad - 1,), generator=generator)
        token = allowed_ids[torch.randint(allowed_ids.numel(), (config.n_grad - 1,), generator=generator)]
        rows[torch.arange(1, config.n_grad), positions.cpu()[at].to(ids.device)] = token.to(ids.device)
    total = torch.zeros(length, vocab, dtype=torch.float32, device=weight.device)
    for chunk in rows.split(config.batch_size):
        one_hot = torch.zeros(chunk.shape[0], length, vocab, dtype=weight.dtype, device=weight.device)
        one_hot.scatter_(2, chunk[:, positions].unsqueeze(-1), 1.0)
        one_hot.requires_grad_(True)
        with torch.enable_grad():
            embeds = weight[chunk].clone()
            embeds[:, positions] = one_hot @ weight
            loss = _checked_loss(objective.loss_from_embeds(embeds), chunk.shape[0], "loss_from_embeds")
            (grad,) = torch.autograd.grad(loss.sum(), one_hot)
        grad = grad.float()
        if config.normalize_gradient:
            grad = grad / grad.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        total += grad.sum(dim=0)
    return -total / config.n_grad


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
        `TokenSearchResult` with `ids` (seq,), `loss`, `history`, `iterations` and `seconds`.

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

    loss = float(_score(objective, ids.unsqueeze(0), 1)[0])
    history = [loss]
    best_ids, best_loss = ids, loss
    buffer = [(loss, ids)]  # 'batch' step with buffer_size >= 1: the best sequences seen, ascending loss
    logger.debug("token_search: L=%d, V=%d, %d allowed, initial loss %.6g", length, allowed.numel(),
                 allowed_ids.numel(), loss)
    iterations, stopped = 0, False
    bar = tqdm(total=config.n_iters, desc="token search", disable=not config.progress)
    try:
        for _ in range(config.n_iters):
            if config.early_stop is not None and best_loss <= config.early_stop:
                break
            if config.time_limit is not None and time.perf_counter() - start >= config.time_limit:
                break
            scores = _token_scores(objective, ids, positions, embedding_matrix, allowed_ids, config, generator)
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
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", best=f"{best_loss:.4g}")
            logger.debug("token_search: iteration %d, loss %.6g", iterations, loss)
            if callback is not None:
                callback(iterations, loss)
            if stop is not None and bool(stop(best_ids)):
                stopped = True
                break
    finally:
        bar.close()
    ids, loss = best_ids, best_loss
    seconds = time.perf_counter() - start
    logger.debug("token_search: %d iterations, loss %.6g -> %.6g in %.2fs", iterations, history[0], loss, seconds)
    return TokenSearchResult(
        ids=ids.to(output_device), loss=loss, history=history, iterations=iterations, seconds=seconds, stopped=stopped
    )
