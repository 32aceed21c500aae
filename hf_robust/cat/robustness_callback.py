"""`RobustnessEvalCallback`: attack success rates on held-out behaviours at every evaluation of a Trainer."""

import dataclasses
import time

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback

from ..attacks.continuous import EmbeddingAttackConfig
from ..attacks.gcg import GCGConfig, gcg_attack
from ..hub import RobustnessResult
from ..sharding import has_sharded_weights, on_main_process
from .evaluation import _checked_behaviours, embedding_attack_success_rate

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

        trainer = SFTTrainer(model=model, args=SFTConfig(..., eval_strategy="steps", eval_steps=50), ...)
        callback = RobustnessEvalCallback(trainer, toy_behaviours("test"))
        trainer.add_callback(callback)
        trainer.train()
        push_robust_to_hub(model, repo_id, results=callback.results)

    Args:
        trainer: The `Trainer` (any subclass, e.g. trl's `SFTTrainer` or `CATTrainer`); its `processing_class` must
            be the tokenizer.
        behaviours: list of {"prompt", "target"} mappings, or a `datasets.Dataset` with those string columns.
        embedding_config: Settings of the targeted embedding attack (`embedding_attack_success_rate`); None skips it.
        gcg_config: Settings of GCG (`gcg_attack`; success = greedy decoding begins with the target); None skips it.
        max_behaviours: Attack only the first `max_behaviours` behaviours (None: all).
        dataset_name: Name of the behaviours on the model card (`RobustnessResult.dataset`).
        split: Split name recorded on the model card, or None.

    Attributes:
        results: The latest rates as `RobustnessResult`s (empty before the first evaluation), ready for
            `push_robust_to_hub`.
        seconds: Wall time of the latest run of the attacks.
    """

    def __init__(
        self,
        trainer,
        behaviours,
        embedding_config: EmbeddingAttackConfig | None = EmbeddingAttackConfig(),  # noqa: B008 (copied in __init__)
        gcg_config: GCGConfig | None = None,
        max_behaviours: int | None = None,
        dataset_name: str = "held-out behaviours",
        split: str | None = "test",
    ):
        if not all(hasattr(trainer, name) for name in ("log", "accelerator", "model")):
            raise TypeError(f"`trainer` must be a transformers Trainer, got {type(trainer).__name__}.")
        if embedding_config is None and gcg_config is None:
            raise ValueError("Set `embedding_config` or `gcg_config`: the callback needs at least one attack to run.")
        if embedding_config is not None:
            if not isinstance(embedding_config, EmbeddingAttackConfig):
                got = type(embedding_config).__name__
                raise TypeError(f"`embedding_config` must be an EmbeddingAttackConfig, got {got}.")
            if not embedding_config.targeted:
                raise ValueError("`embedding_config.targeted` must be True: success means the model gives the target.")
        if gcg_config is not None and not isinstance(gcg_config, GCGConfig):
            raise TypeError(f"`gcg_config` must be a GCGConfig, got {type(gcg_config).__name__}.")
        if max_behaviours is not None and (
            not isinstance(max_behaviours, int) or isinstance(max_behaviours, bool) or max_behaviours < 1
        ):
            raise ValueError(f"`max_behaviours` must be None or an integer >= 1, got {max_behaviours!r}.")
        if not isinstance(dataset_name, str) or not dataset_name.strip():
            raise ValueError(f"`dataset_name` must be a non-empty string, got {dataset_name!r}.")
        if split is not None and (not isinstance(split, str) or not split.strip()):
            raise ValueError(f"`split` must be None or a non-empty string, got {split!r}.")
        rows = _checked_behaviours(behaviours)  # raises naming `behaviours`
        self.trainer = trainer
        self.behaviours = [{"prompt": prompt, "target": target} for prompt, target in rows[:max_behaviours]]
        # A private copy: the default instance is shared by every callback.
        self.embedding_config = None if embedding_config is None else dataclasses.replace(embedding_config)
        self.gcg_config = gcg_config
        self.dataset_name = dataset_name
        self.split = split
        self.results: list[RobustnessResult] = []
        self.seconds = 0.0

    def _outcomes(self, model, tokenizer, behaviours) -> dict[str, list[float]]:
        """Per-behaviour success (0.0 or 1.0) of each chosen attack, for this process's share of the behaviours."""
        outcomes = {}
        with torch.enable_grad():  # the attacks differentiate with respect to their perturbation
            if self.embedding_config is not None:
                outcomes[EMBEDDING_KEY] = [
                    embedding_attack_success_rate(model, tokenizer, [row], self.embedding_config) for row in behaviours
                ]
            if self.gcg_config is not None:
                outcomes[GCG_KEY] = [
                    float(gcg_attack(model, tokenizer, row["prompt"], row["target"], self.gcg_config).success)
                    for row in behaviours
                ]
        return outcomes

    def on_evaluate(self, args, state, control, **kwargs):
        start = time.perf_counter()
        accelerator = self.trainer.accelerator
        model = accelerator.unwrap_model(self.trainer.model)
        tokenizer = self.trainer.processing_class
        if has_sharded_weights(model):
            # FSDP2 / ZeRO-3: every forward is a collective, so the processes cannot attack different behaviours;
            # the main process attacks them all on a plain copy with the gathered weights, the others wait.
            outcomes = on_main_process(accelerator, self.trainer.model_wrapped,
                                       lambda plain: self._outcomes(plain, tokenizer, self.behaviours))
        else:
            with accelerator.split_between_processes(self.behaviours) as share:
                outcomes = self._outcomes(model, tokenizer, share)
            outcomes = {key: gather_object(values) for key, values in outcomes.items()}  # as is in one process
        rates = {key: sum(values) / len(values) for key, values in outcomes.items()}
        self.seconds = time.perf_counter() - start
        configs = {EMBEDDING_KEY: ("embedding_attack", self.embedding_config), GCG_KEY: ("gcg", self.gcg_config)}
        self.results = [
            RobustnessResult(
                attack=configs[key][0],
                metric="attack_success_rate",
                value=rate,
                dataset=self.dataset_name,
                split=self.split,
                attack_config={**dataclasses.asdict(configs[key][1]), "behaviours": len(self.behaviours)},
            )
            for key, rate in rates.items()
        ]
        self.trainer.log(dict(rates))
