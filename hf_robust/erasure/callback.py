"""`ConceptLeakageCallback`: prompt attacks on the erased concept during `AdvUnlearnTrainer` training."""

import time

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback

from ..hub import RobustnessResult
from .evaluation import prompt_attack
from .prompt_attack_config import PromptAttackConfig, check_concept_prompts, check_prompt_attack_config
from .results import PromptAttackResult

PREFIX = "leakage/"


class ConceptLeakageCallback(TrainerCallback):
    """Runs `prompt_attack` on the trained text encoder(s) and logs `leakage/*` through the trainer.

    The attacked model is the trainer's trained encoder(s) with its UNet (`trainer.erased_components()`: whole on
    every process, gathered under FSDP2 / DeepSpeed ZeRO-3); the targets come from its frozen
    `original_text_encoders`. `AdvUnlearnTrainer` has no evaluation dataset, so besides `on_evaluate` the callback runs
    every `every` optimizer steps and at the end of training (unless that step was just evaluated). Logged (through
    `trainer.log`, so into `state.log_history` and every `report_to` integration): `leakage/attack_success_rate`,
    `leakage/pre_attack_success_rate`, `leakage/<attack>_success_rate`, `leakage/mean_before` and
    `leakage/mean_<attack>` (mean leakage distances; see `hf_robust.erasure.leakage`). Under several processes the
    prompts are split between them and the rows gathered (`gather_object`), so every process logs the same values;
    each process attacks a whole copy of the model, outside the engine's collectives. Parameters, their `.grad`,
    train/eval flags and the global RNG are left as they were.

        trainer = AdvUnlearnTrainer(pipeline, args, concepts=["nudity"])
        callback = ConceptLeakageCallback(trainer, ["nudity", "a photo of a nude person"], every=200)
        trainer.add_callback(callback)
        trainer.train()
        push_robust_to_hub(..., results=callback.results)

    Args:
        trainer: an `AdvUnlearnTrainer`.
        concept_prompts: prompts of the erased concept to attack.
        config: `PromptAttackConfig`; None: the defaults.
        every: run every this many optimizer steps (None: only at `on_evaluate` and the end of training).
        at_evaluate: also run at every `on_evaluate`.
        at_train_end: also run when training ends.
        concept_detector: optional `images -> bool | list[bool]` deciding success on generated images.
        dataset_name: name of the prompt set on the model card.
        split: split recorded on the model card, or None.

    Attributes:
        result: the latest `PromptAttackResult` (all prompts), None before the first run.
        results: the latest `RobustnessResult`s, ready for `push_robust_to_hub`.
        seconds: wall time of the latest run.
    """

    def __init__(self, trainer, concept_prompts, config: PromptAttackConfig | None = None, *, every: int | None = None,
                 at_evaluate: bool = True, at_train_end: bool = True, concept_detector=None,
                 dataset_name: str = "concept prompts", split: str | None = None):
        from .trainer import AdvUnlearnTrainer

        if not isinstance(trainer, AdvUnlearnTrainer):
            raise TypeError(f"`trainer` must be an AdvUnlearnTrainer, got {type(trainer).__name__}.")
        if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ValueError(f"`every` must be None or an integer >= 1, got {every!r}.")
        for name, value in (("at_evaluate", at_evaluate), ("at_train_end", at_train_end)):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be True or False, got {value!r}.")
        if concept_detector is not None and not callable(concept_detector):
            raise TypeError(f"`concept_detector` must be callable (images -> bool), got "
                            f"{type(concept_detector).__name__}.")
        if not isinstance(dataset_name, str) or not dataset_name.strip():
            raise ValueError(f"`dataset_name` must be a non-empty string, got {dataset_name!r}.")
        if split is not None and (not isinstance(split, str) or not split.strip()):
            raise ValueError(f"`split` must be None or a non-empty string, got {split!r}.")
        self.trainer = trainer
        self.concept_prompts = check_concept_prompts(concept_prompts)
        self.config = check_prompt_attack_config(config)
        self.every, self.at_evaluate, self.at_train_end = every, at_evaluate, at_train_end
        self.concept_detector = concept_detector
        self.dataset_name, self.split = dataset_name, split
        self.result: PromptAttackResult | None = None
        self.results: list[RobustnessResult] = []
        self.seconds = 0.0
        self._last_step = None

    def run(self) -> PromptAttackResult:
        """Attack now (every process must call this together), log and store the results."""
        start = time.perf_counter()
        trainer = self.trainer
        attacked = trainer.erased_components()  # a collective under sharded weights: before the ranks' work differs
        with trainer.accelerator.split_between_processes(self.concept_prompts) as share, torch.enable_grad():
            rows = prompt_attack(attacked, list(share), self.config, original=trainer.original_text_encoders,
                                 concept_detector=self.concept_detector).rows if share else []
        rows = gather_object(rows)  # the list itself in a single process
        self.result = PromptAttackResult(rows=rows, config=self.config, detector=self.concept_detector is not None)
        self.results = self.result.robustness_results(self.dataset_name, split=self.split)
        self.seconds = time.perf_counter() - start
        self._last_step = trainer.state.global_step
        trainer.log({PREFIX + key: value for key, value in self.result.metrics().items()})
        return self.result

    def on_step_end(self, args, state, control, **kwargs):
        if self.every is not None and state.global_step % self.every == 0:
            self.run()

    def on_evaluate(self, args, state, control, **kwargs):
        if self.at_evaluate and self._last_step != state.global_step:
            self.run()

    def on_train_end(self, args, state, control, **kwargs):
        if self.at_train_end and self._last_step != state.global_step:
            self.run()
