"""Corpus-poisoning evaluation: where adversarial passages rank among a clean corpus, per query, by exact search.

Conventions (shared with `gaslite_attack` and the baselines):

- Adversarial passages are plain passage texts, like corpus passages: no prompt inside the string.
- Corpus and adversarial passages are encoded the same way, with the explicit prompt string
  `document_prompt(model, document_prompt)`: by default what `model.encode` prepends (the model's "document" or
  "passage" prompt, else its `default_prompt_name` prompt, else none), or the override (e.g. "passage: " for an E5
  checkpoint without prompts); queries with `query_prompt(model, query_prompt)`. These are the strings the attacks
  optimise with (`GasliteConfig.document_prompt` / `query_prompt`: pass the same overrides here). Scores are the
  model's own `model.similarity` (cosine or dot).
- Rank of an adversarial passage for a query = the number of clean corpus passages whose score is >= its score, so
  ties count against the attacker and 0 is the top. A query's rank is the minimum over the adversarial passages;
  appeared@k = mean(rank < k), MRR@10 = mean(1 / (rank + 1) if rank < 10 else 0).
- With a defense (`hf_robust.defenses`), the corpus and the adversarial passages are filtered first and ranks are
  taken among the surviving clean passages; a removed adversarial passage never appears (if all are removed, a
  query's rank is the number of surviving clean passages).

Example:

    >>> corpus = default_corpus()
    >>> corpus_embeddings = encode_corpus(model, corpus)  # once, reused across attacks
    >>> report = evaluate_poisoning(model, corpus, concept_queries("held_out"), [result.passage],
    ...                             corpus_embeddings=corpus_embeddings)
    >>> report.appeared_at[10], report.mrr_at_10
"""

import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..checks import check_integer, check_texts
from .prompts import resolve_prompt

__all__ = ["PoisoningReport", "encode_corpus", "encode_queries", "evaluate_poisoning", "report_from_scores"]

MRR_CUTOFF = 10


@dataclass
class PoisoningReport:
    """Result of `evaluate_poisoning`.

    Attributes:
        appeared_at: k -> share of queries whose best adversarial passage ranks < k (0-based rank).
        mrr_at_10: mean over queries of 1 / (rank + 1) if rank < 10 else 0.
        ranks: per query (len n_queries), the best adversarial passage's rank among the (surviving) clean passages.
        best_passage: per query, the index into `adv_passages` of its best passage (the first on ties); -1 when a
            defense removed every adversarial passage.
        n_queries: number of queries.
        n_corpus: number of clean passages ranked against (the survivors, with a defense).
        defense_name: the defense's `name`, or None without a defense.
        clean_removed_fraction: share of clean passages the defense removed (None without a defense).
        adv_removed: per adversarial passage, True if the defense removed it (None without a defense).
    """

    appeared_at: dict[int, float]
    mrr_at_10: float
    ranks: list[int]
    best_passage: list[int]
    n_queries: int
    n_corpus: int
    defense_name: str | None = None
    clean_removed_fraction: float | None = None
    adv_removed: list[bool] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (keys of `appeared_at` become strings, as JSON requires)."""
        values = asdict(self)
        values["appeared_at"] = {str(k): value for k, value in self.appeared_at.items()}
        return values




def encode_corpus(model: Any, corpus: list[str], batch_size: int = 64, *, prompt: str | None = None) -> Tensor:
    """Encode passages as a retriever indexes them: with the document prompt `document_prompt(model, prompt)`.

    Args:
        model: a `SentenceTransformer`.
        corpus: passage texts (no prompt inside), e.g. `default_corpus()` or adversarial passages.
        batch_size: passages per forward.
        prompt: the document prompt override (None: the model's own; "" : no prompt).

    Returns:
        Tensor, shape (len(corpus), dim), on the model's device; L2-normalised if the model normalises.

    Raises:
        TypeError / ValueError: `corpus` is not a non-empty list of strings; `batch_size` is not a positive int;
            `prompt` is neither None nor a str.
    """
    check_texts("corpus", corpus)
    check_integer("batch_size", batch_size, 1)
    return model.encode(list(corpus), prompt=resolve_prompt(model, "document", prompt, "prompt"),
                        batch_size=batch_size, convert_to_tensor=True)


def encode_queries(model: Any, queries: list[str], batch_size: int = 64, *, prompt: str | None = None) -> Tensor:
    """Encode queries with the query prompt `query_prompt(model, prompt)` (None: the model's own). Returns Tensor,
    shape (len(queries), dim)."""
    check_texts("queries", queries)
    check_integer("batch_size", batch_size, 1)
    return model.encode(list(queries), prompt=resolve_prompt(model, "query", prompt, "prompt"),
                        batch_size=batch_size, convert_to_tensor=True)


def _check_ks(ks: Any) -> tuple[int, ...]:
    if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__"):
        raise ValueError(f"`ks` must be a non-empty sequence of integers >= 1, got {ks!r}")
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 for k in ks):
        raise ValueError(f"`ks` must be a non-empty sequence of integers >= 1, got {ks!r}")
    return tuple(int(k) for k in ks)


def _keep_mask(defense: Any, passages: list[str], embeddings: Tensor) -> Tensor:
    keep = defense.keep(passages, embeddings)
    if not (isinstance(keep, Tensor) and keep.dtype == torch.bool and keep.shape == (len(passages),)):
        raise ValueError(
            f"`defense`.keep must return a BoolTensor of shape ({len(passages)},), got "
            f"{keep.dtype if isinstance(keep, Tensor) else type(keep).__name__} "
            f"{tuple(keep.shape) if isinstance(keep, Tensor) else ''}"
        )
    return keep.to(embeddings.device)


def report_from_scores(clean_scores: Tensor, adv_scores: Tensor, ks: tuple[int, ...] = (1, 5, 10),
                       keep_adv: Tensor | None = None) -> PoisoningReport:
    """The ranking rule of `evaluate_poisoning` on given scores, e.g. for a hypothetical embedding with no text.

    Args:
        clean_scores: Tensor, shape (m, n): query-to-clean-passage scores (the survivors of a defense only).
        adv_scores: Tensor, shape (m, p): query-to-adversarial-passage scores.
        ks: cut-offs for appeared@k.
        keep_adv: optional BoolTensor (p,): False for adversarial passages a defense removed (they never appear).

    Returns:
        PoisoningReport (no defense fields set).

    Raises:
        ValueError: scores not 2-D with the same number of rows, or `keep_adv` of the wrong shape; bad `ks`.
    """
    ks = _check_ks(ks)
    if not (isinstance(clean_scores, Tensor) and isinstance(adv_scores, Tensor) and clean_scores.dim() == 2
            and adv_scores.dim() == 2 and clean_scores.shape[0] == adv_scores.shape[0] and adv_scores.shape[1] > 0):
        raise ValueError("`clean_scores` (m, n) and `adv_scores` (m, p >= 1) must be 2-D tensors with the same m, got "
                         f"{getattr(clean_scores, 'shape', clean_scores)} and "
                         f"{getattr(adv_scores, 'shape', adv_scores)}")
    if keep_adv is None:
        keep_adv = torch.ones(adv_scores.shape[1], dtype=torch.bool, device=adv_scores.device)
    elif not (isinstance(keep_adv, Tensor) and keep_adv.dtype == torch.bool
              and keep_adv.shape == adv_scores.shape[1:]):
        raise ValueError(f"`keep_adv` must be a BoolTensor of shape ({adv_scores.shape[1]},), got {keep_adv!r}")
    n_kept = clean_scores.shape[1]
    # (m, p): clean passages scoring >= each adversarial passage; one adversarial column at a time bounds memory.
    passage_ranks = torch.stack(
        [(clean_scores >= adv_scores[:, [column]]).sum(dim=1) for column in range(adv_scores.shape[1])], dim=1
    )
    passage_ranks[:, ~keep_adv.to(passage_ranks.device)] = n_kept + 1  # sentinel above any survivor's rank
    ranks, best = passage_ranks.min(dim=1)
    none_kept = ranks > n_kept
    ranks = ranks.clamp_max(n_kept)
    best = torch.where(none_kept, torch.full_like(best, -1), best)

    # A query whose adversarial passages were all removed never sees one, even when fewer than k clean ones survive.
    present = ~none_kept
    ranks_float = ranks.double()
    reciprocal = torch.where(present & (ranks < MRR_CUTOFF), 1.0 / (ranks_float + 1.0), 0.0)
    return PoisoningReport(
        appeared_at={k: (present & (ranks < k)).double().mean().item() for k in ks},
        mrr_at_10=reciprocal.mean().item(),
        ranks=ranks.tolist(),
        best_passage=best.tolist(),
        n_queries=clean_scores.shape[0],
        n_corpus=n_kept,
    )


def evaluate_poisoning(
    model: Any,
    corpus: list[str],
    queries: list[str],
    adv_passages: list[str],
    ks: tuple[int, ...] = (1, 5, 10),
    *,
    corpus_embeddings: Tensor | None = None,
    defense: Any = None,
    batch_size: int = 64,
    document_prompt: str | None = None,
    query_prompt: str | None = None,
) -> PoisoningReport:
    """Rank adversarial passages among a clean corpus for every query (exact search, the model's similarity).

    Args:
        model: a `SentenceTransformer` (the retriever).
        corpus: clean passage texts, shape (n,) as a list.
        queries: query texts (m,).
        adv_passages: adversarial passage texts (p,), plain texts without a prompt.
        ks: cut-offs for appeared@k.
        corpus_embeddings: optional precomputed `encode_corpus(model, corpus)`, shape (n, dim); avoids re-encoding.
        defense: optional filter with `name` and `keep(passages, embeddings) -> BoolTensor (len,)`; if it has a
            `fit` method and its `threshold` is None, it is first fitted on the clean corpus.
        batch_size: texts per encoding forward.
        document_prompt, query_prompt: prompt overrides (None: the model's own), as given to the attack
            (`GasliteConfig.document_prompt` / `query_prompt`); `corpus_embeddings` must use the same document prompt.

    Returns:
        PoisoningReport.

    Raises:
        TypeError / ValueError: empty or non-string corpus, queries or adv_passages; ks not positive integers; a
            prompt override that is neither None nor a str;
            corpus_embeddings not of shape (len(corpus), dim) with the queries' dim; a defense without `keep`.
    """
    check_texts("corpus", corpus)
    check_texts("queries", queries)
    check_texts("adv_passages", adv_passages)
    ks = _check_ks(ks)
    check_integer("batch_size", batch_size, 1)
    if defense is not None and not callable(getattr(defense, "keep", None)):
        raise TypeError(f"`defense` must have a keep(passages, embeddings) method, got {type(defense).__name__}")
    for name, value in (("document_prompt", document_prompt), ("query_prompt", query_prompt)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"`{name}` must be None (the model's own prompt) or a str, got {type(value).__name__}.")
    query_embeddings = encode_queries(model, queries, batch_size, prompt=query_prompt)
    if corpus_embeddings is None:
        corpus_embeddings = encode_corpus(model, corpus, batch_size, prompt=document_prompt)
    elif not isinstance(corpus_embeddings, Tensor) or corpus_embeddings.shape != (
        len(corpus),
        query_embeddings.shape[-1],
    ):
        shape = tuple(corpus_embeddings.shape) if isinstance(corpus_embeddings, Tensor) else type(corpus_embeddings)
        raise ValueError(
            f"`corpus_embeddings` must be a tensor of shape (len(corpus), dim) = "
            f"({len(corpus)}, {query_embeddings.shape[-1]}), got {shape}"
        )
    corpus_embeddings = corpus_embeddings.to(query_embeddings.device, query_embeddings.dtype)
    adv_embeddings = encode_corpus(model, adv_passages, batch_size, prompt=document_prompt)

    keep_corpus = torch.ones(len(corpus), dtype=torch.bool, device=corpus_embeddings.device)
    keep_adv = torch.ones(len(adv_passages), dtype=torch.bool, device=corpus_embeddings.device)
    if defense is not None:
        if callable(getattr(defense, "fit", None)) and getattr(defense, "threshold", None) is None:
            defense.fit(list(corpus), corpus_embeddings)
        keep_corpus = _keep_mask(defense, list(corpus), corpus_embeddings)
        keep_adv = _keep_mask(defense, list(adv_passages), adv_embeddings)

    clean_scores = model.similarity(query_embeddings, corpus_embeddings[keep_corpus])  # (m, n_kept)
    adv_scores = model.similarity(query_embeddings, adv_embeddings)  # (m, p)
    report = report_from_scores(clean_scores, adv_scores, ks, keep_adv)
    if defense is not None:
        report.defense_name = str(getattr(defense, "name", type(defense).__name__))
        report.clean_removed_fraction = 1.0 - report.n_corpus / len(corpus)
        report.adv_removed = (~keep_adv).tolist()
    return report
