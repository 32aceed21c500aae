"""The causal-LM embedding attack on the PGD loop (`pgd.py`): the inner attack of CAT/CAPO and the evaluation.

`embedding_attack(model, input_ids, attention_mask, labels, config)` adds `delta` to the input embeddings of the
prompt and makes the label tokens likely (targeted) or unlikely (untargeted). It never touches model state: it runs
the model in eval mode (dropout off) and restores every module's train/eval flag afterwards, also when the forward
raises. The PGD names and `user_turn_mask` are importable from here too.

Example:

    >>> config = EmbeddingAttackConfig(eps=0.05, steps=10)
    >>> result = embedding_attack(model, batch["input_ids"], batch["attention_mask"], batch["labels"], config)
    >>> embeds = model.get_input_embeddings()(batch["input_ids"]) + result.delta.to(model.dtype)
"""

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling import added_to_input_embeddings, eval_mode
from .chat_masks import user_turn_mask
from .pgd import (
    PGDConfig,
    PGDResult,
    _check_choice,
    embedding_hidden_size,
    model_perturbation_radius,
    perturbation_radius,
    projected_gradient_descent,
)

__all__ = ["IGNORE_INDEX", "EmbeddingAttackConfig", "EmbeddingAttackResult", "PGDConfig", "PGDResult",
           "embedding_attack", "embedding_hidden_size", "model_perturbation_radius", "perturbation_radius",
           "projected_gradient_descent", "user_turn_mask"]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value of positions that are not target tokens (the Hugging Face convention)."""


@dataclass
class EmbeddingAttackConfig(PGDConfig):
    """Settings of `embedding_attack`: the PGD settings plus the causal-LM objective and the perturbed positions.

    Defaults follow the CAT reference (Xhonneux et al., 2024): eps 0.05 relative, 10 signed steps of 1e-4, zero init.
    """

    targeted: bool = field(
        default=True,
        metadata={"help": "True: minimise the cross-entropy of the label tokens (make the target likely). "
                  "False: maximise it (make the labels unlikely)."},
    )
    perturb: str = field(
        default="prompt",
        metadata={
            "help": "'prompt': every attended non-target position. 'user_turn': only the positions of "
            "`perturb_mask` (e.g. from `user_turn_mask`), still never padding or targets.",
            "choices": ["prompt", "user_turn"],
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.targeted, bool):
            raise ValueError(f"`targeted` must be True or False, got {self.targeted!r}.")
        _check_choice("perturb", self.perturb, ("prompt", "user_turn"))


@dataclass
class EmbeddingAttackResult:
    """Output of `embedding_attack`.

    Attributes:
        delta: Tensor, shape (batch, seq, hidden), float32, detached. The last iterate; exactly 0 at padding, target
            and (with `perturb="user_turn"`) non-user positions. Add it to the input embeddings after casting it to
            their dtype.
        losses: list of `steps + 1` floats. Batch mean of the minimised objective at each iterate: the per-row
            token-mean cross-entropy of the labels when targeted, its negation when untargeted. `losses[0]` is the
            clean loss with `init="zero"`.
        final_loss: Tensor, shape (batch,), float32. Per-row objective (same sign convention) at the returned delta.
        success: Tensor, shape (batch,), bool. Targeted: every label token of the row is the argmax of the model's
            prediction at the returned delta. Untargeted: at least one label token is not the argmax.
        radius: float. Absolute per-token L2 radius of the ball.
        row_losses: Tensor, shape (steps + 1, batch), float32. Per-row objective at each iterate (same sign
            convention as `losses`, of which it is the per-row form).
        success_history: Tensor, shape (steps + 1, batch), bool. `success` at each iterate: an attacker who stops
            at the first success breaks row i within t steps when `success_history[:t + 1, i].any()`.
    """

    delta: Tensor
    losses: list[float]
    final_loss: Tensor
    success: Tensor
    radius: float
    row_losses: Tensor | None = None
    success_history: Tensor | None = None


def _check_token_tensor(name: str, tensor: Any, shape: torch.Size | None, allow_bool: bool = False) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(tensor).__name__}.")
    if shape is None and (tensor.dim() != 2 or tensor.numel() == 0):
        raise ValueError(f"`{name}` must be a non-empty tensor of shape (batch, seq), got {tuple(tensor.shape)}.")
    if shape is not None and tensor.shape != shape:
        raise ValueError(f"`{name}` must have the shape of `input_ids` {tuple(shape)}, got {tuple(tensor.shape)}.")
    integer = not tensor.dtype.is_floating_point and not tensor.dtype.is_complex and tensor.dtype != torch.bool
    if not (integer or (allow_bool and tensor.dtype == torch.bool)):
        kinds = "an integer or bool" if allow_bool else "an integer"
        raise ValueError(f"`{name}` must have {kinds} dtype, got {tensor.dtype}.")


def _validated_inputs(
    input_ids: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor,
    perturb_mask: Tensor | None,
    config: EmbeddingAttackConfig,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    _check_token_tensor("input_ids", input_ids, None)
    shape = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    _check_token_tensor("attention_mask", attention_mask, shape, allow_bool=True)
    if not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("`attention_mask` must contain only 0 and 1.")
    _check_token_tensor("labels", labels, shape)
    is_target = labels != IGNORE_INDEX
    if (labels[is_target] < 0).any():
        raise ValueError(f"`labels` must be token ids >= 0 or {IGNORE_INDEX}.")
    if (is_target & (attention_mask == 0)).any():
        raise ValueError(f"`labels` must be {IGNORE_INDEX} at padding positions (attention_mask == 0).")
    # Position 0 is never predicted (labels are shifted), so a target must start at position 1 or later.
    if config.targeted and not is_target[:, 1:].any(dim=1).all():
        rows = (~is_target[:, 1:].any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"`labels` must mark at least one target token (not {IGNORE_INDEX}, after position 0) in every row when "
            f"targeted; rows without one: {rows}."
        )
    if config.perturb == "user_turn":
        if perturb_mask is None:
            raise ValueError("`perturb_mask` is required with perturb='user_turn' (see `user_turn_mask`).")
        _check_token_tensor("perturb_mask", perturb_mask, shape, allow_bool=True)
        if not ((perturb_mask == 0) | (perturb_mask == 1)).all():
            raise ValueError("`perturb_mask` must contain only 0 and 1 (or be bool).")
        perturb_mask = perturb_mask.to(device=device, dtype=torch.bool)
    elif perturb_mask is not None:
        raise ValueError("`perturb_mask` is only used with perturb='user_turn'; set that in the config or drop it.")
    return input_ids.to(device), attention_mask.to(device), labels.to(device), perturb_mask


def embedding_attack(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor,
    config: EmbeddingAttackConfig | None = None,
    *,
    perturb_mask: Tensor | None = None,
) -> EmbeddingAttackResult:
    """Continuous embedding-space attack on a causal LM (the inner attack of CAT/CAPO).

    delta is added to the output of `model.get_input_embeddings()` inside the model's own forward (a hook), so the
    forward runs through the root module as under FSDP2 / DeepSpeed ZeRO-3 it must; the radius reads the whole
    (gathered) embedding matrix. Under those engines every rank must call it the same number of times. Perturbed
    positions are attended (`attention_mask == 1`), not targets (`labels == -100`; token id 0 is a real token) and,
    with `config.perturb == "user_turn"`, inside `perturb_mask`. The objective is the token-mean cross-entropy of
    each row's label tokens (labels shifted as in Hugging Face causal LMs), minimised when `config.targeted`,
    maximised otherwise. delta stays float32 (also under autocast and with a bf16 model) and is cast to the
    embedding dtype only when added.

    The model is not modified: no parameter `.grad` is created or changed, `requires_grad` flags are kept, and the
    attack runs in eval mode (dropout off) with every module's train/eval flag restored afterwards, also on error.
    Pass the unwrapped model (not a DDP/FSDP wrapper, e.g. `accelerator.unwrap_model(model)`); PEFT models work.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`) returning `.logits` of shape (batch, seq, vocab).
        input_ids: Tensor, shape (batch, seq), integer.
        attention_mask: Tensor, shape (batch, seq), 0/1 (integer or bool), or None for all ones.
        labels: Tensor, shape (batch, seq), integer. Target token ids, -100 elsewhere (and at padding). When
            targeted, every row needs a target token after position 0.
        config: Attack settings; defaults to `EmbeddingAttackConfig()`.
        perturb_mask: Tensor, shape (batch, seq), bool. Positions allowed to move; required with
            `perturb="user_turn"` (e.g. `user_turn_mask(tokenizer, conversations)["user_turn_mask"]`), rejected
            otherwise.

    Returns:
        `EmbeddingAttackResult` with `delta` (batch, seq, hidden), `losses`, `final_loss` (batch,), `success`
        (batch,) and `radius`.

    Raises:
        TypeError: `config` is not an `EmbeddingAttackConfig`, or an input is not a tensor.
        ValueError: an input has the wrong shape, dtype or values; the message names it.
    """
    config = EmbeddingAttackConfig() if config is None else config
    if not isinstance(config, EmbeddingAttackConfig):
        raise TypeError(f"`config` must be an EmbeddingAttackConfig, got {type(config).__name__}.")
    embedding = model.get_input_embeddings()
    input_ids, attention_mask, labels, perturb_mask = _validated_inputs(
        input_ids, attention_mask, labels, perturb_mask, config, embedding.weight.device
    )
    mask = (attention_mask == 1) & (labels == IGNORE_INDEX)
    if perturb_mask is not None:
        mask &= perturb_mask
    radius = model_perturbation_radius(model, config.eps, config.eps_mode)
    hidden_size = embedding_hidden_size(embedding)

    batch_size = input_ids.shape[0]
    target_labels = labels[:, 1:]
    is_target = target_labels != IGNORE_INDEX
    target_rows = is_target.nonzero(as_tuple=True)[0]
    target_ids = target_labels[is_target]
    target_counts = is_target.sum(dim=1).clamp_min(1).float()
    all_matches, row_losses = [], []  # one entry per objective call: the steps, then the returned iterate
    # The LM head runs only where some row predicts a target token (`logits_to_keep` takes position indices): with a
    # large vocabulary, the head over every prompt position would cost more than the rest of the forward.
    forward_kwargs, kept_is_target = {}, is_target
    if _accepts_logits_to_keep(model):
        positions = is_target.any(dim=0).nonzero().flatten()
        forward_kwargs["logits_to_keep"] = positions
        kept_is_target = is_target[:, positions]

    def objective(delta: Tensor) -> Tensor:
        # Through the model's own forward (a hook adds delta to the embedded ids), so sharded engines gather as usual.
        with added_to_input_embeddings(model, delta):
            logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True,
                           **forward_kwargs).logits
        if not forward_kwargs:
            logits = logits[:, :-1]
        # Only the target positions go to float32: full (batch, seq, vocab) float32 logits would dominate memory.
        target_logits = logits[kept_is_target].float()
        token_loss = F.cross_entropy(target_logits, target_ids, reduction="none")
        row_loss = token_loss.new_zeros(batch_size).index_add(0, target_rows, token_loss) / target_counts
        with torch.no_grad():
            misses = (target_logits.argmax(dim=-1) != target_ids).float()
            all_matches.append(misses.new_zeros(batch_size).index_add(0, target_rows, misses) == 0)
        row_loss = row_loss if config.targeted else -row_loss
        row_losses.append(row_loss.detach().float())
        return row_loss

    with eval_mode(model):
        result = projected_gradient_descent(objective, mask, hidden_size, radius, config)
    # The last objective call is the final evaluation at the returned delta.
    history = torch.stack(all_matches) if config.targeted else ~torch.stack(all_matches)
    success = history[-1]
    if logger.isEnabledFor(logging.DEBUG):  # success.sum() would synchronise the device
        logger.debug(
            "embedding_attack: radius %.4g, loss %.4f -> %.4f, success %d/%d",
            radius, result.losses[0], result.losses[-1], int(success.sum()), batch_size,
        )
    return EmbeddingAttackResult(
        delta=result.delta, losses=result.losses, final_loss=result.final_loss, success=success, radius=radius,
        row_losses=torch.stack(row_losses), success_history=history,
    )


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the causal LM's forward takes `logits_to_keep`.

    Every transformers causal LM does; PEFT passes it on.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters
