"""What `hf-robust cat` and `hf-robust capo` share: the attack evaluation before and after training, and saving (or
pushing) the result with a robustness card. Loading models and data is `hf_robust.scripts`'s.

Before and after are measured with one evaluation preset (`--eval_preset`, default "strong"), never with the training
attack: a preset weaker than the training attack is refused before any work (`evaluation_preset`). A behaviour counts
as broken by target forcing, or with `--eval_embedding_success target_or_judge` also when the refusal judge passes
the greedy reply under the attack's last iterate (for models that refuse in words; see `evaluate_robustness`), by the
refusal judge `--eval_judge`.
"""

import json
import logging
import os
from dataclasses import dataclass, field

from ..evaluation.judges import REFUSAL_JUDGES, judge_summary, refusal_judge
from ..evaluation.presets import EVALUATION_PRESETS, AttackPreset, get_preset, require_at_least_as_strong
from ..evaluation.runner import EMBEDDING_SUCCESS, check_embedding_success, evaluate_robustness
from ..hub import RobustnessResult, build_robustness_card, push_robust_to_hub
from ..scripts import end_distributed, load_data
from ..sharding import has_sharded_weights, unsharded_model, whole_parameters

logger = logging.getLogger("hf_robust")


@dataclass
class EvaluationArguments:
    """The robustness measurement written into the model card."""

    eval_behaviours: str = field(
        default="toy",
        metadata={"help": "Held-out behaviours (columns `prompt`, `target`) attacked before and after training: a Hub "
                  "id, a data file, 'toy', or 'none' to skip."},
    )
    eval_behaviours_split: str = field(default="test", metadata={"help": "Split of `eval_behaviours`."})
    eval_max_behaviours: int = field(default=50, metadata={"help": "At most this many behaviours are attacked. > 0."})
    eval_preset: str = field(
        default="strong",
        metadata={"help": "Evaluation attack preset of the before and after numbers (hf_robust.evaluation.presets): "
                  "one of "
                  f"{', '.join(name for name, preset in EVALUATION_PRESETS.items() if preset.kind == 'embedding')}"
                  "; it must be at least as strong as the training attack (same eps_mode, eps and steps >=)."},
    )

    eval_embedding_success: str = field(
        default="target",
        metadata={"help": "When the attack breaks a behaviour: 'target' (some iterate forces the target) or "
                  "'target_or_judge' (also when the refusal judge passes the greedy reply under the last iterate: "
                  "a model trained away from the target's wording can comply in other words; for chat models that "
                  "refuse in words, not toy models, whose every reply passes the judge).",
                  "choices": list(EMBEDDING_SUCCESS)},
    )
    eval_judge: str = field(
        default="refusal-substrings-gcg",
        metadata={"help": "The refusal judge of `--eval_embedding_success target_or_judge`: 'refusal-substrings-gcg' "
                  "(GCG's list, case-sensitive) or 'refusal-substrings-extended' (also \"can't help\"-style phrases "
                  "in any case; empty replies count as refused).", "choices": list(REFUSAL_JUDGES)},
    )

    def __post_init__(self):
        check_embedding_success(self.eval_embedding_success, "--eval_embedding_success")
        refusal_judge(self.eval_judge, "--eval_judge")
        if not isinstance(self.eval_max_behaviours, int) or self.eval_max_behaviours <= 0:
            raise ValueError(f"`eval_max_behaviours` must be an integer > 0, got {self.eval_max_behaviours!r}.")
        try:
            get_preset(self.eval_preset, "embedding")  # the commands measure embedding-attack success
        except ValueError as error:
            raise ValueError(str(error).replace("`name`", "`--eval_preset`", 1)) from None


def evaluation_preset(evaluation: EvaluationArguments, training_args) -> AttackPreset | None:
    """The preset of the before/after numbers (None when evaluation is off); called first, before any work.

    Raises:
        ValueError: naming `--eval_preset`, when the preset is weaker than the training attack.
    """
    if evaluation.eval_behaviours == "none":
        return None
    return require_at_least_as_strong(evaluation.eval_preset, training_args.attack_config(), "--eval_preset")


def attack_success(model, tokenizer, behaviours: list[dict] | None, preset: AttackPreset | None,
                   every_process: bool = True, embedding_success: str = "target", judge=None) -> float | None:
    """Embedding-attack success rate on the behaviours with `preset` (None when evaluation is off), measured by the
    evaluation's one code path (`evaluate_robustness`, as `hf-robust eval`, with its `embedding_success` and `judge`).
    `every_process`: all processes call it and share the behaviours; False: this process alone measures (the others
    do not call it)."""
    if behaviours is None or preset is None:
        return None
    model.eval()
    outcomes = evaluate_robustness(model, tokenizer, behaviours, [preset], progress=False,
                                   split_between_processes=every_process, embedding_success=embedding_success,
                                   judge=judge)
    return outcomes[preset.name].success_rate


def evaluation_behaviours(evaluation: EvaluationArguments, training_args) -> list[dict] | None:
    """The behaviours to attack before and after training; checks the push settings first, before any training."""
    if training_args.push_to_hub:
        if not training_args.hub_model_id:
            raise ValueError("`hub_model_id` is required with `push_to_hub`.")
        if evaluation.eval_behaviours == "none":
            raise ValueError("`push_to_hub` needs `eval_behaviours`: the pushed card carries the measured robustness.")
    if evaluation.eval_behaviours == "none":
        return None
    from .toy import toy_behaviours

    data = load_data(evaluation.eval_behaviours, evaluation.eval_behaviours_split, toy_behaviours, "eval_behaviours")
    rows = [{"prompt": row["prompt"], "target": row["target"]} for row in data]
    return rows[: evaluation.eval_max_behaviours]


def finish(trainer, tokenizer, method: str, evaluation: EvaluationArguments, before: float | None,
           behaviours: list[dict] | None, push: bool, preset: AttackPreset | None) -> dict:
    """Measure after training with `preset` (as before), then save the model with its card (README.md), or push both.

    The measurements also go to `output_dir/robustness.json`: {"attack_success_before", "attack_success_after",
    "attack_preset" (the preset's name), "attack_settings" (every field of its config), "attack_success_criterion"
    (`--eval_embedding_success`), "attack_judge" (`--eval_judge`'s {"name", "version"} where the criterion reads it,
    else None)}; all None when evaluation is off.
    """
    args = trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not push:
        trainer.save_model(args.output_dir)  # on every process: sharded set-ups gather the weights collectively
    if has_sharded_weights(model):
        # Measured on the main process alone, on a plain model with the gathered weights (the other ranks go on to
        # the command's closing barrier), never one rank inside the engine's collectives.
        model = unsharded_model(trainer.accelerator, trainer.model_wrapped)
    described = preset.describe() if preset is not None else {"name": None, "settings": None}
    criterion = evaluation.eval_embedding_success if preset is not None else None
    judge = refusal_judge(evaluation.eval_judge) if criterion == "target_or_judge" else None
    judged_by = {"judge": judge_summary(judge)} if judge is not None else {}
    summary = {"attack_success_before": before, "attack_success_after": None, "attack_preset": described["name"],
               "attack_settings": described["settings"], "attack_success_criterion": criterion,
               "attack_judge": judged_by.get("judge")}
    if not trainer.accelerator.is_main_process:
        return summary
    after = attack_success(model, tokenizer, behaviours, preset, every_process=False, embedding_success=criterion,
                           judge=judge)
    summary["attack_success_after"] = after
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "robustness.json"), "w") as handle:
        json.dump(summary, handle)
    results = []
    if after is not None:
        results.append(RobustnessResult(
            attack="embedding_attack", metric="attack_success_rate", value=after,
            dataset=evaluation.eval_behaviours, split=evaluation.eval_behaviours_split,
            attack_config={**described["settings"], "success": criterion, **judged_by}, attack_preset=preset.name,
        ))
    description = (
        f"Trained with {method} by hf-robust. Embedding-attack success rate on {len(behaviours)} held-out "
        f"behaviours, both measured with the evaluation preset '{preset.name}' (its settings are in the table; "
        f"success: {criterion}{', judge ' + judge.name + ' ' + judge.version if judge is not None else ''}): "
        f"{before:.1%} before training, {after:.1%} after." if after is not None else
        f"Trained with {method} by hf-robust."
    )
    tags = [tag for tag in trainer._tag_names if tag != "trl"]
    if push:
        push_robust_to_hub(model, args.hub_model_id, results, method=method, tokenizer=tokenizer,
                           save_directory=args.output_dir, tags=tags, paper=trainer._paper, description=description,
                           private=args.hub_private_repo)
    else:
        if not results:
            return summary
        from peft import PeftModel

        card = build_robustness_card(results, method=method, model_name=os.path.basename(args.output_dir.rstrip("/")),
                                     library_name="peft" if isinstance(model, PeftModel) else "transformers",
                                     tags=tags, paper=trainer._paper, description=description)
        card.save(os.path.join(args.output_dir, "README.md"))
    logger.info("%s: attack success %s -> %s", method, before, after)
    print(f"{method}: embedding-attack success ({described['name']} preset) before {before}, after {after}; saved "
          f"to {args.output_dir}")
    return summary


def train_and_measure(method: str, evaluation: EvaluationArguments, training_args, preset: AttackPreset | None,
                      model, tokenizer, build_trainer) -> dict:
    """A command's run once its model is loaded: attack success before training (every process, the model whole),
    `build_trainer()` trained with the Trainer's own pushes off (the final push carries the card), then `finish`
    and the closing barrier. Returns `finish`'s summary."""
    behaviours = evaluation_behaviours(evaluation, training_args)
    with whole_parameters(model):  # a ZeRO-3 (zero3_init) model is loaded partitioned: measured whole, on every rank
        before = attack_success(model, tokenizer, behaviours, preset,
                                embedding_success=evaluation.eval_embedding_success,
                                judge=refusal_judge(evaluation.eval_judge))
    push, training_args.push_to_hub = training_args.push_to_hub, False
    trainer = build_trainer()
    trainer.train()
    summary = finish(trainer, tokenizer, method, evaluation, before, behaviours, push, preset)
    end_distributed()
    return summary
