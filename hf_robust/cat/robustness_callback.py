"""`RobustnessEvalCallback`: attack success rates on held-out behaviours at every evaluation of a Trainer."""

import dataclasses
import time

import torch
from transformers import TrainerCallback

from ..attacks.continuous import EmbeddingAttackConfig
from ..attacks.gcg import GCGConfig
from ..checks import checked_behaviours
from ..evaluation.judges import RefusalJudge, judge_summary
from ..evaluation.presets import AttackPreset, at_least_as_strong, resolve_attack
from ..evaluation.runner import check_embedding_success, evaluate_robustness
from ..hub import RobustnessResult
from ..sharding import has_sharded_weights, on_main_process
from .callback import EmbeddingAdversaryCallback

EMBEDDING_KEY = "robustness/embedding_attack_success_rate"
GCG_KEY = "robustness/gcg_success_rate"


class RobustnessEvalCallback(TrainerCallback):
    """Runs attacks on held-out behaviours at `on_evaluate` and logs their success rates through the trainer.

    Follows trl's `LogCompletionsCallback` / `WinRateCallback`: it takes the trainer and calls `trainer.log`, so the
    rates land in `trainer.state.log_history` and every `report_to` integration. The attacks run on the unwrapped
    model; under several processes the behaviours are split between them and the per-behaviour outcomes gathered
    (`gather_object`), so every process logs the same rates. Each process needs the whole model (single process or
    DDP, not sharded parameters). The attacks leave parameters, their `.grad` and every module's train/eval flag as
    they were.

    The embedding attack defaults to the "strong" evaluation preset (`hf_robust.evaluation.presets`). It must be at
    least as strong as the training attack (`at_least_as_strong`) of a `CATTrainer` / `CAPOTrainer` or of an
    `EmbeddingAdversaryCallback` on the trainer, checked at construction and again at `on_train_begin`, before any
    step: a rate measured with a weaker attack would measure the perturbation the model was trained on.

        trainer = SFTTrainer(model=model, args=SFTConfig(..., eval_strategy="steps", eval_steps=50), ...)
        callback = RobustnessEvalCallback(trainer, toy_behaviours("test"))
        trainer.add_callback(callback)
        trainer.train()
        push_robust_to_hub(model, repo_id, results=callback.results)

    Args:
        trainer: The `Trainer` (any subclass, e.g. trl's `SFTTrainer` or `CATTrainer`); its `processing_class` must
            be the tokenizer.
        behaviours: list of {"prompt", "target"} mappings, or a `datasets.Dataset` with those string columns.
        embedding_config: The targeted embedding attack (`embedding_attack_success_rate`): an embedding preset name
            ("strong", "train"), an `AttackPreset` or an `EmbeddingAttackConfig`; None skips it.
        gcg_config: GCG (`gcg_attack`; success = greedy decoding begins with the target): a GCG preset name ("gcg",
            "gcg-fast"), an `AttackPreset` or a `GCGConfig`; None skips it.
        max_behaviours: Attack only the first `max_behaviours` behaviours (None: all).
        dataset_name: Name of the behaviours on the model card (`RobustnessResult.dataset`).
        split: Split name recorded on the model card, or None.
        embedding_success: When the embedding attack breaks a behaviour (`evaluate_robustness`): "target" (some
            iterate forces the target) or "target_or_judge" (also when the refusal judge passes the greedy reply under
            the last iterate; for models that refuse in words).
        judge: That refusal judge: a callable (prompts, responses) -> list[bool], True = refused, e.g.
            `refusal_judge("refusal-substrings-extended")`; None: `RefusalJudge()` (GCG's list). The card names it.

    Attributes:
        embedding_config, gcg_config: The attacks' configs (None when skipped).
        embedding_preset, gcg_preset: Their preset names (None for a custom config).
        results: The latest rates as `RobustnessResult`s (empty before the first evaluation), ready for
            `push_robust_to_hub`; each carries its preset name (`attack_preset`, None for a custom config).
        seconds: Wall time of the latest run of the attacks.
    """

    def __init__(
        self,
        trainer,
        behaviours,
        embedding_config: EmbeddingAttackConfig | AttackPreset | str | None = "strong",
        gcg_config: GCGConfig | AttackPreset | str | None = None,
        max_behaviours: int | None = None,
        dataset_name: str = "held-out behaviours",
        split: str | None = "test",
        embedding_success: str = "target",
        judge=None,
    ):
        if not all(hasattr(trainer, name) for name in ("log", "accelerator", "model")):
            raise TypeError(f"`trainer` must be a transformers Trainer, got {type(trainer).__name__}.")
        if embedding_config is None and gcg_config is None:
            raise ValueError("Set `embedding_config` or `gcg_config`: the callback needs at least one attack to run.")
        # Each attack's preset name (None: custom) and a private config (the caller may change theirs).
        self.embedding_preset = self.embedding_config = self.gcg_preset = self.gcg_config = None
        if embedding_config is not None:
            self.embedding_preset, config = resolve_attack(embedding_config, "embedding", "embedding_config")
            if not config.targeted:
                raise ValueError("`embedding_config.targeted` must be True: success means the model gives the target.")
            self.embedding_config = dataclasses.replace(config)
        if gcg_config is not None:
            self.gcg_preset, config = resolve_attack(gcg_config, "gcg", "gcg_config")
            self.gcg_config = dataclasses.replace(config)
        check_embedding_success(embedding_success)
        self.embedding_success = embedding_success
        if judge is not None and not callable(judge):
            raise TypeError(f"`judge` must be None or a callable (prompts, responses) -> list[bool], got "
                            f"{type(judge).__name__}; e.g. hf_robust.evaluation.refusal_judge(name).")
        self.judge = RefusalJudge() if judge is None else judge
        if max_behaviours is not None and (
            not isinstance(max_behaviours, int) or isinstance(max_behaviours, bool) or max_behaviours < 1
        ):
            raise ValueError(f"`max_behaviours` must be None or an integer >= 1, got {max_behaviours!r}.")
        if not isinstance(dataset_name, str) or not dataset_name.strip():
            raise ValueError(f"`dataset_name` must be a non-empty string, got {dataset_name!r}.")
        if split is not None and (not isinstance(split, str) or not split.strip()):
            raise ValueError(f"`split` must be None or a non-empty string, got {split!r}.")
        rows = checked_behaviours(behaviours)  # raises naming `behaviours`
        self.trainer = trainer
        self.behaviours = [{"prompt": prompt, "target": target} for prompt, target in rows[:max_behaviours]]
        self.dataset_name = dataset_name
        self.split = split
        self.results: list[RobustnessResult] = []
        self.seconds = 0.0
        self._check_strength()

    def _check_strength(self):
        """Refuse an embedding attack weaker than the trainer's training attack (see the class docstring)."""
        if self.embedding_config is None:
            return
        training = [getattr(self.trainer, "attack", None)] + [
            callback.config for callback in getattr(getattr(self.trainer, "callback_handler", None), "callbacks", [])
            if isinstance(callback, EmbeddingAdversaryCallback)
        ]
        for config in training:
            if isinstance(config, EmbeddingAttackConfig) and not at_least_as_strong(self.embedding_config, config):
                evaluation = self.embedding_config
                raise ValueError(
                    f"`embedding_config` ({self.embedding_preset or 'custom'}: eps {evaluation.eps} "
                    f"{evaluation.eps_mode}, {evaluation.steps} steps) is weaker than the training attack (eps "
                    f"{config.eps} {config.eps_mode}, {config.steps} steps): its rates would measure the perturbation "
                    "the model is trained on. Use a preset at least as strong (same eps_mode, eps and steps >=), "
                    "e.g. the default 'strong'."
                )

    def on_train_begin(self, args, state, control, **kwargs):
        self._check_strength()  # callbacks added after this one are known now; still before any step

    def _rates(self, model, tokenizer, every_process: bool) -> dict[str, float]:
        """Success rate of each chosen attack, measured by the evaluation's one code path (`evaluate_robustness`,
        as `hf-robust eval`): every process attacks a share of the behaviours, or this process all of them."""
        attacks = [AttackPreset(key, kind, dataclasses.asdict(config), f"the callback's {kind} attack")
                   for key, kind, config in ((EMBEDDING_KEY, "embedding", self.embedding_config),
                                             (GCG_KEY, "gcg", self.gcg_config)) if config is not None]
        with torch.enable_grad():  # the attacks differentiate with respect to their perturbation
            outcomes = evaluate_robustness(model, tokenizer, self.behaviours, attacks, progress=False,
                                           split_between_processes=every_process,
                                           embedding_success=self.embedding_success, judge=self.judge)
        return {key: outcome.success_rate for key, outcome in outcomes.items()}

    def _success(self) -> dict:
        """How an embedding success was decided, for the card: the criterion, and the judge where it reads one."""
        judged = self.embedding_success == "target_or_judge"
        return {"success": self.embedding_success, **({"judge": judge_summary(self.judge)} if judged else {})}

    def on_evaluate(self, args, state, control, **kwargs):
        start = time.perf_counter()
        accelerator = self.trainer.accelerator
        model = accelerator.unwrap_model(self.trainer.model)
        tokenizer = self.trainer.processing_class
        if has_sharded_weights(model):
            # FSDP2 / ZeRO-3: every forward is a collective, so the processes cannot attack different behaviours;
            # the main process attacks them all on a plain copy with the gathered weights, the others wait.
            rates = on_main_process(accelerator, self.trainer.model_wrapped,
                                    lambda plain: self._rates(plain, tokenizer, every_process=False))
        else:
            rates = self._rates(model, tokenizer, every_process=True)
        self.seconds = time.perf_counter() - start
        attacks = {EMBEDDING_KEY: ("embedding_attack", self.embedding_preset, self.embedding_config),
                   GCG_KEY: ("gcg", self.gcg_preset, self.gcg_config)}
        self.results = [
            RobustnessResult(
                attack=attacks[key][0],
                metric="attack_success_rate",
                value=rate,
                dataset=self.dataset_name,
                split=self.split,
                attack_config={**dataclasses.asdict(attacks[key][2]), "behaviours": len(self.behaviours),
                               **(self._success() if key == EMBEDDING_KEY else {})},
                attack_preset=attacks[key][1],
            )
            for key, rate in rates.items()
        ]
        self.trainer.log(dict(rates))
