"""`UnlearnTrainer`: LLM unlearning (GA, GradDiff, NPO, SimNPO, RMU) with a smoothed forget loss (SAM, RS, GP, CR, WA).

Fan et al. (ICML 2025), "Towards LLM Unlearning Resilient to Relearning Attacks: A Sharpness-Aware Minimization
Perspective and Beyond", arXiv 2502.05374.

Each forget example is paired with a seeded random retain example; a batch holds `forget_*` and `retain_*` tensors.
Losses are normalised by counts over the whole accumulation window and all processes (`get_batch_samples`), so
gradient accumulation and DDP give the big-batch objective. Smoothers needing several backward passes override
`training_step` only; the Trainer's loop then clips and takes its single optimizer and scheduler step.
"""

import contextlib

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, Trainer

from ..modeling import is_peft_model
from ..sharding import ENGINE_LABELS, engine_of, inner_module, refuse_before_work
from .config import PAPER, UnlearnConfig
from .data import UnlearnDataCollator, pad_to, paired_dataset, stacked, tokenized
from .reference import frozen_copy, prepare_reference
from .rmu import captured_output, decoder_layers, select_rmu_parameters
from .objectives import (
    IGNORE_INDEX, activation_mse, gradient_ascent_loss, kl_to_reference, npo_loss, random_unit_vector, sequence_nll,
    simnpo_loss,
)
from .smoothers import make_smoother
from .smoothing import WeightAveragingCallback

# Window counts, in this order, gathered once per optimizer step.
COUNTS = ("forget_sequences", "forget_tokens", "forget_positions", "retain_sequences", "retain_tokens",
          "retain_positions")
# Which count each forget objective is a mean over.
FORGET_COUNT = {"ga": "forget_tokens", "graddiff": "forget_tokens", "npo": "forget_sequences",
                "simnpo": "forget_sequences", "rmu": "forget_positions"}


class UnlearnTrainer(Trainer):
    """`Trainer` whose loss is an unlearning objective on paired forget/retain batches, optionally smoothed.

    Args:
        model: `PreTrainedModel`, `PeftModel` or a model id/path (loaded with `AutoModelForCausalLM`).
        args: `UnlearnConfig`.
        forget_dataset: `datasets.Dataset` with raw strings in `text` or token ids in `input_ids` (and optional
            `labels`); rows are truncated to `args.max_length`.
        retain_dataset: same format; required when the objective has a retain term (not for `ga`, nor with
            `retain_weight=0`, or `rmu_alpha=0` for `rmu`).
        processing_class: tokenizer (needed for `text` columns; its pad id pads batches).
        ref_model: frozen reference (model or id) for NPO, `retain_loss="kl"` and RMU's retain activations. None:
            the adapter-disabled base of a PEFT model, else a frozen deep copy of `model` made here.
        data_collator, callbacks, optimizers: as in `Trainer`.
        peft_config: a `peft` config; when given, `model` is wrapped with `get_peft_model`.

    Logs per step `forget_loss` and `retain_loss` (at the unperturbed weights; RS: the forget loss averaged over its
    noise samples) and, per smoother, `forget_loss_perturbed` and `sam_grad_norm` (SAM), `gp_penalty`, `cr_penalty`.
    """

    _tag_names = ["hf-robust", "unlearning"]
    _name = "Unlearn"
    _paper = PAPER
    # Losses are normalised by window counts (see `get_batch_samples`): the Trainer must not divide by GA again.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model,
        args: UnlearnConfig | None = None,
        forget_dataset: Dataset | None = None,
        retain_dataset: Dataset | None = None,
        processing_class=None,
        ref_model=None,
        data_collator=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
    ):
        if args is None:
            args = UnlearnConfig(output_dir="unlearn_output")
        if not isinstance(args, UnlearnConfig):
            raise TypeError(f"`args` must be an UnlearnConfig, got {type(args).__name__}.")
        if isinstance(model, str):
            model = AutoModelForCausalLM.from_pretrained(model)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a model or a model id, got {type(model).__name__}.")
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        if forget_dataset is None:
            raise ValueError("`forget_dataset` is required: a datasets.Dataset with a `text` or `input_ids` column.")
        self.has_retain_term = (args.rmu_alpha > 0) if args.method == "rmu" else (
            args.method != "ga" and args.retain_weight > 0)
        if self.has_retain_term and retain_dataset is None:
            raise ValueError(f"`retain_dataset` is required for method={args.method!r} (set retain_weight=0, or "
                             "rmu_alpha=0 for rmu, to unlearn without a retain term).")
        forget = tokenized(forget_dataset, "forget_dataset", processing_class, args.max_length)
        retain = (tokenized(retain_dataset, "retain_dataset", processing_class, args.max_length)
                  if self.has_retain_term else None)
        pairs = paired_dataset(forget, retain, args.seed)

        if args.method == "rmu":
            select_rmu_parameters(model, args.rmu_layer, args.parameter_regex())
        self.reference_is_base, copied_reference = False, False
        needs_reference = args.method == "npo" or (
            self.has_retain_term and (args.method == "rmu" or args.retain_loss == "kl"))
        if not needs_reference:
            ref_model = None
        elif ref_model is None and is_peft_model(model):
            self.reference_is_base = True  # the adapter-disabled base: no copy
        elif ref_model is None:
            ref_model, copied_reference = frozen_copy(model), True
        if isinstance(ref_model, str):
            ref_model = AutoModelForCausalLM.from_pretrained(ref_model)
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
        self.ref_model = ref_model

        if data_collator is None:
            pad = getattr(processing_class, "pad_token_id", None)
            if pad is None:
                pad = getattr(processing_class, "eos_token_id", None) or 0
            data_collator = UnlearnDataCollator(pad_token_id=pad)
        callbacks = list(callbacks or [])
        if args.smoothing == "wa":
            callbacks.append(WeightAveragingCallback(args.wa_start, args.wa_every))
        super().__init__(model=model, args=args, train_dataset=pairs, data_collator=data_collator,
                         processing_class=processing_class, callbacks=callbacks, optimizers=optimizers)
        self._check_parallelism()
        if self.ref_model is not None:
            self.ref_model = prepare_reference(self.ref_model, self, copied_reference)
        if args.method == "rmu":
            hidden = self.model.config.get_text_config().hidden_size
            self.steering = args.rmu_steering_coeff * random_unit_vector(hidden, args.seed).to(self.args.device)
        self._window_counts = None
        self.smoother = make_smoother(self)
        self._log_sums: dict[str, torch.Tensor] = {}
        self._windows_since_log = 0

    # ------------------------------------------------------------------ set-up

    def _check_parallelism(self) -> None:
        """Refuse, before any work, the engine x smoothing combinations that cannot be exact."""
        smoothing, engine = self.args.smoothing, engine_of(self.accelerator)
        combination = f"UnlearnTrainer smoothing={smoothing!r} under {ENGINE_LABELS.get(engine, engine)}"
        if smoothing in ("sam", "rs", "gp", "cr") and engine.startswith("zero"):
            raise refuse_before_work(
                combination, "its extra passes perturb the weights along the full gradient and restore them, but "
                "DeepSpeed keeps gradients (ZeRO-2/3) and weights (ZeRO-3) inside its engine between backward and "
                "step",
                "FSDP2 (--accelerate_config fsdp2; SAM and RS work on local shards there), DDP, or smoothing='none'")
        if smoothing in ("sam", "rs", "gp", "cr") and engine == "fsdp1":
            raise refuse_before_work(combination, "FSDP1 flattens the parameters; the smoothers work on FSDP2's "
                                     "per-parameter shards", "FSDP2 (fsdp_version: 2), DDP, or smoothing='none'")
        if smoothing in ("gp", "cr") and engine == "fsdp2":
            raise refuse_before_work(combination, "the double backward of the gradient/curvature penalty cannot run "
                                     "through FSDP2's all-gather and reduce-scatter hooks",
                                     "smoothing='sam' or 'rs' under FSDP2, or 'gp'/'cr' under DDP")
        if smoothing == "wa" and engine == "zero3":
            raise refuse_before_work(combination, "ZeRO-3 partitions the weights, so the running average would "
                                     "read and write empty tensors", "ZeRO-2, FSDP2 or DDP")
        args = self.args
        if args.smoothing in ("gp", "cr") and not self.has_retain_term and self.accelerator.num_processes > 1:
            raise ValueError(f"smoothing={args.smoothing!r} with method={args.method!r} (no retain term) is not "
                             "supported on several processes: the double backward would be the synced DDP pass.")

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [f"{prefix}{column}" for prefix in ("forget_", "retain_")
                                       for column in ("input_ids", "labels")]

    # ------------------------------------------------------------------ normalisation

    @staticmethod
    def _batch_counts(batch: dict[str, torch.Tensor]) -> list[int]:
        counts = []
        for prefix in ("forget_", "retain_"):
            if f"{prefix}input_ids" not in batch:
                counts += [0, 0, 0]
                continue
            scored = int((batch[f"{prefix}labels"][:, 1:] != IGNORE_INDEX).sum())
            counts += [batch[f"{prefix}input_ids"].shape[0], scored, int(batch[f"{prefix}attention_mask"].sum())]
        return counts

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also count sequences, scored tokens and positions over the window and all processes: every loss term is
        a sum divided by its window count, so k micro-batches of n rows give the gradient of one batch of k*n rows."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = torch.zeros(len(COUNTS), dtype=torch.float64, device=device)
        for batch in batch_samples:
            counts += torch.tensor(self._batch_counts(batch), dtype=torch.float64, device=device)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(dim=0)
        self._window_counts = dict(zip(COUNTS, counts.tolist()))
        self._windows_since_log += 1
        return batch_samples, num_items_in_batch

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            self._window_counts = None  # later calls (evaluation, tests) normalise by their own batch
            if self.smoother is not None:
                self.smoother.release()  # the smoothers' weight copy lives only while training

    def _divisor(self, count_name: str, local_count: torch.Tensor, model) -> torch.Tensor:
        """Window count / processes (DDP averages gradients) in training, else the batch's own count."""
        if model.training and self._window_counts is not None:
            return local_count.new_tensor(max(self._window_counts[count_name], 1.0) / self.accelerator.num_processes,
                                          dtype=torch.float32)
        return local_count.float().clamp_min(1)

    # ------------------------------------------------------------------ forward passes

    def _reference_context(self, model):
        if self.reference_is_base:
            return self.accelerator.unwrap_model(model).disable_adapter()
        return contextlib.nullcontext()

    def _rmu_layer(self, module):
        return decoder_layers(module)[self.args.rmu_layer]

    def _forward(self, model, batch, prefix: str, parameters=None, layer=None):
        """Logits (batch, seq, vocab) of the `prefix` rows, or the output of `layer` if given (RMU).

        `parameters`: {name: tensor} overrides of `model`'s parameters (torch.func.functional_call), for CR.
        """
        kwargs = {"input_ids": batch[f"{prefix}input_ids"], "attention_mask": batch[f"{prefix}attention_mask"],
                  "use_cache": False}
        with contextlib.ExitStack() as stack:
            captured = stack.enter_context(captured_output(layer)) if layer is not None else None
            if parameters is None:
                outputs = model(**kwargs)
            else:
                outputs = torch.func.functional_call(model, parameters, args=(), kwargs=kwargs, strict=False)
        return captured[0] if layer is not None else outputs.logits

    def _reference_outputs(self, model, batch) -> dict[str, torch.Tensor]:
        """Everything the objective needs from the frozen reference, computed ONCE per micro-batch, no grad."""
        method, outputs = self.args.method, {}
        needs = {
            "forget_nll": method == "npo",
            "retain_logits": self.has_retain_term and method != "rmu" and self.args.retain_loss == "kl",
            "retain_activations": self.has_retain_term and method == "rmu",
        }
        if not any(needs.values()):
            return outputs
        reference = self.ref_model if self.ref_model is not None else self.accelerator.unwrap_model(model)
        with torch.no_grad(), self.compute_loss_context_manager(), self._reference_context(model):
            if needs["forget_nll"] and needs["retain_logits"]:
                # One forward over both row sets (right padding leaves real positions unchanged).
                logits = self._forward(reference, stacked(batch), "stacked_")
                rows = batch["forget_input_ids"].shape[0]
                forget_labels = pad_to(batch["forget_labels"], logits.shape[1])
                outputs["forget_nll"] = sequence_nll(logits[:rows], forget_labels)[0]
                outputs["retain_logits"] = logits[rows:, : batch["retain_input_ids"].shape[1]]
            elif needs["forget_nll"]:
                outputs["forget_nll"] = sequence_nll(self._forward(reference, batch, "forget_"),
                                                     batch["forget_labels"])[0]
            elif needs["retain_logits"]:
                outputs["retain_logits"] = self._forward(reference, batch, "retain_")
            if needs["retain_activations"]:
                outputs["retain_activations"] = self._forward(reference, batch, "retain_",
                                                              layer=self._rmu_layer(inner_module(reference)))
        return outputs

    def _forget_terms(self, model, batch, reference, parameters=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the per-sequence forget losses, the count it is a mean over) for this micro-batch."""
        args = self.args
        if args.method == "rmu":
            unwrapped = self.accelerator.unwrap_model(model) if parameters is None else model
            activations = self._forward(model, batch, "forget_", parameters, layer=self._rmu_layer(unwrapped))
            mask = batch["forget_attention_mask"]
            return activation_mse(activations, self.steering, mask).sum(), mask.sum()
        nll, tokens = sequence_nll(self._forward(model, batch, "forget_", parameters), batch["forget_labels"])
        if args.method == "npo":
            return npo_loss(nll, reference["forget_nll"], args.beta).sum(), tokens.new_tensor(nll.shape[0])
        if args.method == "simnpo":
            return simnpo_loss(nll, tokens, args.beta, args.simnpo_delta).sum(), tokens.new_tensor(nll.shape[0])
        return gradient_ascent_loss(nll).sum(), tokens.sum()

    def _retain_terms(self, model, batch, reference, parameters=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the retain loss over tokens or positions, that count) for this micro-batch."""
        if self.args.method == "rmu":
            unwrapped = self.accelerator.unwrap_model(model) if parameters is None else model
            activations = self._forward(model, batch, "retain_", parameters, layer=self._rmu_layer(unwrapped))
            mask = batch["retain_attention_mask"]
            return activation_mse(activations, reference["retain_activations"], mask).sum(), mask.sum()
        logits = self._forward(model, batch, "retain_", parameters)
        labels = batch["retain_labels"]
        if self.args.retain_loss == "kl":
            terms = kl_to_reference(logits, reference["retain_logits"], labels)
        else:
            terms = sequence_nll(logits, labels)[0]
        return terms.sum(), (labels[:, 1:] != IGNORE_INDEX).sum()

    @property
    def _retain_coefficient(self) -> float:
        return self.args.rmu_alpha if self.args.method == "rmu" else self.args.retain_weight

    def _forget_loss(self, model, batch, reference, parameters=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(window-normalised forget loss of this micro-batch, its weight = local count / window divisor)."""
        total, count = self._forget_terms(model, batch, reference, parameters)
        divisor = self._divisor(FORGET_COUNT[self.args.method], count, model)
        return total / divisor, count.to(divisor) / divisor

    def _retain_loss(self, model, batch, reference, parameters=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(window-normalised retain loss of this micro-batch, without its coefficient; its weight)."""
        total, count = self._retain_terms(model, batch, reference, parameters)
        divisor = self._divisor("retain_positions" if self.args.method == "rmu" else "retain_tokens", count, model)
        return total / divisor, count.to(divisor) / divisor

    # ------------------------------------------------------------------ losses and steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The unsmoothed objective L_f + coefficient * L_r (used by smoothing 'none'/'wa' and by evaluation)."""
        reference = self._reference_outputs(model, inputs)
        forget, _ = self._forget_loss(model, inputs, reference)
        self._record(model, forget_loss=forget)
        loss = forget
        if self.has_retain_term:
            retain, _ = self._retain_loss(model, inputs, reference)
            self._record(model, retain_loss=retain)
            loss = loss + self._retain_coefficient * retain
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """SAM, RS, GP and CR (`smoothers`): several forward/backward passes into `.grad`, weights restored exactly;
        the Trainer then clips and steps once. Other smoothings use the Trainer's own step on `compute_loss`."""
        smoothing = self.args.smoothing
        if smoothing in ("none", "wa"):
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        if engine_of(self.accelerator) == "fsdp2":
            # The Trainer's no_sync on early micro-steps would keep unsharded gradients that the smoothers cannot read.
            model.set_requires_gradient_sync(True)
        with self.compute_loss_context_manager():
            reference = self._reference_outputs(model, inputs)
        return self.smoother.step(model, inputs, reference).detach()

    def _sync(self, model, last: bool):
        """DDP all-reduces only in the last backward of a micro-step; the others accumulate locally (no_sync). FSDP2
        reduce-scatters every backward: its gradients stay sharded (no_sync would keep full unsharded copies), and
        SAM's ascent then follows the gradient of all ranks' rows."""
        if last or engine_of(self.accelerator) == "fsdp2":
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def _backward(self, loss: torch.Tensor) -> None:
        kwargs = {"scale_wrt_gas": False} if self.is_deepspeed_enabled else {}
        self.accelerator.backward(loss, **kwargs)

    def _retain_pass(self, model, inputs, reference) -> torch.Tensor:
        """Retain loss at the current weights, backward with its coefficient: the synced last pass."""
        with self.compute_loss_context_manager():
            retain, _ = self._retain_loss(model, inputs, reference)
        self._backward(self._retain_coefficient * retain)
        self._record(model, retain_loss=retain)
        return self._retain_coefficient * retain.detach()

    # ------------------------------------------------------------------ logging

    def _record(self, model, per_micro_step: bool = False, **values: torch.Tensor) -> None:
        """Add training values to the per-log sums. Loss terms are window-normalised, so their sum over a window's
        micro-steps is the window's value; `per_micro_step` values are divided by the window's micro-step count."""
        if not model.training:
            return
        share = 1.0
        if per_micro_step and self._window_counts is not None:
            share = 1.0 / max(1, getattr(self, "current_gradient_accumulation_steps", 1))
        for name, value in values.items():
            value = value.detach().float().reshape(()) * share
            self._log_sums[name] = self._log_sums.get(name, 0.0) + value

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also get the recorded terms: averaged over processes and over the steps since last log."""
        if "loss" in logs and self._log_sums:
            names = sorted(self._log_sums)
            values = torch.stack([self._log_sums[name].to(self.args.device) for name in names])
            values = self.accelerator.gather(values.unsqueeze(0)).mean(dim=0)
            windows = max(1, self._windows_since_log)
            logs.update({name: value / windows for name, value in zip(names, values.tolist())})
            self._log_sums, self._windows_since_log = {}, 0
        super().log(logs, start_time)
