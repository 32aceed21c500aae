"""Settings, objective protocol and result of the shared token search (`hf_robust.attacks.discrete.token_search`).

Stopping rules, checked in this order (the first that fires is `TokenSearchResult.stop_reason`):

- before an iteration: `early_stop` (the best loss is <= a threshold) -> "early_stop"; `time_limit` -> "time_limit";
- after an iteration: the `stop` callable of `token_search` -> "stop"; the patience rule -> "patience": after
  iteration t >= `patience`, stop when the best loss fell by at most `min_delta` over the last `patience` iterations,
  i.e. `best[t - patience] - best[t] <= min_delta` (`best[t]` = the lowest loss seen up to iteration t);
- otherwise the search runs `n_iters` iterations -> "n_iters".
"""

import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Protocol, runtime_checkable

from torch import Tensor

from ..checks import check_integer

STOP_REASONS = ("n_iters", "early_stop", "time_limit", "stop", "patience")


def _is_bool(value) -> bool:
    return isinstance(value, bool)


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
        metadata={"help": "L2-normalise each (row, position) gradient over the vocabulary before averaging rows "
                  "(with n_grad = 1 it would only rescale each position's scores, so it is skipped there)."},
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
    patience: int = field(
        default=0,
        metadata={"help": "Plateau rule: after iteration t >= patience, stop when the best loss fell by at most "
                  "`min_delta` over the last `patience` iterations. 0: off (run to n_iters). >= 0."},
    )
    min_delta: float = field(
        default=0.0,
        metadata={"help": "Plateau rule: the smallest fall of the best loss over `patience` iterations that counts as "
                  "progress (a fall <= min_delta stops the search). A finite number >= 0."},
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
        check_integer("patience", self.patience, 0)
        if (not isinstance(self.min_delta, Real) or _is_bool(self.min_delta) or not math.isfinite(self.min_delta)
                or self.min_delta < 0):
            raise ValueError(f"`min_delta` must be a finite number >= 0, got {self.min_delta!r}.")

    def plateaued(self, best_losses: list[float]) -> bool:
        """The patience rule on `best_losses` (the lowest loss seen up to each iteration, `[0]` the initial loss):
        True when `patience` >= 1, at least `patience` iterations ran and the best loss fell by at most `min_delta`
        over the last `patience` of them."""
        if self.patience == 0 or len(best_losses) <= self.patience:
            return False
        return best_losses[-1 - self.patience] - best_losses[-1] <= self.min_delta


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
        iterations: int. Iterations run (fewer than `n_iters` after `time_limit`, `early_stop`, `stop` or
            `patience`): the stop iteration.
        seconds: float. Wall-clock time of the search (initial scoring included).
        stopped: bool. The `stop` callable ended the search.
        iteration_seconds: list of `iterations` floats: wall-clock seconds of each iteration (gradient, step, callback
            and `stop`); `seconds - sum(iteration_seconds)` is the set-up and initial scoring.
        stop_reason: str, one of `STOP_REASONS`: why the search ended (see the module docstring).
        trajectory: LongTensor, shape (iterations + 1, L), on CPU: the tokens at `positions` of the iterate whose loss
            is `history[t]` (row 0: the initial tokens), e.g. to score intermediate sequences afterwards.
    """

    ids: Tensor
    loss: float
    history: list[float]
    iterations: int
    seconds: float
    stopped: bool = False
    iteration_seconds: list[float] = field(default_factory=list)
    stop_reason: str = "n_iters"
    trajectory: Tensor | None = None
