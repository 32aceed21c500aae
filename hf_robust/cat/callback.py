"""`EmbeddingAdversaryCallback`: one line that makes an existing Trainer's training forwards adversarial."""

import logging
import warnings

import torch
from transformers import TrainerCallback

from ..attacks.continuous import IGNORE_INDEX, EmbeddingAttackConfig, embedding_attack
from ..sharding import has_sharded_weights

logger = logging.getLogger("hf_robust")


class EmbeddingAdversaryCallback(TrainerCallback):
    """Trains on the prompt plus an embedding perturbation that maximises the batch's own label loss.

    At `on_train_begin` a forward pre-hook is installed on the (unwrapped) model, and a forward hook on its input
    embeddings; both are removed at `on_train_end`. Every training forward that carries `input_ids` and `labels`
    first runs the shared untargeted `embedding_attack` on that batch, then proceeds with `embed(input_ids) + delta`
    (added inside the forward, so FSDP2 and DeepSpeed ZeRO-3 see an ordinary forward). Perturbed
    positions are the attended non-target ones (`labels == -100`), i.e. the prompt when the loss is
    completion-only (trl's `completion_only_loss` / `assistant_only_loss`); the target embeddings, padding and the
    gradients of the embedding matrix are as in clean training. Evaluation forwards (no grad or eval mode) are
    untouched.

        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                             callbacks=[EmbeddingAdversaryCallback(EmbeddingAttackConfig(targeted=False))])

    Args:
        config: Attack settings; `targeted` must be False. Defaults to `EmbeddingAttackConfig(targeted=False)`.

    Attributes:
        last_result: The `EmbeddingAttackResult` of the latest training forward (None before the first).
    """

    def __init__(self, config: EmbeddingAttackConfig | None = None):
        config = EmbeddingAttackConfig(targeted=False) if config is None else config
        if not isinstance(config, EmbeddingAttackConfig):
            raise TypeError(f"`config` must be an EmbeddingAttackConfig, got {type(config).__name__}.")
        if config.targeted:
            raise ValueError("`config.targeted` must be False: the callback maximises the batch's own label loss.")
        if config.perturb != "prompt":
            raise ValueError("`config.perturb` must be 'prompt' for the callback: a Trainer batch has no user-turn mask.")
        self.config = config
        self.last_result = None
        self._handle = None
        self._delta = None
        self._attacking = False
        self._warned_no_positions = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("EmbeddingAdversaryCallback needs the Trainer to pass `model` to on_train_begin.")
        self._remove_hook()
        self._delta = None
        self._handle = [model.register_forward_pre_hook(self._perturb, with_kwargs=True),
                        model.get_input_embeddings().register_forward_hook(self._add_delta)]

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hook()

    def _remove_hook(self):
        for handle in self._handle or []:
            handle.remove()
        self._handle = None

    def _add_delta(self, module, args, output):
        # Inside the training forward itself, so the root module runs as sharded engines need; used once.
        if self._attacking or self._delta is None:
            return None
        delta, self._delta = self._delta, None
        if output.shape != delta.shape:
            raise ValueError(f"EmbeddingAdversaryCallback: the input embeddings have shape {tuple(output.shape)}, "
                             f"the perturbation {tuple(delta.shape)}.")
        return output + delta.to(output.dtype)

    def _perturb(self, module, args, kwargs):
        # The attack's own forwards re-enter this hook: let them through, as well as evaluation forwards.
        if self._attacking or not module.training or not torch.is_grad_enabled() or args:
            return None
        input_ids, labels = kwargs.get("input_ids"), kwargs.get("labels")
        if input_ids is None or labels is None:
            return None
        attention_mask = kwargs.get("attention_mask")
        attended = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        # Under sharded weights the other ranks attack (their forwards gather weights): attack too, delta stays 0.
        if not ((labels == IGNORE_INDEX) & attended).any() and not has_sharded_weights(module):
            if not self._warned_no_positions:
                warnings.warn(
                    "EmbeddingAdversaryCallback: the batch has no prompt positions (every attended token is a label), "
                    "so nothing is perturbed; use a completion-only loss (e.g. trl's completion_only_loss)."
                )
                self._warned_no_positions = True
            return None
        self._attacking = True
        try:
            result = embedding_attack(module, input_ids, attention_mask, labels, self.config)
        finally:
            self._attacking = False
        self.last_result = result
        logger.debug("embedding adversary: loss %.4f -> %.4f", -result.losses[0], -result.losses[-1])
        # Gradients reach the embedding matrix through the embedding of input_ids, as in clean training; delta is a
        # constant that `_add_delta` adds to it inside this forward.
        self._delta = result.delta
        return None
