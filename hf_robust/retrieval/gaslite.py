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
  `min_delta=0.001` over the last `patience=3` iterations (`PATIENCE`/`MIN_DELTA` below say how they were chosen);
  `patience=0` runs all `n_iters`. `GasliteResult` keeps the similarity, the passage and the seconds of every
  iteration, and why the search stopped.

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
"""

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..attacks.discrete import TokenSearchConfig, allowed_token_mask, token_search
from ..checks import check_integer, check_number, is_integer
from ..modeling import eval_mode
from .clusters import _process_state, cluster_queries
from .objective import (
    TRIGGER_POSITIONS,
    CentroidObjective,
    check_model,
    encoded_similarity,
    passage_layout,
    query_centroid,
    target_embeddings,
)
from .prompts import document_prompt, document_prompt_name, query_prompt, query_prompt_name, resolve_prompt

__all__ = ["GasliteConfig", "GasliteResult", "check_model", "cluster_queries", "craft_poison_passages",
           "document_prompt", "document_prompt_name", "encoded_similarity", "gaslite_attack", "query_prompt",
           "query_prompt_name", "resolve_prompt", "run_trigger_search", "target_embeddings"]

logger = logging.getLogger("hf_robust")

# Early-stop defaults of GasliteConfig: stop once the similarity gained <= 0.001 over 3 iterations. Chosen from one
# measured trajectory (all-MiniLM-L6-v2, shipped concept, 1 passage, GasliteConfig() otherwise; 2 shared CPU cores;
# benchmarks/results/gaslite_early_stop_cpu.md): similarity .289 -> .814, .865, .893, .906, .914, .925, .925, .925,
# .925 (iteration 9, where this rule stops) ... .930 at iteration 13, while held-out appeared@10 stayed within 77-83%
# from iteration 2 on (83% at 9 and at 13). Every (patience, min_delta) of 3 and 0.0005-0.005 stops at iteration 9
# there; patience 1-2 would stop at 7-8 on a single flat iteration, which also happens by chance mid-search. The
# trade-off: a stopped passage gives up the last ~0.01 of similarity (the 100-iteration passage recorded in
# benchmarks/results/gaslite_effect_1passage_cpu.json re-encodes to .934, held-out appeared@10 83%, appeared@1 23%)
# for ~1/10 of the iterations; `patience=0` restores the full `n_iters` search.
PATIENCE: int = 3
MIN_DELTA: float = 0.001


@dataclass
class GasliteConfig:
    """Settings of `gaslite_attack` and `craft_poison_passages`; defaults follow GASLITE's `ours.yaml` (L=30 as in
    its "short" configs and demo)."""

    trigger_len: int = field(default=30, metadata={"help": "Number L of trigger tokens. >= 1."})
    trigger_position: str = field(
        default="suffix",
        metadata={"help": "Where the trigger goes: 'suffix' (after the info), 'prefix' (before it), 'middle' (between "
                  "the two halves of its words) or 'trigger_only' (no info in the passage)."},
    )
    trigger_init: str = field(
        default="!",
        metadata={"help": "Initial trigger: a text of one token is repeated L times; a longer text is tokenised and "
                  "cut, or padded with '!' tokens, to L tokens. A non-blank string."},
    )
    n_iters: int = field(default=100, metadata={"help": "Maximum number of iterations. >= 0."})
    n_grad: int = field(
        default=50,
        metadata={"help": "Gradient rows averaged: the current passage and n_grad - 1 random single-token "
                  "perturbations of its trigger. >= 1."},
    )
    topk: int = field(default=256, metadata={"help": "Candidate tokens per trigger position from the gradient. >= 1."})
    n_candidates: int = field(
        default=128,
        metadata={"help": "Candidate tokens tried per flipped position: the best n_candidates // 2 of the top-k plus "
                  "n_candidates - n_candidates // 2 drawn with replacement from the remaining top-k ranks. >= 1."},
    )
    n_flip: int = field(
        default=20,
        metadata={"help": "Trigger positions changed greedily per iteration. >= 1; above L, max(1, int(0.67 L))."},
    )
    time_limit: float | None = field(
        default=None, metadata={"help": "Stop before an iteration starts once this many seconds passed. > 0 or None."}
    )
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the search, and of k-means in craft_poison_passages (cluster i searches with "
                  "seed + i). >= 0."},
    )
    batch_size: int = field(
        default=128, metadata={"help": "Rows per forward when scoring candidates and gradient rows. >= 1."}
    )
    patience: int = field(
        default=PATIENCE,
        metadata={"help": "Early stop: end the search once the similarity gained at most `min_delta` over the last "
                  "`patience` iterations. 0: off (run all n_iters). >= 0."},
    )
    min_delta: float = field(
        default=MIN_DELTA,
        metadata={"help": "Early stop: the similarity gain over `patience` iterations that still counts as progress "
                  "(a gain <= min_delta stops). A finite number >= 0."},
    )
    document_prompt: str | None = field(
        default=None,
        metadata={"help": "Prompt prepended to passages; None: the model's own (what model.encode applies: its "
                  "'document'/'passage' prompt, else its default prompt). E.g. 'passage: ' for an E5 checkpoint "
                  "without prompts. Evaluate with the same value."},
    )
    query_prompt: str | None = field(
        default=None,
        metadata={"help": "Prompt prepended to queries; None: the model's own ('query', else its default prompt). "
                  "E.g. 'query: ' for E5. Evaluate with the same value."},
    )
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar with the current similarity."})

    def __post_init__(self):
        for name, minimum in (("trigger_len", 1), ("n_iters", 0), ("n_grad", 1), ("topk", 1), ("n_candidates", 1),
                              ("n_flip", 1), ("seed", 0), ("batch_size", 1), ("patience", 0)):
            check_integer(name, getattr(self, name), minimum)
        check_number("min_delta", self.min_delta, 0)
        for name in ("document_prompt", "query_prompt"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"`{name}` must be None (the model's own prompt) or a str, got "
                                 f"{getattr(self, name)!r}.")
        if self.trigger_position not in TRIGGER_POSITIONS:
            raise ValueError(f"`trigger_position` must be one of {TRIGGER_POSITIONS}, got {self.trigger_position!r}.")
        if not isinstance(self.trigger_init, str) or not self.trigger_init.strip():
            raise ValueError(f"`trigger_init` must be a non-blank string, got {self.trigger_init!r}.")
        if self.time_limit is not None:
            check_number("time_limit", self.time_limit, 0, strict=True)
        if not isinstance(self.progress, bool):
            raise ValueError(f"`progress` must be True or False, got {self.progress!r}.")

    def search_config(self) -> TokenSearchConfig:
        """The `TokenSearchConfig` of this attack (its own progress bar replaces the core's)."""
        return TokenSearchConfig(
            n_iters=self.n_iters, topk=self.topk, n_candidates=self.n_candidates,
            n_top_candidates=min(self.n_candidates // 2, self.topk), n_flip=self.n_flip, n_grad=self.n_grad,
            normalize_gradient=True, time_limit=self.time_limit, batch_size=self.batch_size, seed=self.seed,
            patience=self.patience, min_delta=self.min_delta, progress=False,
        )


@dataclass
class GasliteResult:
    """Output of `gaslite_attack` (and of the baselines in `hf_robust.retrieval.baselines`).

    Attributes:
        passage: str. The adversarial passage WITHOUT the model's document prompt.
        trigger: str. The decoded trigger text ("" for a passage without trigger).
        trigger_ids: LongTensor, shape (L,), on CPU. The optimised trigger tokens.
        ids: LongTensor, shape (seq,), on CPU. `tokenizer(prompt + passage).input_ids`, special tokens included.
        trigger_positions: LongTensor, shape (L,), on CPU. Where `trigger_ids` sit in `ids`.
        objective: float. Similarity of the passage embedding to the target centroid (model's similarity).
        objective_history: list of `iterations + 1` floats, non-decreasing; `[0]` is the initial passage's,
            `[t]` the passage's after iteration t.
        iterations: int. Search iterations run (the stop iteration).
        seconds: float. Wall-clock time of the whole call.
        query_indices: list[int] | None. Indices of the target queries (set by `craft_poison_passages`).
        iteration_seconds: list of `iterations` floats: wall-clock seconds of each search iteration.
        stop_reason: str. Why the search ended: "n_iters", "patience", "time_limit", "early_stop" or "stop" (see
            `hf_robust.attacks.search_config`); "n_iters" for a passage that is not searched.
        passage_history: list of `iterations + 1` str: the passage (without prompt) whose similarity is
            `objective_history[t]`, so intermediate passages can be evaluated (time-to-quality curves).
    """

    passage: str
    trigger: str
    trigger_ids: Tensor
    ids: Tensor
    trigger_positions: Tensor
    objective: float
    objective_history: list[float]
    iterations: int
    seconds: float
    query_indices: list[int] | None = None
    iteration_seconds: list[float] = field(default_factory=list)
    stop_reason: str = "n_iters"
    passage_history: list[str] = field(default_factory=list)


def _check_info(info: Any, trigger_position: str) -> None:
    if not isinstance(info, str):
        raise TypeError(f"`info` must be a str, got {type(info).__name__}.")
    if not info.strip() and trigger_position != "trigger_only":
        raise ValueError("`info` must be a non-blank string (only trigger_position='trigger_only' leaves it out).")


def run_trigger_search(model: Any, centroid: Tensor, info: str, config: GasliteConfig, search: TokenSearchConfig,
                       description: str, text_tokens: bool = True) -> GasliteResult:
    """Optimise the trigger of the passage `info` + trigger (layout from `config`) with the `search` settings.

    Shared by `gaslite_attack` and `hotflip_poison`. `centroid` is Tensor (dim,) (see `query_centroid`); the result's
    `seconds` covers only this call. `text_tokens=False` searches raw ids as Zhong et al. do: every non-special token
    is allowed and there is no round-trip rule, so the decoded passage may tokenise to other ids than those searched
    (and score lower than `objective`).
    """
    start = time.perf_counter()
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
    objective = CentroidObjective(model, features, centroid, similarity)
    bar = tqdm(total=search.n_iters, desc=description, disable=not config.progress)

    def show(iteration: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(similarity=f"{-loss:.4f}")

    try:
        with eval_mode(model):
            result = token_search(objective, layout.ids.to(weight.device), layout.positions.to(weight.device),
                                  weight, allowed, search, round_trip=layout.round_trip if text_tokens else None,
                                  callback=show)
    finally:
        bar.close()
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
    mine = []
    for index in range(rank, n_passages, world_size):
        logger.info("craft_poison_passages: cluster %d of %d (%d queries) on process %d", index + 1, n_passages,
                    len(clusters[index]), rank)
        result = gaslite_attack(model, embeddings[clusters[index]], info, replace(config, seed=config.seed + index))
        mine.append((index, replace(result, query_indices=clusters[index])))
    if world_size > 1:
        from accelerate.utils import gather_object

        mine = gather_object(mine)
    return [result for _, result in sorted(mine, key=lambda pair: pair[0])]
