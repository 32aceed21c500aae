"""Several token searches in lockstep: every round, one batched forward answers all their pending requests.

Each search is a `TokenSearch` (its own sequence, seed, random stream and stopping rules); the searches differ only in
their objective, e.g. GASLITE's k-means clusters: one passage layout and one encoder, one query centroid per cluster.
On a GPU, one search's forward (128 candidates of a short passage) leaves the device underused; scoring the
candidates of all k searches together, in chunks of `batch_size` rows, is the speed-up. On CPU a forward costs in
proportion to its rows, so there is nothing to gain there.

One round: every unfinished search shows its pending `Proposal`; all "losses" requests are scored by one call of
`objective.loss_from_ids` per chunk of `batch_size` rows, all "token_scores" requests get their gradient rows (drawn
from each search's own generator) differentiated by one `objective.loss_from_embeds` per chunk; then each search
takes its answer and runs on to its next request. A search that stops (patience, `stop`, `time_limit`, ...) drops
out; the others go on. Each search sees the same answers as alone, up to the float rounding of a batched forward, so
a seed gives the same search as `token_search` unless rounding flips a near-tie.

Example (two problems sharing one encoder; `joint` scores rows of problem `problems[r]`):

    >>> searches = [TokenSearch(ids, positions, E, allowed, TokenSearchConfig(seed=seed)) for seed in (0, 1)]
    >>> first, second = lockstep_token_search(joint, searches)
"""

import inspect
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..checks import check_integer
from .discrete import _averaged_scores, _checked_loss, _embedding_gradient, _gradient_rows
from .search_config import TokenSearchResult
from .token_search_state import TokenSearch

__all__ = ["JointObjective", "lockstep_token_search"]


@runtime_checkable
class JointObjective(Protocol):
    """The losses of several searches' rows in one call. Both return the per-row loss to MINIMISE, Tensor (batch,).

    - `loss_from_ids(input_ids, problems)`: input_ids LongTensor (batch, seq); problems LongTensor (batch,), the index
      (into the `searches` of `lockstep_token_search`) of the search each row belongs to. Called under no_grad.
    - `loss_from_embeds(inputs_embeds, problems)`: inputs_embeds (batch, seq, hidden), differentiable.

    Row r's loss must be search `problems[r]`'s own objective of that row (rows must not interact), e.g. one encoder
    forward of the whole batch, then each row compared with its own search's target.
    """

    def loss_from_embeds(self, inputs_embeds: Tensor, problems: Tensor) -> Tensor: ...

    def loss_from_ids(self, input_ids: Tensor, problems: Tensor) -> Tensor: ...


def _takes_problems(method) -> bool:
    """Whether `method` accepts (rows, problems): a one-search `TokenObjective` passed by mistake does not."""
    try:
        inspect.signature(method).bind(None, None)
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): let the call decide
        return True
    return True


def _validate(objective, searches, batch_size) -> int:
    if not isinstance(objective, JointObjective) or not all(
            _takes_problems(method) for method in (objective.loss_from_ids, objective.loss_from_embeds)):
        raise TypeError("`objective` must have `loss_from_ids(ids, problems) -> (batch,)` and "
                        f"`loss_from_embeds(embeds, problems) -> (batch,)`, got {type(objective).__name__}.")
    if isinstance(searches, (str, bytes)) or not isinstance(searches, Sequence) or not searches or not all(
            isinstance(search, TokenSearch) for search in searches):
        raise TypeError(f"`searches` must be a non-empty list of TokenSearch, got {type(searches).__name__}.")
    if len({id(search) for search in searches}) != len(searches):
        raise ValueError("`searches` must not repeat a TokenSearch.")
    first = searches[0]
    for index, search in enumerate(searches):
        # One forward needs one embedding matrix and one sequence length for all the rows.
        if search.embedding_matrix is not first.embedding_matrix:
            raise ValueError(f"`searches[{index}]` has another embedding matrix than `searches[0]`: searches in "
                             "lockstep share one model.")
        if search.initial_ids.shape != first.initial_ids.shape:
            raise ValueError(f"`searches[{index}]` has sequences of length {search.initial_ids.shape[0]}, "
                             f"`searches[0]` of length {first.initial_ids.shape[0]}: they must be equal.")
    if batch_size is None:
        return min(search.config.batch_size for search in searches)
    check_integer("batch_size", batch_size, 1)
    return batch_size


@torch.no_grad()
def _joint_losses(objective: JointObjective, requests: list[tuple[int, Tensor]], batch_size: int) -> list[Tensor]:
    """Losses of every request's ids (rows_i, seq), scored together in chunks of `batch_size` rows.

    Returns list of Tensor (rows_i,), float32, in request order."""
    ids = torch.cat([rows for _, rows in requests])
    problems = torch.cat([torch.full((rows.shape[0],), index, dtype=torch.long) for index, rows in requests])
    problems = problems.to(ids.device)
    losses = torch.cat([
        _checked_loss(objective.loss_from_ids(chunk, owners), chunk.shape[0], "loss_from_ids").float()
        for chunk, owners in zip(ids.split(batch_size), problems.split(batch_size))
    ])
    return list(losses.split([rows.shape[0] for _, rows in requests]))


def _joint_token_scores(objective: JointObjective, requests: list[tuple[int, TokenSearch, Tensor]],
                        batch_size: int) -> list[Tensor]:
    """`discrete._token_scores` of every request (index, search, current ids (seq,)), with the gradient rows of all
    of them differentiated together in chunks of `batch_size` rows: list of Tensor (L_i, V), float32."""
    weight = requests[0][1].embedding_matrix.detach()
    rows = [_gradient_rows(ids, search.positions, search.allowed_ids, search.config, search.generator)
            for _, search, ids in requests]
    owners = torch.cat([torch.full((block.shape[0],), order, dtype=torch.long) for order, block in enumerate(rows)])
    problems = torch.tensor([index for index, _, _ in requests], dtype=torch.long)[owners].to(weight.device)
    everything = torch.cat(rows)
    # Only the optimised positions of each row are kept, as `_token_scores` does, so memory stays at one chunk's
    # full gradient plus (rows, L, hidden).
    pieces: list[list[Tensor]] = [[] for _ in requests]
    for start in range(0, everything.shape[0], batch_size):
        chunk_problems, chunk_owners = problems[start : start + batch_size], owners[start : start + batch_size]
        grad = _embedding_gradient(lambda embeds: objective.loss_from_embeds(embeds, chunk_problems), weight,
                                   everything[start : start + batch_size])
        for order in chunk_owners.unique().tolist():
            search = requests[order][1]
            pieces[order].append(grad[(chunk_owners == order).to(grad.device)][:, search.positions].float())
    return [_averaged_scores(torch.cat(piece), weight, search.config, search.gram)
            for piece, (_, search, _) in zip(pieces, requests)]


def lockstep_token_search(objective: JointObjective, searches: Sequence[TokenSearch],
                          batch_size: int | None = None) -> list[TokenSearchResult]:
    """Run `searches` together, answering each round's requests with one batched forward per kind (module docstring).

    Args:
        objective: A `JointObjective`: the loss of each row for the search it belongs to.
        searches: Non-empty list of distinct `TokenSearch` sharing one embedding matrix (the same tensor) and one
            sequence length; each keeps its own config, seed, round trip, callback, `stop` and stopping rules.
        batch_size: Rows per forward, across searches; None: the smallest `config.batch_size` of the searches.

    Returns:
        One `TokenSearchResult` per search, in order: what `token_search` gives on the same inputs, up to the float
        rounding of the batched forward. `seconds` and `iteration_seconds` are wall-clock time of the joint run
        (a round waits for every search's rows), and `time_limit` counts from each search's creation.

    Raises:
        TypeError: `objective` is not a `JointObjective`, or `searches` not a list of `TokenSearch`.
        ValueError: a repeated search, searches with other embedding matrices or sequence lengths, a bad
            `batch_size`, or an objective output of the wrong shape.
    """
    batch_size = _validate(objective, searches, batch_size)
    try:
        while True:
            pending = [(index, search, search.propose()) for index, search in enumerate(searches) if not search.done]
            if not pending:
                break
            answers: dict[int, Tensor] = {}
            losses = [(index, proposal.ids) for index, _, proposal in pending if proposal.kind == "losses"]
            if losses:
                answers.update(zip([index for index, _ in losses], _joint_losses(objective, losses, batch_size)))
            scores = [(index, search, proposal.ids) for index, search, proposal in pending
                      if proposal.kind == "token_scores"]
            if scores:
                answers.update(zip([index for index, _, _ in scores],
                                   _joint_token_scores(objective, scores, batch_size)))
            for index, search, _ in pending:
                search.update(answers[index])
    finally:
        for search in searches:
            search.close()
    return [search.result() for search in searches]
