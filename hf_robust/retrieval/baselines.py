"""Baselines for GASLITE with its API shape `(model, queries, info, ...) -> GasliteResult`.

- `hotflip_poison`: the corpus-poisoning attack of Zhong et al. (2023), a HotFlip search on the shared discrete core:
  a 50-token passage, one random position per iteration, the top-100 tokens of the plain (unnormalised, single-row)
  gradient scored in one batch, kept only if the similarity improves, up to 5000 iterations or `time_limit`.
  Differences from Zhong et al.: the info is prepended by default (an SEO attacker wants it in the passage; the
  trigger then fills the rest of the 50 tokens, so the passage keeps Zhong's length; set `include_info=False` for
  Zhong's trigger-only passage), the trigger starts from "!" tokens (Zhong: a gold passage's
  first tokens), the objective is GASLITE's exact centroid similarity (Zhong: the mean dot product over a fresh batch
  of 64 queries per step; the same when there are at most 64 queries), and by default the token filter and
  round-trip rule of GASLITE apply, so the passage is valid text. `text_tokens=False` searches raw ids as Zhong et al.
  (every non-special token, no round trip): what their code gives an attacker who then inserts the decoded text.
- `query_stuffing`: the info followed by the target queries, concatenated and cut to `trigger_len` tokens.
- `info_only`: the info alone.

Every result carries `objective`, the similarity of the passage to the centroid of the target queries (as GASLITE's),
and `seconds`.
"""

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..attacks.discrete import TokenSearchConfig
from ..checks import check_integer, check_number, is_integer
from .gaslite import (
    GasliteConfig,
    GasliteResult,
    _check_info,
    check_model,
    document_prompt,
    encoded_similarity,
    run_trigger_search,
    target_embeddings,
)
from .objective import query_centroid, with_full_stop


@dataclass
class HotflipConfig:
    """Settings of `hotflip_poison`.

    Defaults follow Zhong et al. (2023): 50-token passage, top-100, 5000 iterations.
    """

    passage_len: int = field(
        default=50,
        metadata={"help": "Tokens of the passage (Zhong et al.: 50), without special tokens and document prompt: the "
                  "info's tokens plus the trigger, which gets the rest (>= 1 token). >= 1."},
    )
    include_info: bool = field(
        default=True,
        metadata={"help": "Prepend the info to the trigger (True) or use the trigger alone as in Zhong et al."},
    )
    trigger_init: str = field(
        default="!", metadata={"help": "Initial trigger, as `GasliteConfig.trigger_init`. A non-blank string."}
    )
    text_tokens: bool = field(
        default=True,
        metadata={"help": "True: GASLITE's token filter and round-trip rule, so the passage is text that tokenises to "
                  "the searched ids. False: Zhong et al.'s raw ids (any non-special token, no round trip); the "
                  "decoded passage may tokenise differently and score below `objective`."},
    )
    n_iters: int = field(default=5000, metadata={"help": "Maximum number of iterations (one position each). >= 0."})
    n_candidates: int = field(
        default=100, metadata={"help": "Top gradient tokens tried at the chosen position. >= 1."}
    )
    time_limit: float | None = field(
        default=None, metadata={"help": "Stop before an iteration starts once this many seconds passed. > 0 or None."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the search. >= 0."})
    batch_size: int = field(default=128, metadata={"help": "Rows per forward when scoring candidates. >= 1."})
    document_prompt: str | None = field(
        default=None, metadata={"help": "Prompt prepended to passages, as `GasliteConfig.document_prompt`."}
    )
    query_prompt: str | None = field(
        default=None, metadata={"help": "Prompt prepended to queries, as `GasliteConfig.query_prompt`."}
    )
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar with the current similarity."})

    def __post_init__(self):
        for name in ("document_prompt", "query_prompt"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"`{name}` must be None (the model's own prompt) or a str, got "
                                 f"{getattr(self, name)!r}.")
        for name, minimum in (("passage_len", 1), ("n_iters", 0), ("n_candidates", 1), ("seed", 0),
                              ("batch_size", 1)):
            check_integer(name, getattr(self, name), minimum)
        for name in ("include_info", "text_tokens", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        if not isinstance(self.trigger_init, str) or not self.trigger_init.strip():
            raise ValueError(f"`trigger_init` must be a non-blank string, got {self.trigger_init!r}.")
        if self.time_limit is not None:
            check_number("time_limit", self.time_limit, 0, strict=True)

    def search_config(self) -> TokenSearchConfig:
        """One position per iteration, the top `n_candidates` tokens of the plain gradient, all of them tried."""
        return TokenSearchConfig(
            n_iters=self.n_iters, topk=self.n_candidates, n_candidates=self.n_candidates,
            n_top_candidates=self.n_candidates, n_flip=1, n_grad=1, normalize_gradient=False,
            time_limit=self.time_limit, batch_size=self.batch_size, seed=self.seed, progress=False,
        )


def hotflip_poison(model: Any, queries: list[str] | Tensor, info: str = "",
                   config: HotflipConfig | None = None) -> GasliteResult:
    """Zhong et al. (2023) corpus poisoning (HotFlip) on the shared core; see the module docstring.

    Args:
        model, queries: As in `gaslite_attack`.
        info: The attacker's text, prepended to the trigger when `config.include_info` (then non-blank); ignored
            otherwise.
        config: Defaults to `HotflipConfig()`.

    Returns:
        `GasliteResult` with the passage (`passage_len` tokens), its `trigger_ids` (passage_len minus the info's
        tokens,), the similarity `objective` and non-decreasing `objective_history`, `iterations` and `seconds`.

    Raises:
        TypeError, ValueError: as `gaslite_attack`; `config` not a `HotflipConfig`; an info of `passage_len` tokens
            or more (no room for a trigger).
    """
    start = time.perf_counter()
    config = HotflipConfig() if config is None else config
    if not isinstance(config, HotflipConfig):
        raise TypeError(f"`config` must be a HotflipConfig, got {type(config).__name__}.")
    check_model(model)
    position = "suffix" if config.include_info else "trigger_only"
    _check_info(info, position)
    trigger_len = config.passage_len
    if config.include_info:
        trigger_len -= len(model.tokenizer(with_full_stop(info), add_special_tokens=False).input_ids)
        if trigger_len < 1:
            raise ValueError(f"`info` has {config.passage_len - trigger_len} tokens, no room for a trigger in the "
                             f"`passage_len`={config.passage_len}-token passage: shorten it or raise passage_len.")
    centroid = query_centroid(target_embeddings(model, queries, config.query_prompt))
    layout = GasliteConfig(trigger_len=trigger_len, trigger_position=position, trigger_init=config.trigger_init,
                           document_prompt=config.document_prompt, progress=config.progress)
    result = run_trigger_search(model, centroid, info, layout, config.search_config(), "HotFlip",
                                text_tokens=config.text_tokens)
    result.seconds = time.perf_counter() - start
    return result


def _fixed_passage(model: Any, queries: list[str] | Tensor, passage: str, trigger_ids: list[int], start: float,
                   prompts: tuple[str | None, str | None]) -> GasliteResult:
    """A passage that is not searched: its similarity, ids and the position of its appended tokens. `prompts`:
    (document_prompt, query_prompt) overrides, None for the model's own."""
    tokenizer = model.tokenizer
    objective = float(encoded_similarity(model, [passage], queries, document_prompt=prompts[0],
                                         query_prompt=prompts[1])[0])
    ids = torch.tensor(tokenizer(document_prompt(model, prompts[0]) + passage).input_ids, dtype=torch.long)
    trigger = torch.tensor(trigger_ids, dtype=torch.long)
    return GasliteResult(
        passage=passage, trigger=tokenizer.decode(trigger_ids).strip(), trigger_ids=trigger, ids=ids,
        trigger_positions=torch.empty(0, dtype=torch.long), objective=objective, objective_history=[objective],
        iterations=0, seconds=time.perf_counter() - start, passage_history=[passage],
    )


def query_stuffing(model: Any, queries: list[str], info: str, trigger_len: int = 30, *,
                   document_prompt: str | None = None, query_prompt: str | None = None) -> GasliteResult:
    """The info followed by the target queries joined by spaces, cut to `trigger_len` tokens (GASLITE's budget).

    Args:
        model: As in `gaslite_attack`.
        queries: The target queries, a non-empty list of strings (their text is needed).
        info: The attacker's text (non-blank; a "." is appended if it lacks final punctuation).
        trigger_len: Token budget of the stuffed queries, >= 1. Queries shorter in total are used whole.
        document_prompt, query_prompt: Prompt overrides for `objective`, as in `GasliteConfig` (None: the model's).

    Returns:
        `GasliteResult`; `trigger_ids` are the (at most `trigger_len`) stuffed query tokens, `iterations` 0.

    Raises:
        TypeError: `queries` not a list of str, `info` not a str, `model` not a SentenceTransformer.
        ValueError: empty `queries`, blank `info`, `trigger_len` not an integer >= 1.
    """
    start = time.perf_counter()
    check_model(model)
    _check_info(info, "suffix")
    if isinstance(queries, Tensor):
        raise TypeError("`queries` must be a list of str for query_stuffing (their text is stuffed), got a Tensor.")
    if not is_integer(trigger_len) or trigger_len < 1:
        raise ValueError(f"`trigger_len` must be an integer >= 1, got {trigger_len!r}.")
    target_embeddings(model, queries, query_prompt)  # validates the queries and the prompt
    # verbose=False: the joined queries may exceed the model's length; only their first `trigger_len` tokens are kept.
    joined = " ".join(query.strip() for query in queries)
    stuffed = model.tokenizer(joined, add_special_tokens=False, verbose=False).input_ids
    stuffed = stuffed[:trigger_len]
    passage = f"{with_full_stop(info)} {model.tokenizer.decode(stuffed).strip()}"
    return _fixed_passage(model, queries, passage, stuffed, start, (document_prompt, query_prompt))


def info_only(model: Any, queries: list[str] | Tensor, info: str, *, document_prompt: str | None = None,
              query_prompt: str | None = None) -> GasliteResult:
    """The info alone (a "." appended if it lacks final punctuation): the attacker's passage without any attack.

    Args:
        model, queries: As in `gaslite_attack` (the queries only give `objective`).
        info: The attacker's text, non-blank.
        document_prompt, query_prompt: Prompt overrides for `objective`, as in `GasliteConfig` (None: the model's).

    Returns:
        `GasliteResult` with an empty trigger and `iterations` 0.

    Raises:
        TypeError, ValueError: as `gaslite_attack` for `model`, `queries` and `info`.
    """
    start = time.perf_counter()
    check_model(model)
    _check_info(info, "suffix")
    return _fixed_passage(model, queries, with_full_stop(info), [], start, (document_prompt, query_prompt))
