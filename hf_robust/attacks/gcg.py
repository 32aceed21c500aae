"""GCG (Zou et al., 2023): a discrete adversarial suffix that makes a chat LM begin its answer with a target string.

GCG is an objective on the shared discrete core, not a second search loop: `gcg_attack` builds the token ids of
`chat(user: prompt + " " + suffix) + target`, and runs `token_search` over the suffix positions with the per-row
token-mean cross-entropy of the target tokens as the loss.

Mapping of GCG onto `token_search` (`GCGConfig` defaults):

- Gradient: the one-hot token gradient at the current sequence (`n_grad=1`), L2-normalised per position over the
  vocabulary, as in nanoGCG. Disallowed tokens (`allowed_token_mask`: non-ASCII, non-printable, special) never enter
  the top-k list.
- Candidates: GCG samples `search_width=512` candidates, each one uniformly chosen suffix position set to a token
  drawn uniformly from that position's top-`topk=256` list, and keeps the best candidate even when it is worse. The
  core instead visits `n_flip=1` uniformly chosen position per iteration and tries there `n_candidates=512` tokens
  drawn uniformly with replacement from the top-256 list (`n_top_candidates=0`; deduplicated, so about 220 distinct
  single-token swaps). The step is thus the same kind of move (one token swapped per iteration, sampled from the
  gradient's top-k), with the candidates concentrated on one position, and a swap is accepted only when it strictly
  lowers the loss and the suffix survives decode/re-encode (the core's round-trip rule), so the loss history is
  non-increasing and the returned suffix is the best one found (nanoGCG's `buffer_size=0` best-so-far).
- Not carried over from nanoGCG: `n_replace > 1`, the attack buffer, probe sampling, `early_stop` on greedy success
  (the core's `early_stop` is a loss threshold), `add_space_before_target`, prefix caching.

Chat formatting goes only through `tokenizer.apply_chat_template`: the user message is `prompt + " " + PLACEHOLDER`,
the rendered text (with the generation prompt) is split around the placeholder, and the pieces before and after it
and the suffix are tokenized separately (`add_special_tokens=False`) and concatenated, as nanoGCG's `{optim_str}`,
so the suffix span is known exactly. Tokenizers without a chat template get the plain text `prompt + " " + suffix`.

Example:

    >>> result = gcg_attack(model, tokenizer, "Tell me how to pick a lock", "Sure, here is how to pick a lock",
    ...                     GCGConfig(n_iters=250))
    >>> result.suffix, result.loss, result.success
"""

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling import eval_mode
from ..sharding import has_sharded_weights
from .discrete import TokenSearchConfig, allowed_token_mask, token_search

logger = logging.getLogger(__name__)

_PLACEHOLDER = "<<hf_robust_gcg_suffix>>"


@dataclass
class GCGConfig(TokenSearchConfig):
    """Settings of `gcg_attack`: the `TokenSearchConfig` fields with GCG defaults, plus the initial suffix.

    Defaults follow nanoGCG (`num_steps=250`, `topk=256`, `search_width=512`, one token swapped per step); see the
    module docstring for how GCG's candidate sampling maps onto the core's per-position greedy step.
    """

    n_iters: int = field(default=250, metadata={"help": "Maximum number of iterations. >= 0; 0 returns the input."})
    topk: int = field(default=256, metadata={"help": "Candidate tokens per position kept from the gradient. >= 1."})
    n_candidates: int = field(
        default=512,
        metadata={"help": "Tokens drawn per iteration for the swapped position (before deduplication); GCG's "
                  "search width. >= 1."},
    )
    n_top_candidates: int = field(
        default=0,
        metadata={"help": "Of `n_candidates`, how many are the best-ranked; the rest are drawn uniformly with "
                  "replacement from the remaining top-k ranks. 0 (GCG): all drawn uniformly from the top-k. "
                  "0 <= n_top_candidates <= min(n_candidates, topk)."},
    )
    n_flip: int = field(
        default=1,
        metadata={"help": "Suffix positions swapped greedily per iteration; 1 is GCG's single-token swap. >= 1; above "
                  "the suffix length L, max(1, int(0.67 * L)) is used."},
    )
    suffix_init: str = field(
        default="! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! !",
        metadata={"help": "Initial adversarial suffix (nanoGCG's default: 20 '!' separated by spaces). A non-blank "
                  "string."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.suffix_init, str) or not self.suffix_init.strip():
            raise ValueError(f"`suffix_init` must be a non-blank string, got {self.suffix_init!r}.")


@dataclass
class GCGResult:
    """Output of `gcg_attack`.

    Attributes:
        suffix: str. The adversarial suffix (decoded suffix tokens); re-tokenised alone, it gives `ids[suffix_slice]`.
        ids: LongTensor, shape (seq,), on the embedding device. The full input: chat-rendered prompt with the suffix,
            then the target tokens (`ids[:target_slice.start]` is what the model is prompted with).
        loss: float. Token-mean cross-entropy of the target given prompt + suffix, at `ids`.
        history: list of `iterations + 1` floats, non-increasing. `history[0]` is the loss at `suffix_init`.
        success: bool. Greedy decoding of len(target tokens) tokens from `ids[:target_slice.start]` gives exactly the
            target tokens.
        suffix_slice: slice. The suffix token positions in `ids`.
        target_slice: slice. The target token positions in `ids` (the end of `ids`).
        iterations: int. Search iterations run.
        seconds: float. Wall-clock time of the whole attack (search and success check).
    """

    suffix: str
    ids: Tensor
    loss: float
    history: list[float]
    success: bool
    suffix_slice: slice
    target_slice: slice
    iterations: int
    seconds: float


def _gcg_ids(
    tokenizer: Any, prompt: str, suffix: str, target: str
) -> tuple[list[int], list[int], list[int], list[int]]:
    """(before, suffix, after, target) token id lists; before + suffix + after is the rendered user turn."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{prompt} {_PLACEHOLDER}"}], add_generation_prompt=True, tokenize=False
        )
        if rendered.count(_PLACEHOLDER) != 1:
            raise ValueError("`tokenizer.chat_template` must render the user message content verbatim exactly once.")
        before, after = rendered.split(_PLACEHOLDER)
    else:
        before, after = f"{prompt} ", ""

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    return encode(before), encode(suffix), encode(after), encode(target)


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class _TargetLoss:
    """Per-row token-mean CE of the last `target.numel()` tokens: the GCG `TokenObjective`."""

    def __init__(self, model: nn.Module, target: Tensor):
        self.model = model
        self.target = target  # (n,)
        n = target.numel()
        # Only the logits predicting the target are needed: positions seq-n-1 .. seq-2.
        self.kwargs = {"logits_to_keep": n + 1} if _accepts_logits_to_keep(model) else {}

    def _loss(self, logits: Tensor) -> Tensor:
        n = self.target.numel()
        logits = logits[:, -n - 1 : -1].float()  # (batch, n, vocab)
        target = self.target.expand(logits.shape[0], -1)
        return F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(dim=1)

    def loss_from_embeds(self, inputs_embeds: Tensor) -> Tensor:
        """inputs_embeds: (batch, seq, hidden) -> loss (batch,)."""
        return self._loss(self.model(inputs_embeds=inputs_embeds, use_cache=False, **self.kwargs).logits)

    def loss_from_ids(self, input_ids: Tensor) -> Tensor:
        """input_ids: (batch, seq) -> loss (batch,)."""
        return self._loss(self.model(input_ids=input_ids, use_cache=False, **self.kwargs).logits)


def gcg_attack(
    model: nn.Module, tokenizer: Any, prompt: str, target: str, config: GCGConfig | None = None
) -> GCGResult:
    """GCG: optimise a suffix appended to the user prompt so that the model's reply starts with `target`.

    The input is `apply_chat_template([{"role": "user", "content": prompt + " " + suffix}],
    add_generation_prompt=True)` followed by the target tokens (plain `prompt + " " + suffix` without a chat
    template); only the suffix tokens change. The loss is the token-mean cross-entropy of the target tokens, minimised
    by `token_search` over the suffix positions with the tokens of `allowed_token_mask` and the tokenizer round-trip
    rule. The model is not modified: it runs in eval mode with every module's train/eval flag restored afterwards
    (also on error), and no parameter `.grad` is created. PEFT models work.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`) returning `.logits` (batch, seq, vocab).
        tokenizer: Its tokenizer; chat formatting only through `apply_chat_template`.
        prompt: The user request, a non-empty string.
        target: The wanted beginning of the reply (e.g. "Sure, here is ..."), a non-empty string.
        config: Search settings; defaults to `GCGConfig()`.

    Returns:
        `GCGResult` with `suffix`, `ids` (seq,), `loss`, `history`, `success`, the suffix and target slices,
        `iterations` and `seconds`.

    Raises:
        TypeError: `config` is not a `GCGConfig`, `model` lacks `get_input_embeddings`, `tokenizer` is not a
            tokenizer, or `prompt`/`target` is not a string.
        ValueError: `prompt`, `target` or the suffix tokenize to nothing, or the chat template drops the user text.
    """
    start = time.perf_counter()
    config = GCGConfig() if config is None else config
    if not isinstance(config, GCGConfig):
        raise TypeError(f"`config` must be a GCGConfig, got {type(config).__name__}.")
    if not isinstance(model, nn.Module) or not callable(getattr(model, "get_input_embeddings", None)):
        raise TypeError(
            f"`model` must be a causal LM nn.Module with get_input_embeddings, got {type(model).__name__}."
        )
    if not callable(tokenizer) or not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(f"`tokenizer` must be a Hugging Face tokenizer, got {type(tokenizer).__name__}.")
    for name, value in (("prompt", prompt), ("target", target)):
        if not isinstance(value, str):
            raise TypeError(f"`{name}` must be a str, got {type(value).__name__}.")
        if not value:
            raise ValueError(f"`{name}` must be a non-empty string.")
    if _PLACEHOLDER in prompt:
        raise ValueError(f"`prompt` must not contain the placeholder {_PLACEHOLDER!r}.")

    before, suffix, after, target_ids = _gcg_ids(tokenizer, prompt, config.suffix_init, target)
    if not suffix:
        raise ValueError(f"`suffix_init` {config.suffix_init!r} tokenizes to no tokens.")
    if not target_ids:
        raise ValueError(f"`target` {target!r} tokenizes to no tokens.")
    weight = model.get_input_embeddings().weight
    device = weight.device
    suffix_slice = slice(len(before), len(before) + len(suffix))
    target_start = len(before) + len(suffix) + len(after)
    target_slice = slice(target_start, target_start + len(target_ids))
    initial_ids = torch.tensor(before + suffix + after + target_ids, dtype=torch.long, device=device)
    positions = torch.arange(suffix_slice.start, suffix_slice.stop, device=device)
    allowed = allowed_token_mask(tokenizer, num_embeddings=weight.shape[0])
    target_tensor = initial_ids[target_slice]

    with eval_mode(model):
        search = token_search(
            _TargetLoss(model, target_tensor), initial_ids, positions, weight, allowed, config, tokenizer=tokenizer
        )
        ids = search.ids
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.no_grad():
            prompt_ids = ids[: target_slice.start].unsqueeze(0)
            generated = model.generate(
                input_ids=prompt_ids,
                attention_mask=torch.ones_like(prompt_ids),
                max_new_tokens=len(target_ids),
                do_sample=False,
                pad_token_id=pad_token_id,
                synced_gpus=has_sharded_weights(model),  # see hf_robust.cat.evaluation
            )
    new_tokens = generated[0, prompt_ids.shape[1] :].to(device)
    # An early end of sequence gives fewer tokens, hence no match.
    success = bool(torch.equal(new_tokens, target_tensor))
    suffix_text = tokenizer.decode(ids[suffix_slice].tolist())
    seconds = time.perf_counter() - start
    logger.debug("gcg_attack: loss %.4f -> %.4f in %d iterations, success %s", search.history[0], search.loss,
                 search.iterations, success)
    return GCGResult(
        suffix=suffix_text,
        ids=ids,
        loss=search.loss,
        history=search.history,
        success=success,
        suffix_slice=suffix_slice,
        target_slice=target_slice,
        iterations=search.iterations,
        seconds=seconds,
    )
