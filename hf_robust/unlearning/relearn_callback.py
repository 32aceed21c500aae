"""`RelearningEvalCallback`: the relearning attack at every evaluation of a Trainer, logged and kept for the card."""

from __future__ import annotations

from transformers import TrainerCallback

from ..hub import RobustnessResult
from ..sharding import has_sharded_weights, on_main_process
from .metrics.inputs import text_rows
from .relearn import RelearnConfig, RelearnResult, relearning_attack

__all__ = ["RelearningEvalCallback"]


class RelearningEvalCallback(TrainerCallback):
    """Runs `relearning_attack` on the current model at every `on_evaluate` and logs the recovery through the trainer.

    Like `RobustnessEvalCallback` (and trl's `LogCompletionsCallback`) it takes the trainer and calls `trainer.log`,
    so the values land in `trainer.state.log_history` and every `report_to` integration: `relearn/<metric>_before`,
    `relearn/<metric>_after` for each metric of `UnlearningMetrics`, `relearn/recovery` (forget-NLL drop) and
    `relearn/seconds`. The attack fine-tunes a copy of the unwrapped model, so training is unaffected. Each process
    runs the same seeded attack and logs the same values; it needs the whole model on each process (single process
    or DDP, not sharded parameters).

        trainer = UnlearnTrainer(..., args=UnlearnConfig(..., eval_strategy="steps", eval_steps=50))
        callback = RelearningEvalCallback(trainer, forget_train, eval_forget=forget_held_out)
        trainer.add_callback(callback)
        trainer.train()
        push_robust_to_hub(model, repo_id, results=callback.results)

    Args:
        trainer: A `transformers.Trainer` (or subclass) whose `processing_class` is the tokenizer.
        forget_dataset, retain_dataset, eval_forget: As in `relearning_attack`.
        config: Attack settings (`RelearnConfig()` by default).
        evaluation: Keyword arguments of `evaluate_unlearning`, e.g. {"max_new_tokens": 32, "mc_questions": rows}.
        dataset_name, split: Dataset name and split recorded on the model card.

    Attributes:
        results: The latest `RobustnessResult`s (attack "relearning"; empty before the first evaluation).
        history: Every `RelearnResult`, one per evaluation.
    """

    def __init__(
        self,
        trainer,
        forget_dataset,
        retain_dataset=None,
        config: RelearnConfig | None = None,
        eval_forget=None,
        evaluation: dict | None = None,
        dataset_name: str = "forget set",
        split: str | None = None,
    ):
        if not all(hasattr(trainer, name) for name in ("log", "accelerator", "model")):
            raise TypeError(f"`trainer` must be a transformers Trainer, got {type(trainer).__name__}.")
        config = RelearnConfig() if config is None else config
        if not isinstance(config, RelearnConfig):
            raise TypeError(f"`config` must be a RelearnConfig, got {type(config).__name__}.")
        if evaluation is not None and not isinstance(evaluation, dict):
            raise TypeError(
                f"`evaluation` must be a dict of evaluate_unlearning arguments, got {type(evaluation).__name__}."
            )
        if not isinstance(dataset_name, str) or not dataset_name.strip():
            raise ValueError(f"`dataset_name` must be a non-empty string, got {dataset_name!r}.")
        if len(text_rows(forget_dataset, "forget_dataset")) < config.n_samples:
            raise ValueError(f"`forget_dataset` has fewer rows than `config.n_samples`={config.n_samples}.")
        for name, rows in (("retain_dataset", retain_dataset), ("eval_forget", eval_forget)):
            if rows is not None:
                text_rows(rows, name)
        self.trainer = trainer
        self.forget_dataset, self.retain_dataset, self.eval_forget = forget_dataset, retain_dataset, eval_forget
        self.config = config
        self.evaluation = dict(evaluation or {})
        self.dataset_name, self.split = dataset_name, split
        self.results: list[RobustnessResult] = []
        self.history: list[RelearnResult] = []

    def on_evaluate(self, args, state, control, **kwargs):
        accelerator = self.trainer.accelerator
        model = accelerator.unwrap_model(self.trainer.model)

        def attack(attacked_model):
            return relearning_attack(
                attacked_model, self.trainer.processing_class, self.forget_dataset, self.config, self.retain_dataset,
                self.eval_forget, **self.evaluation,
            )  # fmt: skip

        # FSDP2 / ZeRO-3: on the main process over a plain copy with the gathered weights, the others waiting (a
        # copy of sharded weights would be partial, and one rank alone inside the collectives would hang).
        result = on_main_process(accelerator, self.trainer.model_wrapped, attack) if has_sharded_weights(
            model) else attack(model)
        self.history.append(result)
        self.results = result.robustness_results(self.dataset_name, self.split)
        self.trainer.log(result.log_values())
