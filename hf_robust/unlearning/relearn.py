"""Relearning attack: fine-tune a copy of an unlearned model on a few forget samples and measure what comes back.

Protocol defaults follow Fan et al. (ICML 2025) / Unlearn-Smooth's WMDP relearning: plain NLL on forget documents,
AdamW, lr 1e-5, batch 4, no weight decay, gradient clipping at 1.0, one pass over 20, 40 or 60 samples (5, 10 or
15 steps). Unlike the reference (linear schedule after one warmup step) the learning rate is constant.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..checks import is_integer
from ..hub import RobustnessResult
from ..modeling import eval_mode
from .metrics import UnlearningMetrics, evaluate_unlearning
from .metrics.inputs import encode_rows, text_rows
from .metrics.likelihood import right_padded

__all__ = ["RelearnConfig", "RelearnResult", "relearning_attack"]

OPTIMIZERS = ("adamw", "sgd")
PARAMETER_CHOICES = ("all", "trainable")
IGNORE_INDEX = -100
LOG_PREFIX = "relearn/"


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class RelearnConfig:
    """Settings of `relearning_attack`.

    Args:
        n_samples: Forget rows the attacker fine-tunes on, drawn without replacement (`random.Random(seed).sample`).
        steps: Optimizer steps; None makes one pass over the samples (ceil(n_samples / batch_size) steps). Longer
            runs go through the samples again, reshuffled each pass; a pass may end with a smaller batch. A list of
            step counts (increasing, e.g. [0, 25, 50, 100, 150]) makes one run to the largest and measures after
            each: the relearning curve (`RelearnResult.curve`).
        learning_rate: Constant learning rate.
        batch_size: Sequences per step (loss: mean token NLL over the batch, as `outputs.loss`).
        optimizer: "adamw" (torch AdamW, betas (0.9, 0.999), eps 1e-8) or "sgd" (plain SGD).
        weight_decay: Decoupled weight decay of AdamW (0, as in the reference); unused by SGD.
        max_grad_norm: Clip the gradient's global L2 norm to this (None: no clipping).
        seed: Seeds the sample choice, their order and any dropout (in a forked RNG: the global seed is untouched).
        max_length: Tokens kept per sequence, in training and in the measurements.
        parameters: What the attacker trains. "all" (the paper's attacker, who holds the weights): every
            floating-point parameter of the copy, a `PeftModel` merged into its base model first, whatever the
            unlearning trained (RMU's few layers, LoRA adapters). "trainable": only the parameters that require
            grad in the given model (the adapters of a `PeftModel`, RMU's layers): a weaker threat model.
    """

    n_samples: int = 20
    steps: int | list[int] | None = None
    learning_rate: float = 1e-5
    batch_size: int = 4
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    max_length: int = 512
    parameters: str = "all"

    def __post_init__(self):
        if not is_integer(self.n_samples) or self.n_samples < 1:
            raise ValueError(f"`n_samples` must be an integer >= 1, got {self.n_samples!r}.")
        if isinstance(self.steps, (list, tuple)):
            if not self.steps or not all(is_integer(step) and step >= 0 for step in self.steps) or any(
                    later <= earlier for earlier, later in zip(self.steps, self.steps[1:])) or self.steps[-1] < 1:
                raise ValueError("`steps` as a curve must be a non-empty increasing list of integers >= 0 ending "
                                 f">= 1, got {self.steps!r}.")
            self.steps = [int(step) for step in self.steps]
        elif self.steps is not None and (not is_integer(self.steps) or self.steps < 1):
            raise ValueError(f"`steps` must be None, an integer >= 1 or an increasing list of step counts, got "
                             f"{self.steps!r}.")
        if not _is_number(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be a finite number > 0, got {self.learning_rate!r}.")
        if not is_integer(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1, got {self.batch_size!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be a finite number >= 0, got {self.weight_decay!r}.")
        if self.max_grad_norm is not None and (not _is_number(self.max_grad_norm) or self.max_grad_norm <= 0):
            raise ValueError(f"`max_grad_norm` must be None or a finite number > 0, got {self.max_grad_norm!r}.")
        if not is_integer(self.seed) or self.seed < 0:
            raise ValueError(f"`seed` must be an integer >= 0, got {self.seed!r}.")
        if not is_integer(self.max_length) or self.max_length < 2:
            raise ValueError(f"`max_length` must be an integer >= 2, got {self.max_length!r}.")
        if self.parameters not in PARAMETER_CHOICES:
            raise ValueError(f"`parameters` must be one of {PARAMETER_CHOICES}, got {self.parameters!r}.")

    @property
    def total_steps(self) -> int:
        """`steps` (its largest count for a curve), or one pass over the samples when it is None."""
        if isinstance(self.steps, list):
            return self.steps[-1]
        return self.steps if self.steps is not None else math.ceil(self.n_samples / self.batch_size)

    @property
    def measured_steps(self) -> list[int]:
        """The step counts after which the metrics are measured: the curve's, else only the last."""
        return list(self.steps) if isinstance(self.steps, list) else [self.total_steps]


@dataclass
class RelearnResult:
    """What `relearning_attack` measured.

    Attributes:
        before: Metrics of the model as given. after: Metrics of the fine-tuned copy, on the same rows.
        samples: Indices of the forget rows the copy was fine-tuned on, in drawing order.
        steps: Optimizer steps taken. seconds: Wall time of the attack, measurements included.
        losses: Training loss (mean token NLL of the batch) at each step, before that step's update.
        config: The settings used.
        model: The fine-tuned copy when `return_model=True`, else None.
        curve: One (step count, metrics) per entry of `config.measured_steps`: the relearning curve (a single point,
            the last step, unless `config.steps` is a list); step 0 is `before`.
        measurements: One (step count, `measure(model)`) per curve point when `relearning_attack` got a `measure`
            callable (your own metrics at the same points), else empty.
    """

    before: UnlearningMetrics
    after: UnlearningMetrics
    samples: list[int]
    steps: int
    seconds: float = field(compare=False)
    losses: list[float] = field(default_factory=list)
    config: RelearnConfig = field(default_factory=RelearnConfig)
    model: Any = field(default=None, repr=False, compare=False)
    curve: list[tuple[int, UnlearningMetrics]] = field(default_factory=list)
    measurements: list[tuple[int, Any]] = field(default_factory=list, compare=False)

    @property
    def recovery(self) -> float:
        """Drop of the forget NLL under the attack (before - after); > 0 means forgotten knowledge came back."""
        return self.before.forget_nll - self.after.forget_nll

    def log_values(self) -> dict[str, float]:
        """`relearn/<metric>_before|_after` for each metric, `relearn/recovery` and `relearn/seconds`."""
        values = {}
        for stage, metrics in (("before", self.before), ("after", self.after)):
            for name, value in metrics.as_dict().items():
                if not name.endswith("_rows"):
                    values[f"{LOG_PREFIX}{name}_{stage}"] = float(value)
        values[f"{LOG_PREFIX}recovery"] = self.recovery
        values[f"{LOG_PREFIX}seconds"] = self.seconds
        if len(self.curve) > 1:
            for step, metrics in self.curve:
                values[f"{LOG_PREFIX}forget_nll_step_{step}"] = float(metrics.forget_nll)
        return values

    def robustness_results(self, dataset: str = "forget set", split: str | None = None) -> list[RobustnessResult]:
        """Model-card entries (attack "relearning") of forget/retain NLL and forget ROUGE-L before and after, and
        the recovery, ready for `push_robust_to_hub`."""
        attack_config = {**dataclasses.asdict(self.config), "steps": self.steps, "eval_rows": self.before.forget_rows}
        names = ["forget_nll", "retain_nll", "forget_rouge_l", "forget_exact_match", "mc_accuracy"]
        results = []
        for name in names:
            for stage, metrics in (("before", self.before), ("after", self.after)):
                value = getattr(metrics, name)
                if value is not None:
                    results.append(self._result(f"{name}_{stage}", value, dataset, split, attack_config))
        results.append(self._result("forget_nll_recovery", self.recovery, dataset, split, attack_config))
        if len(self.curve) > 1:  # the relearning curve: the forget NLL after each measured step count
            for step, metrics in self.curve:
                results.append(self._result(f"forget_nll_after_{step}_steps", metrics.forget_nll, dataset, split,
                                            attack_config))
        return results

    @staticmethod
    def _result(metric, value, dataset, split, attack_config) -> RobustnessResult:
        return RobustnessResult(
            attack="relearning", metric=metric, value=value, dataset=dataset, split=split, attack_config=attack_config
        )


def _batches(samples: list[int], batch_size: int, steps: int, rng: random.Random) -> list[list[int]]:
    """`steps` batches of sample indices: consecutive chunks of the samples, reshuffled before every pass after the
    first (a pass may end with a smaller batch, as a DataLoader without drop_last does)."""
    batches, order = [], list(samples)
    while len(batches) < steps:
        batches += [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        rng.shuffle(order)
    return batches[:steps]


def _fine_tune(model, sequences: list[list[int]], batches: list[list[int]], config: RelearnConfig,
               after_step=None) -> list[float]:
    """Fine-tune `model` in place on `batches` of `sequences` with plain NLL; returns the loss of each step.
    `after_step(step_count)` is called after every step (the model in eval mode during the call)."""
    if config.parameters == "all":
        for parameter in model.parameters():
            parameter.requires_grad_(parameter.is_floating_point())
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not parameters:
        raise ValueError(
            "`model` has no parameter with requires_grad=True: set `config.parameters='all'` to train every weight."
        )
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(parameters, lr=config.learning_rate)
    device = next(model.parameters()).device
    losses = []
    model.train()  # an attacker fine-tunes as in training (dropout on, if the model has any)
    for batch in batches:
        input_ids, attention_mask = right_padded([sequences[index] for index in batch], pad_id=0)
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        loss = model(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), labels=labels.to(device)
        ).loss
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if after_step is not None:
            model.eval()
            after_step(len(losses))
            model.train()
    model.eval()
    return losses


def attacker_copy(model, parameters: str):
    """The copy the attacker fine-tunes: with "all", a `PeftModel` is merged into a plain copy of its base model
    (the original and its adapters untouched); otherwise a deep copy."""
    if parameters == "all" and callable(getattr(model, "merge_and_unload", None)):
        return copy.deepcopy(model).merge_and_unload()
    return copy.deepcopy(model)


def relearning_attack(
    model,
    tokenizer,
    forget_dataset,
    config: RelearnConfig | None = None,
    retain_dataset=None,
    eval_forget=None,
    *,
    return_model: bool = False,
    measure=None,
    **evaluation,
) -> RelearnResult:
    """Fine-tune a deep copy of `model` on `config.n_samples` forget rows and measure the metrics before and after.

    The given model is never changed (parameters, `.grad`, train/eval flags): the attack trains a copy
    (`attacker_copy`: by default every weight, a `PeftModel` merged first; the copy needs as much memory as the
    model). With a list of `config.steps` it measures after each of those step counts (`RelearnResult.curve`).
    Measurements (`evaluate_unlearning`) run on `eval_forget` when given, e.g. held-out forget rows so that
    recovery on forget data the attacker never saw is measured, else on the whole `forget_dataset`; retain metrics
    on `retain_dataset` when given.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`), e.g. the output of unlearning.
        tokenizer: Its tokenizer.
        forget_dataset: The attacker's pool: list of strings / token-id lists, or a `Dataset` with `text` or
            `input_ids`; must hold at least `config.n_samples` rows.
        config: Attack settings; `RelearnConfig()` by default (the paper's attacker: every weight, 20 samples, 5 AdamW
            steps, lr 1e-5, batch 4).
        retain_dataset, eval_forget: Optional rows of the same forms.
        return_model: Keep the fine-tuned copy in `RelearnResult.model`.
        measure: Optional `measure(model) -> value`, called at every curve point (the model in eval mode, step 0 on
            the given model) for metrics of your own (e.g. answer accuracy of held-out facts); the values land in
            `RelearnResult.measurements`.
        **evaluation: Keyword arguments of `evaluate_unlearning` (mc_questions, prefix_fraction, max_new_tokens, k,
            batch_size, rouge_tokens, ...); max_length defaults to `config.max_length`.
    """
    config = RelearnConfig() if config is None else config
    if not isinstance(config, RelearnConfig):
        raise TypeError(f"`config` must be a RelearnConfig, got {type(config).__name__}.")
    start = time.perf_counter()
    pool = encode_rows(tokenizer, forget_dataset, "forget_dataset", config.max_length)
    if config.n_samples > len(pool):
        raise ValueError(
            f"`config.n_samples`={config.n_samples} is more than the {len(pool)} rows of `forget_dataset`."
        )
    measured_forget = forget_dataset if eval_forget is None else eval_forget
    text_rows(measured_forget, "eval_forget" if eval_forget is not None else "forget_dataset")
    if retain_dataset is not None:
        text_rows(retain_dataset, "retain_dataset")
    if measure is not None and not callable(measure):
        raise TypeError(f"`measure` must be callable (model -> value) or None, got {type(measure).__name__}.")
    evaluation = {"max_length": config.max_length, **evaluation}
    measurements = []

    def measured(measured_model, step: int) -> UnlearningMetrics:
        if measure is not None:
            with eval_mode(measured_model):
                measurements.append((step, measure(measured_model)))
        return evaluate_unlearning(measured_model, tokenizer, measured_forget, retain_dataset, **evaluation)

    before = measured(model, 0)
    rng = random.Random(config.seed)
    samples = rng.sample(range(len(pool)), config.n_samples)
    batches = _batches(samples, config.batch_size, config.total_steps, rng)
    attacked = attacker_copy(model, config.parameters)
    attacked.zero_grad(set_to_none=True)  # the copy starts without the original's gradients
    device = next(attacked.parameters()).device
    measured_steps = config.measured_steps
    curve = [(0, before)] if measured_steps[0] == 0 else []
    if measured_steps[0] != 0:
        measurements.clear()

    def after_step(step: int) -> None:
        if step in measured_steps:
            curve.append((step, measured(attacked, step)))

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
        torch.manual_seed(config.seed)
        losses = _fine_tune(attacked, pool, batches, config, after_step)
    return RelearnResult(
        before=before,
        after=curve[-1][1],
        samples=samples,
        steps=len(batches),
        seconds=time.perf_counter() - start,
        losses=losses,
        config=config,
        model=attacked if return_model else None,
        curve=curve,
        measurements=measurements,
    )
