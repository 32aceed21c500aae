"""`EmbeddingAdversaryCallback`: one line that makes an existing Trainer's training forwards adversarial."""

import logging
import warnings

import torch
from transformers import TrainerCallback

from ..attacks.continuous import IGNORE_INDEX, EmbeddingAttackConfig, embedding_attack
from ..sharding import has_sharded_weights

logger = logging.getLogger("hf_robust")

NO_LABELS = (
    "EmbeddingAdversaryCallback: a training forward came without `labels`, so the attack (it maximises the batch's "
    "own label loss) cannot run. The Trainer takes `labels` out of the batch before the forward when a "
    "`compute_loss_func` is set or `label_smoothing_factor` > 0 (trl's SFTTrainer with label smoothing or a custom "
    "loss does this). Set label_smoothing_factor=0 and drop compute_loss_func, or train with CATTrainer, whose "
    "attack reads the labels itself."
)


class EmbeddingAdversaryCallback(TrainerCallback):
    """Trains on the prompt plus an embedding perturbation that maximises the batch's own label loss.

    Before every training micro-batch (`on_step_begin`, `on_substep_end`) a forward pre-hook is installed on the
    (unwrapped) model, and a forward hook on its input embeddings. The first training forward that follows first runs
    the shared untargeted `embedding_attack` on that batch, then proceeds with `embed(input_ids) + delta` (added
    inside the forward, so FSDP2 and DeepSpeed ZeRO-3 see an ordinary forward). The hooks are removed as soon as that
    forward ends, also when it raises (an `always_call` forward hook), so an exception anywhere in `trainer.train()`
    leaves no hook on the model. Perturbed positions are the attended non-target ones (`labels == -100`), i.e. the
    prompt when the loss is completion-only (trl's `completion_only_loss` / `assistant_only_loss`); the target
    embeddings, padding and the gradients of the embedding matrix are as in clean training. Evaluation forwards (no
    grad or eval mode) are untouched.

        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                             callbacks=[EmbeddingAdversaryCallback(EmbeddingAttackConfig(targeted=False))])

    A uniform start without `config.seed` is drawn afresh at every attack, seeded from the training `seed`, the
    process and the attack's count, so a run repeats. A training forward without `labels` raises ValueError (the
    attack would silently not run), and a training whose steps ran no attack at all raises RuntimeError at
    `on_train_end`.

    Args:
        config: Attack settings; `targeted` must be False. Defaults to `EmbeddingAttackConfig(targeted=False)`.

    Attributes:
        last_result: The `EmbeddingAttackResult` of the latest training forward (None before the first).
        attack_count: Number of attacked training forwards since `on_train_begin`.
    """

    def __init__(self, config: EmbeddingAttackConfig | None = None):
        config = EmbeddingAttackConfig(targeted=False) if config is None else config
        if not isinstance(config, EmbeddingAttackConfig):
            raise TypeError(f"`config` must be an EmbeddingAttackConfig, got {type(config).__name__}.")
        if config.targeted:
            raise ValueError("`config.targeted` must be False: the callback maximises the batch's own label loss.")
        if config.perturb != "prompt":
            raise ValueError(
                "`config.perturb` must be 'prompt' for the callback: a Trainer batch has no user-turn mask."
            )
        self.config = config
        self.last_result = None
        self.attack_count = 0
        self._model = None
        self._start_step = 0
        self._run_seed = (0, 0)
        self._handle = None
        self._delta = None
        self._attacking = False
        self._training_forward = False
        self._warned_no_positions = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("EmbeddingAdversaryCallback needs the Trainer to pass `model` to on_train_begin.")
        self._remove_hook()
        self._model = model
        self.attack_count = 0
        self._start_step = 0 if state is None else state.global_step
        # Seeds a uniform start that has no seed of its own.
        self._run_seed = (0, 0) if args is None else (args.seed, args.process_index)

    def on_step_begin(self, args, state, control, **kwargs):
        self._install()

    def on_substep_end(self, args, state, control, **kwargs):
        self._install()  # the next micro-batch of a gradient-accumulation step

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hook()
        steps_ran = state is None or state.global_step > self._start_step
        if steps_ran and self.attack_count == 0:
            raise RuntimeError(
                "EmbeddingAdversaryCallback: no training forward was attacked during training, so the model was "
                "trained clean. The batches had no perturbable prompt positions (every attended token was a label; "
                "use a completion-only loss such as trl's completion_only_loss) or the Trainer never ran a training "
                "forward through the model the callback saw at on_train_begin."
            )

    def _install(self):
        if self._model is None or self._handle is not None:
            return
        self._delta = None
        self._handle = [
            self._model.register_forward_pre_hook(self._perturb, with_kwargs=True),
            self._model.register_forward_hook(self._after_forward, always_call=True),
            self._model.get_input_embeddings().register_forward_hook(self._add_delta),
        ]

    def _remove_hook(self):
        for handle in self._handle or []:
            handle.remove()
        self._handle = None
        self._delta = None
        self._training_forward = False

    def _after_forward(self, module, args, output):
        # Called also when the forward raised (output None): the hooks live for one training forward only.
        if not self._attacking and (self._training_forward or output is None):
            self._remove_hook()

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
        if self._attacking or not module.training or not torch.is_grad_enabled():
            return
        self._training_forward = True
        if args:
            self._remove_hook()
            raise ValueError("EmbeddingAdversaryCallback: the training forward got positional arguments; pass "
                             "`input_ids` and `labels` as keywords, as the Trainer does.")
        input_ids, labels = kwargs.get("input_ids"), kwargs.get("labels")
        if input_ids is None or labels is None:
            self._remove_hook()
            raise ValueError(NO_LABELS if labels is None else
                             "EmbeddingAdversaryCallback: the training forward has no `input_ids` (e.g. only "
                             "`inputs_embeds`); the attack perturbs the embeddings of `input_ids`.")
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
            return
        self._attacking = True
        try:
            config = self.config.seeded_for_call(*self._run_seed, self.attack_count)
            result = embedding_attack(module, input_ids, attention_mask, labels, config)
        finally:
            self._attacking = False
        self.last_result = result
        self.attack_count += 1
        logger.debug("embedding adversary: loss %.4f -> %.4f", -result.losses[0], -result.losses[-1])
        # Gradients reach the embedding matrix through the embedding of input_ids, as in clean training; delta is a
        # constant that `_add_delta` adds to it inside this forward.
        self._delta = result.delta
