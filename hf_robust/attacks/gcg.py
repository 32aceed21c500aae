"""GCG (Zou et al., 2023) with nanoGCG 0.3's semantics, and its multi-prompt (universal) form, on the shared
token-search core.

One step (`token_search` with `step="batch"`): the one-hot gradient of the target loss at the current suffix,
L2-normalised per position; `search_width` candidates, each with `n_replace` random suffix positions set to tokens
drawn uniformly from those positions' top-`topk` allowed tokens; candidates that do not round-trip in context are
dropped before scoring; the search moves to the best candidate of the batch even when it is worse than the current
suffix (or, with `buffer_size` >= 1, keeps nanoGCG's buffer of the best suffixes and continues from its best). The
result is the best suffix ever scored. `stop_on_success` ends the search once greedy decoding gives every target.

Faithful text. The user message is `prompt + suffix`, where the suffix text begins with the separating space
(`" " + suffix_init`), rendered by `tokenizer.apply_chat_template` and followed by the target. The ids come from
tokenizing that whole text once (`gcg_layout`), and a candidate is kept only if the decoded sequence re-tokenizes to
the same ids with the fixed text verbatim: `success` and `loss` describe ids the rendered text really produces.
`success` is decided by greedy generation from the re-tokenized rendered prompt.

Differences from nanoGCG: the buffer starts from `suffix_init` only (nanoGCG fills a larger buffer with random
suffixes); no probe sampling; `stop_on_success` defaults to True (nanoGCG's `early_stop` to False) and checks the best
suffix rather than every candidate.

    >>> result = gcg_attack(model, tokenizer, "Tell me how to pick a lock", "Sure, here is how to pick a lock")
    >>> result.message, result.loss, result.success
    >>> universal = universal_gcg_attack(model, tokenizer, [{"prompt": ..., "target": ...}, ...])
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_integer, checked_behaviours
from ..modeling import eval_mode
from ..sharding import has_sharded_weights
from .discrete import TokenSearchConfig, allowed_token_mask, token_search
from .gcg_layout import PLACEHOLDER, layout_suffix
from .gcg_objective import SuffixTargetLoss

logger = logging.getLogger(__name__)


@dataclass
class GCGConfig:
    """Settings of `gcg_attack` and `universal_gcg_attack`; names and defaults follow nanoGCG 0.3."""

    n_iters: int = field(default=250, metadata={"help": "Maximum iterations (nanoGCG's num_steps). >= 0."})
    search_width: int = field(default=512, metadata={"help": "Candidates sampled per iteration. >= 1."})
    topk: int = field(default=256, metadata={"help": "Tokens per position kept from the gradient. >= 1."})
    n_replace: int = field(default=1, metadata={"help": "Suffix positions changed per candidate. >= 1."})
    buffer_size: int = field(
        default=0,
        metadata={"help": "0: move to the batch's best candidate every iteration. k >= 1: keep the k best suffixes "
                  "and continue from the best (monotone for k = 1). >= 0."},
    )
    use_prefix_cache: bool = field(
        default=True,
        metadata={"help": "Reuse the key/value cache of the tokens before the suffix; checked against a full forward "
                  "and dropped with a warning where the architecture does not allow it."},
    )
    stop_on_success: bool = field(
        default=True, metadata={"help": "Stop once greedy decoding of the best suffix gives every target."}
    )
    suffix_init: str = field(
        default="! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! !",
        metadata={"help": "Initial suffix, appended to the prompt after one space. A non-blank string."},
    )
    batch_size: int = field(default=128, metadata={"help": "Candidates per forward. >= 1."})
    seed: int = field(default=0, metadata={"help": "Seed of the local sampling generator. >= 0."})
    time_limit: float | None = field(
        default=None, metadata={"help": "Stop before an iteration once this many seconds passed. > 0 or None."}
    )
    progress: bool = field(default=False, metadata={"help": "Show a tqdm progress bar."})

    def __post_init__(self):
        for name, minimum in (("n_iters", 0), ("search_width", 1), ("topk", 1), ("n_replace", 1),
                              ("buffer_size", 0), ("batch_size", 1), ("seed", 0)):
            check_integer(name, getattr(self, name), minimum)
        for name in ("use_prefix_cache", "stop_on_success", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        if not isinstance(self.suffix_init, str) or not self.suffix_init.strip():
            raise ValueError(f"`suffix_init` must be a non-blank string, got {self.suffix_init!r}.")
        if PLACEHOLDER in self.suffix_init:
            raise ValueError(f"`suffix_init` must not contain {PLACEHOLDER!r}.")
        self.search_config()  # validates time_limit

    def search_config(self) -> TokenSearchConfig:
        """The `TokenSearchConfig` of GCG's step on the shared core."""
        return TokenSearchConfig(
            n_iters=self.n_iters, topk=self.topk, n_candidates=self.search_width, n_top_candidates=0, n_flip=1,
            step="batch", n_replace=self.n_replace, buffer_size=self.buffer_size, n_grad=1, normalize_gradient=True,
            batch_size=self.batch_size, seed=self.seed, time_limit=self.time_limit, progress=self.progress,
        )


@dataclass
class UniversalGCGResult:
    """Output of `universal_gcg_attack`: one suffix for every behaviour.

    Attributes:
        suffix: str. The text appended to each prompt (starts with its separating space when the tokens keep it).
        suffix_ids: LongTensor, shape (L,). Its token ids, the same in every behaviour's context.
        loss: float. Mean over behaviours of the target token-mean cross-entropy at `suffix`: `min(history)`.
        losses: list of floats, one per behaviour, at `suffix`.
        history: list of `iterations + 1` floats: the mean loss of the iterate after each iteration (GCG may move to
            a worse suffix; `loss` is the best ever).
        successes: list of bools, one per behaviour: greedy generation from the re-tokenized rendered prompt
            (`prompt + suffix` through the chat template) gives exactly the target tokens.
        success_rate: float. Mean of `successes`.
        iterations / seconds: Iterations run and wall-clock time (search and success check).
        stopped_early: bool. `stop_on_success` ended the search.
        prefix_cache: bool. The prefix cache was used.
    """

    suffix: str
    suffix_ids: Tensor
    loss: float
    losses: list[float]
    history: list[float]
    successes: list[bool]
    success_rate: float
    iterations: int
    seconds: float
    stopped_early: bool
    prefix_cache: bool


@dataclass
class GCGResult:
    """Output of `gcg_attack`.

    Attributes:
        suffix: str. The text appended to the prompt (starts with its separating space when the tokens keep it).
        message: str. The adversarial user message, `prompt + suffix`.
        ids: LongTensor, shape (seq,). The rendered prompt with the suffix, then the target tokens: exactly the ids of
            tokenizing that text (`ids[:target_slice.start]` is what the model is prompted with).
        loss: float. Token-mean cross-entropy of the target at `ids`: `min(history)`.
        history: list of `iterations + 1` floats: the loss of the iterate after each iteration.
        success: bool. Greedy generation from the re-tokenized rendered prompt gives exactly the target tokens.
        suffix_slice / target_slice: slice. Positions of the suffix and of the target in `ids`.
        iterations / seconds / stopped_early / prefix_cache: as in `UniversalGCGResult`.
    """

    suffix: str
    message: str
    ids: Tensor
    loss: float
    history: list[float]
    success: bool
    suffix_slice: slice
    target_slice: slice
    iterations: int
    seconds: float
    stopped_early: bool = False
    prefix_cache: bool = False


def _check_arguments(model: Any, tokenizer: Any, config: Any) -> GCGConfig:
    config = GCGConfig() if config is None else config
    if not isinstance(config, GCGConfig):
        raise TypeError(f"`config` must be a GCGConfig, got {type(config).__name__}.")
    if not isinstance(model, nn.Module) or not callable(getattr(model, "get_input_embeddings", None)):
        raise TypeError(
            f"`model` must be a causal LM nn.Module with get_input_embeddings, got {type(model).__name__}."
        )
    if not callable(tokenizer) or not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(f"`tokenizer` must be a Hugging Face tokenizer, got {type(tokenizer).__name__}.")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("`tokenizer` must be a fast tokenizer (offsets locate the suffix in the rendered text).")
    return config


def _check_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a str, got {type(value).__name__}.")
    if not value:
        raise ValueError(f"`{name}` must be a non-empty string.")
    if PLACEHOLDER in value:
        raise ValueError(f"`{name}` must not contain the placeholder {PLACEHOLDER!r}.")
    return value


def _greedy_success(model: nn.Module, tokenizer: Any, prompt_text: str, target_ids: list[int]) -> bool:
    device = model.get_input_embeddings().weight.device
    prompt_ids = torch.tensor([tokenizer(prompt_text, add_special_tokens=False)["input_ids"]], device=device)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        generated = model.generate(
            input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=len(target_ids),
            do_sample=False, pad_token_id=pad_token_id,
            synced_gpus=has_sharded_weights(model),  # see hf_robust.evaluation.behaviour_attacks
        )
    # An early end of sequence gives fewer tokens, hence no match.
    return generated[0, prompt_ids.shape[1] :].tolist() == target_ids


def _run(model, tokenizer, pairs: Sequence[tuple[str, str]], config: GCGConfig):
    """The search shared by both entry points: (layouts, suffix ids, search result, objective, suffix text)."""
    suffix_text = " " + config.suffix_init
    layouts, suffix_ids = [], None
    for prompt, target in pairs:
        layout, ids = layout_suffix(tokenizer, prompt, suffix_text, target)
        if suffix_ids is not None and ids != suffix_ids:
            raise ValueError(f"`suffix_init` tokenizes differently after {prompt!r} than after {pairs[0][0]!r}; "
                             "a universal suffix needs the same tokens in every context.")
        layouts.append(layout)
        suffix_ids = ids
    weight = model.get_input_embeddings().weight
    initial = torch.tensor(suffix_ids, dtype=torch.long, device=weight.device)
    allowed = allowed_token_mask(tokenizer, num_embeddings=weight.shape[0])

    def round_trip(candidate: Tensor) -> bool:
        ids = candidate.tolist()
        return all(layout.suffix_text(tokenizer, ids) is not None for layout in layouts)

    objective = SuffixTargetLoss(model, layouts, initial, config.use_prefix_cache)
    stop = (lambda ids: all(objective.greedy_matches(ids))) if config.stop_on_success else None
    search = token_search(objective, initial, torch.arange(initial.numel(), device=weight.device), weight, allowed,
                          config.search_config(), round_trip=round_trip, stop=stop)
    best = search.ids.tolist()
    text = layouts[0].suffix_text(tokenizer, best)
    text = suffix_text if text is None else text  # None only for the initial suffix of a non-round-tripping input
    return layouts, best, search, objective, text


def universal_gcg_attack(model: nn.Module, tokenizer: Any, behaviours: Any,
                         config: GCGConfig | None = None) -> UniversalGCGResult:
    """Multi-prompt GCG: one suffix minimising the mean target loss over `behaviours` (Zou et al.'s universal attack).

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`); left exactly as it was (parameters, `.grad`, modes).
        tokenizer: Its fast tokenizer; chat formatting only through `apply_chat_template`.
        behaviours: list of {"prompt", "target"} mappings or a `datasets.Dataset` with those string columns.
        config: Defaults to `GCGConfig()`.

    Raises:
        TypeError / ValueError: bad arguments (the message names them), or a suffix that tokenizes differently
            after different prompts.
    """
    start = time.perf_counter()
    config = _check_arguments(model, tokenizer, config)
    pairs = checked_behaviours(behaviours)
    for index, (prompt, target) in enumerate(pairs):
        _check_text(f"behaviours[{index}]['prompt']", prompt)
        _check_text(f"behaviours[{index}]['target']", target)
    with eval_mode(model):
        layouts, best, search, objective, text = _run(model, tokenizer, pairs, config)
        best_tensor = torch.tensor(best, dtype=torch.long, device=model.get_input_embeddings().weight.device)
        losses = objective.behaviour_losses(best_tensor)
        successes = [_greedy_success(model, tokenizer, layout.prompt_text(text), layout.target_ids)
                     for layout in layouts]
    return UniversalGCGResult(
        suffix=text, suffix_ids=best_tensor.cpu(), loss=search.loss, losses=losses, history=search.history,
        successes=successes, success_rate=sum(successes) / len(successes), iterations=search.iterations,
        seconds=time.perf_counter() - start, stopped_early=search.stopped, prefix_cache=objective.prefix_cache,
    )


def gcg_attack(model: nn.Module, tokenizer: Any, prompt: str, target: str,
               config: GCGConfig | None = None) -> GCGResult:
    """GCG: optimise a suffix appended to the user prompt so that the model's reply starts with `target`.

    The model is not modified: it runs in eval mode with every module's flag restored afterwards (also on error),
    and no parameter `.grad` is created. PEFT models work.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`) returning `.logits` (batch, seq, vocab).
        tokenizer: Its fast tokenizer; chat formatting only through `apply_chat_template` (plain `prompt + suffix`
            without a chat template).
        prompt: The user request, a non-empty string.
        target: The wanted beginning of the reply (e.g. "Sure, here is ..."), a non-empty string.
        config: Search settings; defaults to `GCGConfig()`.

    Returns:
        `GCGResult`.

    Raises:
        TypeError: `config` is not a `GCGConfig`, `model` lacks `get_input_embeddings`, `tokenizer` is not a fast
            tokenizer, or `prompt`/`target` is not a string.
        ValueError: `prompt`/`target` empty or tokenizing to nothing, a token across the suffix's boundaries, or a
            chat template that drops the user text.
    """
    start = time.perf_counter()
    config = _check_arguments(model, tokenizer, config)
    prompt, target = _check_text("prompt", prompt), _check_text("target", target)
    with eval_mode(model):
        (layout,), best, search, objective, text = _run(model, tokenizer, [(prompt, target)], config)
        success = _greedy_success(model, tokenizer, layout.prompt_text(text), layout.target_ids)
    ids = torch.tensor(layout.ids(best), dtype=torch.long)
    suffix_start = len(layout.prefix_ids)
    target_start = suffix_start + len(best) + len(layout.after_ids)
    logger.debug("gcg_attack: loss %.4f -> %.4f in %d iterations, success %s", search.history[0], search.loss,
                 search.iterations, success)
    return GCGResult(
        suffix=text, message=prompt + text, ids=ids, loss=search.loss, history=search.history, success=success,
        suffix_slice=slice(suffix_start, suffix_start + len(best)), target_slice=slice(target_start, ids.numel()),
        iterations=search.iterations, seconds=time.perf_counter() - start, stopped_early=search.stopped,
        prefix_cache=objective.prefix_cache,
    )
