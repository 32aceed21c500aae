"""`CAPOTrainer`: continuous adversarial preference optimisation (C-AdvIPO) on trl's `DPOTrainer`.

Xhonneux et al. (2024), "Efficient Adversarial Training in LLMs with Continuous Attacks", arXiv 2405.15589.

Each training step attacks the prompt in embedding space so that the harmful `rejected` completion becomes likely
(the shared targeted `embedding_attack`, which never touches model state), then computes trl's IPO loss with the
policy seeing prompt + delta in both the refusal (`chosen`) and the harmful (`rejected`) sequence, while the reference
log-probs stay those of the clean prompt. trl's loss is reused as is: a forward hook on the input embeddings adds
delta to the policy forward only (the one run with gradients; trl runs the reference forward under `no_grad`).
"""


import torch
from trl import DPOTrainer
from trl.data_utils import is_conversational

from ..attacks.continuous import IGNORE_INDEX, EmbeddingAttackResult, embedding_attack
from ..modeling import added_to_input_embeddings
from .arguments import PAPER, attack_metrics
from .capo_config import CAPOConfig


def shared_prompt_delta(
    delta: torch.Tensor, completion_mask: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The attack's delta on the rejected half, applied to the prompt of both halves of a preference batch.

    Args:
        delta: Tensor, shape (batch, seq, hidden). The perturbation of the rejected rows (zero outside their prompt).
        completion_mask, attention_mask: Tensor, shape (2 * batch, seq): trl's [chosen; rejected] right-padded batch.

    Returns:
        Tensor, shape (2 * batch, seq, hidden): each half gets delta on its own prompt positions (attended, not
        completion) and exactly 0 at its completion and padding positions. The two prompts are aligned at their last
        token; with trl's default `keep_start` truncation they have the same length, so this is position by position.
    """
    prompt = (attention_mask == 1) & (completion_mask == 0)
    chosen_prompt, rejected_prompt = prompt.chunk(2)
    length = prompt.shape[1]
    # Nonzero only where `keep_end` truncation cut the two prompts differently; it shifts the chosen row's prompt.
    offset = rejected_prompt.sum(dim=1, keepdim=True) - chosen_prompt.sum(dim=1, keepdim=True)
    source = torch.arange(length, device=delta.device) + offset
    valid = chosen_prompt & (source >= 0) & (source < length)
    index = source.clamp(0, length - 1).unsqueeze(-1).expand_as(delta)
    chosen_delta = torch.where(valid.unsqueeze(-1), delta.gather(1, index), 0.0)
    rejected_delta = torch.where(rejected_prompt.unsqueeze(-1), delta, 0.0)
    return torch.cat([chosen_delta, rejected_delta])


class CAPOTrainer(DPOTrainer):
    """trl `DPOTrainer` whose training loss is C-AdvIPO: IPO on prompt + a targeted embedding attack.

    Takes trl's preference data unchanged: `prompt`, `chosen` (the refusal) and `rejected` (the harmful completion),
    conversational or plain (an implicit prompt is extracted by trl for conversational rows). Per training step:

    1. `embedding_attack` on the rejected rows (prompt + harmful completion, labels = the completion tokens) gives
       delta, shape (batch, seq, hidden), within `attack_eps` per token of the prompt.
    2. The same delta goes onto the prompt positions of the chosen and rejected rows (`shared_prompt_delta`).
    3. trl's IPO loss, the policy log-probs on prompt + delta, the reference log-probs on the clean prompt (the
       adapter-disabled model with PEFT, `ref_model`, or `precompute_ref_log_probs`).

    `attack_loss`, `attack_delta_norm` and `attack_success` are logged each step, over all processes. Evaluation
    computes trl's clean IPO loss.

    Args:
        model, ref_model, data_collator, train_dataset, eval_dataset, processing_class, compute_metrics, callbacks,
        optimizers, quantization_config, peft_config: As in `DPOTrainer`. Full fine-tuning of an in-memory model
            needs `ref_model` (a copy) or `precompute_ref_log_probs=True`; with `peft_config` the reference is the
            model without adapters.
        args: `CAPOConfig` (defaults to `CAPOConfig("<model>-CAPO")`).
    """

    _tag_names = ["trl", "dpo", "hf-robust", "capo"]
    _name = "CAPO"
    _paper = PAPER

    def __init__(
        self,
        model,
        ref_model=None,
        args: CAPOConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = CAPOConfig(f"{name.rstrip('/').split('/')[-1]}-CAPO")
        if not isinstance(args, CAPOConfig):
            raise TypeError(f"`args` must be a CAPOConfig, got {type(args).__name__}.")
        self.attack, self._attacks_run = args.attack_config(), 0  # (the count seeds uniform starts)
        super().__init__(
            model, ref_model=ref_model, args=args, data_collator=data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, compute_metrics=compute_metrics,
            callbacks=callbacks, optimizers=optimizers, quantization_config=quantization_config,
            peft_config=peft_config,
        )

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        columns = set(next(iter(dataset)).keys())
        missing = [name for name in ("chosen", "rejected") if name not in columns]
        if "prompt" not in columns and (missing or not is_conversational(next(iter(dataset)))):
            # Without `prompt`, trl takes the turns chosen and rejected share; for plain strings that would be a
            # character prefix, so plain data must name its prompt.
            missing.insert(0, "prompt")
        if missing:
            raise ValueError(
                f"CAPOTrainer needs preference data with `prompt`, `chosen` (refusal) and `rejected` (harmful target) "
                f"columns; the {dataset_name} dataset lacks {', '.join(f'`{name}`' for name in missing)} "
                f"(columns: {sorted(columns)})."
            )
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def adversarial_delta(self, model, inputs: dict) -> tuple[torch.Tensor, EmbeddingAttackResult, torch.Tensor]:
        """Run the attack on the rejected half of a collated preference batch.

        Args:
            model: The (possibly wrapped) policy.
            inputs: trl's batch: `input_ids`, `attention_mask`, `completion_mask`, each (2 * batch, seq).

        Returns:
            `(delta, result, mask)`: delta (2 * batch, seq, hidden) float32 for the whole batch (see
            `shared_prompt_delta`), the attack's result on the rejected rows, and its perturbable positions
            (batch, seq), bool.
        """
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        completion_mask = inputs["completion_mask"]
        rejected = slice(input_ids.shape[0] // 2, None)
        labels = input_ids[rejected].masked_fill(completion_mask[rejected] == 0, IGNORE_INDEX)
        self._attacks_run += 1
        attack = self.args.attack_config_for_call(self._attacks_run, self.accelerator.process_index)
        result = embedding_attack(
            self.accelerator.unwrap_model(model), input_ids[rejected], attention_mask[rejected], labels, attack
        )
        mask = (attention_mask[rejected] == 1) & (labels == IGNORE_INDEX)
        return shared_prompt_delta(result.delta, completion_mask, attention_mask), result, mask

    def _log_attack(self, result: EmbeddingAttackResult, mask: torch.Tensor) -> None:
        local = attack_metrics(result, mask)
        rows, positions = mask.shape[0], int(mask.sum())
        # Sums and counts, so that the gathered means weigh every row (and every perturbed position) once.
        totals = torch.tensor(
            [local["attack_loss"] * rows, local["attack_success"] * rows, local["attack_delta_norm"] * positions,
             rows, positions], dtype=torch.float64, device=self.accelerator.device,
        )
        loss, success, norm, rows, positions = self.accelerator.gather(totals.unsqueeze(0)).sum(dim=0).tolist()
        metrics = self._metrics["train"]
        metrics["attack_loss"].append(loss / rows)
        metrics["attack_success"].append(success / rows)
        metrics["attack_delta_norm"].append(norm / positions if positions else 0.0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not (model.training and torch.is_grad_enabled()):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        delta, result, mask = self.adversarial_delta(model, inputs)
        self._log_attack(result, mask)

        # Only the policy forward: trl runs the reference forward (and return_outputs' extra one) under no_grad.
        with added_to_input_embeddings(self.accelerator.unwrap_model(model), delta, only_with_grad=True) as perturbed:
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not perturbed:  # never train on clean inputs silently
            raise RuntimeError("CAPOTrainer: the policy forward did not go through `get_input_embeddings()`.")
        return loss
