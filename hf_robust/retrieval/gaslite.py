"""GASLITE (Ben-Tov & Sharif, 2024): adversarial passages that a dense retriever ranks high for a set of queries.

A passage is the attacker's info text plus a trigger of L tokens, optimised so that the passage embedding is as
similar as possible to the centroid of the target query embeddings (see `hf_robust.retrieval.objective`). GASLITE is an
objective on the shared discrete core, not a second search loop: `gaslite_attack` runs `token_search` over the trigger
positions with loss = the NEGATED centroid similarity.

Mapping of GASLITE (`config/attack/ours.yaml` of the reference code) onto `token_search`:

- Gradient: the one-hot gradient averaged over `n_grad=50` rows (the current passage and 49 random single-token
  perturbations of its trigger, drawn from the allowed tokens), each L2-normalised per position over the vocabulary.
- Candidates: the top-`topk=256` allowed tokens per trigger position; `n_flip=20` random positions visited greedily
  in sorted order, each with `n_candidates=128` tokens (the top 64 plus 64 drawn with replacement from ranks 64-255),
  scored in one batched forward together with the unflipped passage, so the objective never decreases.
- Token filter `allowed_token_mask` (special, non-ASCII, non-printable, `[unused*]`), and a lazy round-trip rule on
  the whole passage: `tokenizer(prompt + passage)` must give exactly the optimised ids (so the trigger keeps L tokens).
- Differences from the reference code: sequences are never padded to 512 and respect `max_seq_length`, the unflipped
  passage is always kept (monotone objective), and the trigger starts from "!" tokens (the reference code's default is
  a GPT-2 continuation of the info; its `!`-initialisation is the one kept here).
- Early stop (not in the reference, which runs 100 iterations): the search ends once the similarity gained at most
  `min_delta=0.001` over the last `patience=3` iterations (`PATIENCE`/`MIN_DELTA` in `gaslite_config` say how they
  were chosen); `patience=0` runs all `n_iters`. `GasliteResult` keeps the similarity, the passage and the seconds
  of every iteration, and why the search stopped.

Prompts: the passage is encoded with the document prompt string `document_prompt(model, config.document_prompt)` and
the queries with `query_prompt(model, config.query_prompt)`: by default exactly what `model.encode` prepends with
`prompt_name=document_prompt_name(model)` / `query_prompt_name(model)` (the model's "document"/"passage" or "query"
prompt, else its `default_prompt_name` prompt); `document_prompt="passage: "`, `query_prompt="query: "` give E5-style
prompts to a checkpoint that defines none. Every encoding passes the resolved string as an explicit `prompt=`.
`GasliteResult.passage` is the passage WITHOUT the prompt; a retriever adds the prompt when it indexes it, i.e.
`model.encode(result.passage, prompt=document_prompt(model, config.document_prompt))` reproduces the optimised
embedding (`hf_robust.retrieval.evaluate` encodes that way, given the same overrides).

Example:

    >>> result = gaslite_attack(model, queries, "Voldemort was right all along.", GasliteConfig(n_iters=100))
    >>> result.passage, result.objective
    >>> results = craft_poison_passages(model, queries, info, n_passages=5)  # one passage per k-means cluster

Clusters in lockstep (`GasliteConfig.batch_clusters`, on by default for a CUDA model): the clusters a process owns
run as `TokenSearch` objects driven by `lockstep_token_search`, so each step scores the candidates of all of them in
one forward (`ClusterObjective`: one encoder pass, each row against its own cluster's centroid); each cluster keeps
its seed `config.seed + i` and its random stream, and stops on its own.
"""

import logging
import time
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..attacks.discrete import TokenSearch, TokenSearchConfig, allowed_token_mask, token_search
from ..attacks.lockstep import lockstep_token_search
from ..checks import is_integer
from ..modeling import eval_mode
from .clusters import ClusterObjective, _process_state, cluster_queries
from .gaslite_config import MIN_DELTA, PATIENCE, GasliteConfig, GasliteResult
from .objective import (
    CentroidObjective,
    check_model,
    encoded_similarity,
    passage_layout,
    query_centroid,
    target_embeddings,
)
from .prompts import document_prompt, document_prompt_name, query_prompt, query_prompt_name, resolve_prompt

__all__ = ["MIN_DELTA", "PATIENCE", "GasliteConfig", "GasliteResult", "check_model", "cluster_queries",
           "craft_poison_passages", "document_prompt", "document_prompt_name", "encoded_similarity", "gaslite_attack",
           "query_prompt", "query_prompt_name", "resolve_prompt", "run_trigger_search", "target_embeddings"]

logger = logging.getLogger("hf_robust")


def _check_info(info: Any, trigger_position: str) -> None:
    if not isinstance(info, str):
        raise TypeError(f"`info` must be a str, got {type(info).__name__}.")
    if not info.strip() and trigger_position != "trigger_only":
        raise ValueError("`info` must be a non-blank string (only trigger_position='trigger_only' leaves it out).")


def _search_setup(model: Any, centroid: Tensor, info: str, config: GasliteConfig, text_tokens: bool):
    """(layout, embedding matrix, allowed mask, `CentroidObjective`) of one trigger search (`run_trigger_search`)."""
    similarity = check_model(model)
    prompt = document_prompt(model, config.document_prompt)
    layout, features = passage_layout(model, info, prompt, config.trigger_len, config.trigger_position,
                                      config.trigger_init)
    weight = model[0].auto_model.get_input_embeddings().weight
    if text_tokens:
        allowed = allowed_token_mask(model.tokenizer, num_embeddings=weight.shape[0])
    else:  # special tokens stay out: their text is parsed back into control tokens ("[SEP]") or dropped by decode
        allowed = allowed_token_mask(model.tokenizer, num_embeddings=weight.shape[0], ascii_only=False,
                                     printable_only=False, exclude_unused=False)
    return layout, weight, allowed, CentroidObjective(model, features, centroid, similarity)


def _progress(config: GasliteConfig, total: int, description: str, position: int | None = None):
    """A tqdm bar over iterations and the `token_search` callback that shows the similarity on it."""
    bar = tqdm(total=total, desc=description, disable=not config.progress, position=position)

    def show(iteration: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(similarity=f"{-loss:.4f}")

    return bar, show


def _gaslite_result(model: Any, layout: Any, result: Any, description: str, start: float) -> GasliteResult:
    """The `GasliteResult` of a finished `TokenSearchResult` (similarities = negated losses)."""
    ids = result.ids.cpu()
    trigger_ids = ids[layout.positions]
    history = [-loss for loss in result.history]
    logger.info("%s: similarity %.4f -> %.4f in %d iterations (%.1f s, %s)", description, history[0], history[-1],
                result.iterations, result.seconds, result.stop_reason)
    return GasliteResult(
        passage=layout.passage(trigger_ids), trigger=model.tokenizer.decode(trigger_ids.tolist()).strip(),
        trigger_ids=trigger_ids, ids=ids, trigger_positions=layout.positions.clone(), objective=history[-1],
        objective_history=history, iterations=result.iterations, seconds=time.perf_counter() - start,
        iteration_seconds=list(result.iteration_seconds), stop_reason=result.stop_reason,
        passage_history=_passages(layout, result.trajectory),
    )


def run_trigger_search(model: Any, centroid: Tensor, info: str, config: GasliteConfig, search: TokenSearchConfig,
                       description: str, text_tokens: bool = True) -> GasliteResult:
    """Optimise the trigger of the passage `info` + trigger (layout from `config`) with the `search` settings.

    Shared by `gaslite_attack` and `hotflip_poison`. `centroid` is Tensor (dim,) (see `query_centroid`); the result's
    `seconds` covers only this call. `text_tokens=False` searches raw ids as Zhong et al. do: every non-special token
    is allowed and there is no round-trip rule, so the decoded passage may tokenise to other ids than those searched
    (and score lower than `objective`).
    """
    start = time.perf_counter()
    layout, weight, allowed, objective = _search_setup(model, centroid, info, config, text_tokens)
    bar, show = _progress(config, search.n_iters, description)
    try:
        with eval_mode(model):
            result = token_search(objective, layout.ids.to(weight.device), layout.positions.to(weight.device),
                                  weight, allowed, search, round_trip=layout.round_trip if text_tokens else None,
                                  callback=show)
    finally:
        bar.close()
    return _gaslite_result(model, layout, result, description, start)


def _lockstep_attacks(model: Any, centroids: list[Tensor], info: str, configs: list[GasliteConfig],
                      descriptions: list[str]) -> list[GasliteResult]:
    """GASLITE for several centroids (clusters, one config each) in lockstep, one forward per step for all of them.

    Each result is what `gaslite_attack` with that centroid and config gives, up to the float rounding of the batched
    forward; `seconds` and `iteration_seconds` are the joint run's wall-clock time.
    """
    start = time.perf_counter()
    setups = [_search_setup(model, centroid, info, config, True) for centroid, config in zip(centroids, configs)]
    bars, searches = [], []
    try:
        for order, (setup, config, description) in enumerate(zip(setups, configs, descriptions)):
            layout, weight, allowed, _ = setup
            bar, show = _progress(config, config.n_iters, description, position=order)
            bars.append(bar)
            searches.append(TokenSearch(layout.ids.to(weight.device), layout.positions.to(weight.device), weight,
                                        allowed, config.search_config(), round_trip=layout.round_trip,
                                        callback=show))
        with eval_mode(model):
            results = lockstep_token_search(ClusterObjective([setup[3] for setup in setups]), searches)
    finally:
        for bar in bars:
            bar.close()
    return [_gaslite_result(model, setup[0], result, description, start)
            for setup, result, description in zip(setups, results, descriptions)]


def _passages(layout: Any, trajectory: Tensor) -> list[str]:
    """The passage text of every row of `trajectory` (iterations + 1, L), decoding only rows that changed."""
    passages: list[str] = []
    for index, row in enumerate(trajectory):
        unchanged = index and torch.equal(row, trajectory[index - 1])
        passages.append(passages[-1] if unchanged else layout.passage(row))
    return passages


def gaslite_attack(model: Any, queries: list[str] | Tensor, info: str,
                   config: GasliteConfig | None = None) -> GasliteResult:
    """GASLITE: one adversarial passage (info + optimised trigger) whose embedding nears the target queries' centroid.

    The model is not modified: it runs in eval mode with every module's flag restored afterwards, and no parameter
    `.grad` is created.

    Args:
        model: A `SentenceTransformer` whose `similarity_fn_name` is "cosine" or "dot" and whose first module is a
            Hugging Face transformer (`model[0].auto_model`).
        queries: The target queries: a non-empty list of strings (encoded with the model's query prompt), or their
            embeddings, Tensor of shape (n, dim), or (dim,) for a single query or a given centroid.
        info: The attacker's text, kept verbatim at the start (suffix), end (prefix) or around (middle) the trigger;
            a "." is appended if it lacks final punctuation. Must be non-blank unless `trigger_position` is
            "trigger_only", where it is left out of the passage.
        config: Attack settings; defaults to `GasliteConfig()`.

    Returns:
        `GasliteResult`: `passage` (without the document prompt), `trigger_ids` (L,), `objective` and
        `objective_history` (the similarity to the centroid, non-decreasing), `iterations`, `seconds`.

    Raises:
        TypeError: `model` is not a SentenceTransformer, `config` not a GasliteConfig, `info` not a str, or `queries`
            neither a list of str nor a Tensor.
        ValueError: empty `queries`, blank `info`, embeddings of the wrong shape, a similarity other than cosine/dot,
            or a passage longer than the model's `max_seq_length`.
    """
    start = time.perf_counter()
    config = GasliteConfig() if config is None else config
    if not isinstance(config, GasliteConfig):
        raise TypeError(f"`config` must be a GasliteConfig, got {type(config).__name__}.")
    check_model(model)
    _check_info(info, config.trigger_position)
    centroid = query_centroid(target_embeddings(model, queries, config.query_prompt))
    result = run_trigger_search(model, centroid, info, config, config.search_config(), "GASLITE")
    return replace(result, seconds=time.perf_counter() - start)


def craft_poison_passages(model: Any, queries: list[str] | Tensor, info: str, n_passages: int,
                          config: GasliteConfig | None = None) -> list[GasliteResult]:
    """GASLITE with a budget of `n_passages`: k-means on the query embeddings, one passage per cluster.

    `n_passages=1` is the concept ("knows-what") threat model: one passage for all the queries, no k-means. Cluster i
    is attacked with seed `config.seed + i`. Under `accelerate launch`, cluster i runs on process
    i % num_processes and the results are gathered to every process (`accelerate.utils.gather_object`), so every
    process returns the same list as a single process would; call it on every process (the gather is collective).
    With `config.batch_clusters` (default: on for a CUDA model) the clusters of a process run in lockstep, one
    forward per step scoring all their candidates; the passages are the same up to the float rounding of a batched
    forward, and each result's `seconds` / `iteration_seconds` are then the joint run's wall-clock time.

    Args:
        model, info, config: As in `gaslite_attack`.
        queries: A non-empty list of strings, or their embeddings, Tensor (n, dim).
        n_passages: Number of passages, 1 <= n_passages <= number of queries.

    Returns:
        list of `n_passages` `GasliteResult`, in cluster order; `result.query_indices` are the indices of the queries
        of its cluster (together they cover every query exactly once).

    Raises:
        TypeError, ValueError: as `gaslite_attack`, and for `n_passages` not an integer in [1, number of queries].
    """
    config = GasliteConfig() if config is None else config
    if not isinstance(config, GasliteConfig):
        raise TypeError(f"`config` must be a GasliteConfig, got {type(config).__name__}.")
    check_model(model)
    _check_info(info, config.trigger_position)
    embeddings = target_embeddings(model, queries, config.query_prompt)
    if not is_integer(n_passages) or not 1 <= n_passages <= embeddings.shape[0]:
        raise ValueError(
            f"`n_passages` must be an integer in [1, {embeddings.shape[0]}] (the number of queries), "
            f"got {n_passages!r}."
        )
    clusters = cluster_queries(embeddings, n_passages, config.seed)
    rank, world_size = _process_state()
    owned = list(range(rank, n_passages, world_size))
    configs = [replace(config, seed=config.seed + index) for index in owned]
    if len(owned) > 1 and config.clusters_in_lockstep(model):
        logger.info("craft_poison_passages: clusters %s of %d in lockstep on process %d",
                    [index + 1 for index in owned], n_passages, rank)
        # The centroids exactly as gaslite_attack computes them from the cluster's embeddings.
        centroids = [query_centroid(target_embeddings(model, embeddings[clusters[index]], config.query_prompt))
                     for index in owned]
        results = _lockstep_attacks(model, centroids, info, configs,
                                    [f"GASLITE cluster {index + 1}/{n_passages}" for index in owned])
    else:
        results = []
        for index, cluster_config in zip(owned, configs):
            logger.info("craft_poison_passages: cluster %d of %d (%d queries) on process %d", index + 1, n_passages,
                        len(clusters[index]), rank)
            results.append(gaslite_attack(model, embeddings[clusters[index]], info, cluster_config))
    mine = [(index, replace(result, query_indices=clusters[index])) for index, result in zip(owned, results)]
    if world_size > 1:
        from accelerate.utils import gather_object

        mine = gather_object(mine)
    return [result for _, result in sorted(mine, key=lambda pair: pair[0])]
