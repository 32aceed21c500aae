"""`hf-robust unlearn`: unlearning from a recipe, then a relearning attack, saved (or pushed) with a robustness card.

    hf-robust unlearn --config recipes/unlearn_npo_sam.yaml
    hf-robust unlearn --config recipes/unlearn_npo_sam.yaml --accelerate_config multi_gpu --num_processes 4
    accelerate launch recipes/unlearn.py --config recipes/unlearn_npo_sam.yaml

After unlearning, the main process runs `relearning_attack` on a copy of the model (under FSDP2 / ZeRO-3, a plain
model loaded with the gathered weights, while the other ranks wait): it fine-tunes on
`relearn_samples` rows of the attacker's part of the forget set and measures forget/retain metrics before and after
on the held-out part. Those numbers go into the card (`robustness.json` too).
"""

import dataclasses
import json
import os
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from ..hub import build_robustness_card, push_robust_to_hub
from ..scripts import end_distributed, load_data, load_model
from ..sharding import has_sharded_weights, is_partitioned, unsharded_model
from .config import UnlearnConfig


@dataclass
class UnlearnDataArguments:
    forget_dataset: str = field(
        default="toy", metadata={"help": "Rows to forget (`text` or `input_ids`): a Hub id, a data file or 'toy' "
                                 "(random token strings, see hf_robust.unlearning.toy)."})
    forget_split: str = field(default="train", metadata={"help": "Split of `forget_dataset`."})
    retain_dataset: str | None = field(
        default="toy", metadata={"help": "Rows to keep: a Hub id, a data file, 'toy', or 'none' (no retain term)."})
    retain_split: str = field(default="train", metadata={"help": "Split of `retain_dataset`."})


@dataclass
class RelearnArguments:
    relearn_samples: int = field(default=20, metadata={"help": "Forget rows the attacker fine-tunes on. > 0; 0 skips "
                                                       "the attack."})
    relearn_steps: int | None = field(
        default=None, metadata={"help": "Attack steps; None: one pass over the samples."})
    relearn_learning_rate: float = field(default=1e-5, metadata={"help": "Attack learning rate (AdamW)."})
    relearn_batch_size: int = field(default=4, metadata={"help": "Attack batch size."})
    relearn_holdout_fraction: float = field(
        default=0.5, metadata={"help": "Fraction of the forget rows held out from the attacker and measured. "
                               "In (0, 1)."})
    relearn_parameters: str = field(
        default="all", metadata={"help": "What the attacker fine-tunes: 'all' weights (the paper's attacker; a LoRA "
                                 "model merged first) or only the 'trainable' ones (a weaker threat model)."})
    relearn_curve: list[int] | None = field(
        default=None, metadata={"help": "Step counts to measure after, e.g. 0 25 50 100 150: a relearning curve in "
                                "robustness.json and the card (replaces `relearn_steps`)."})

    def __post_init__(self):
        if not isinstance(self.relearn_samples, int) or self.relearn_samples < 0:
            raise ValueError(f"`relearn_samples` must be an integer >= 0, got {self.relearn_samples!r}.")
        if not 0 < self.relearn_holdout_fraction < 1:
            raise ValueError(f"`relearn_holdout_fraction` must be in (0, 1), got {self.relearn_holdout_fraction!r}.")
        from .relearn import PARAMETER_CHOICES, RelearnConfig

        if self.relearn_parameters not in PARAMETER_CHOICES:
            raise ValueError(
                f"`relearn_parameters` must be one of {PARAMETER_CHOICES}, got {self.relearn_parameters!r}."
            )
        if self.relearn_curve is not None:
            try:
                RelearnConfig(steps=list(self.relearn_curve))
            except ValueError as error:
                raise ValueError(str(error).replace("`steps`", "`relearn_curve`", 1)) from None


def make_parser(prog=None):
    return TrlParser((UnlearnDataArguments, RelearnArguments, UnlearnConfig, ModelConfig), prog=prog)


def _datasets(data_args: UnlearnDataArguments, seed: int):
    toy = {}
    if "toy" in (data_args.forget_dataset, data_args.retain_dataset):
        from .toy import toy_memorisation_data

        toy["forget"], toy["retain"] = toy_memorisation_data(seed=seed)
    forget = load_data(data_args.forget_dataset, data_args.forget_split, lambda split: toy["forget"], "forget_dataset")
    retain = None
    if data_args.retain_dataset not in (None, "none"):
        retain = load_data(data_args.retain_dataset, data_args.retain_split, lambda split: toy["retain"],
                           "retain_dataset")
    return forget, retain


def relearn(trainer, model, tokenizer, forget, retain, relearn_args: RelearnArguments):
    """The relearning attack on the unlearned model: fine-tune on the attacker's rows, measure the held-out rows."""
    from .relearn import RelearnConfig, relearning_attack

    held_out = max(1, int(len(forget) * relearn_args.relearn_holdout_fraction))
    if len(forget) - held_out < relearn_args.relearn_samples:
        raise ValueError(
            f"`relearn_samples`={relearn_args.relearn_samples} exceeds the {len(forget) - held_out} forget rows left "
            f"to the attacker after holding out {held_out} "
            f"(relearn_holdout_fraction={relearn_args.relearn_holdout_fraction})."
        )
    attacker, measured = forget.select(range(len(forget) - held_out)), forget.select(range(len(forget) - held_out,
                                                                                           len(forget)))
    config = RelearnConfig(
        n_samples=relearn_args.relearn_samples, steps=relearn_args.relearn_curve or relearn_args.relearn_steps,
        learning_rate=relearn_args.relearn_learning_rate, batch_size=relearn_args.relearn_batch_size,
        seed=trainer.args.seed, max_length=trainer.args.max_length or 512, parameters=relearn_args.relearn_parameters,
    )
    rouge_tokens = "model" if "input_ids" in forget.column_names else "words"
    return relearning_attack(model, tokenizer, attacker, config, retain_dataset=retain, eval_forget=measured,
                             rouge_tokens=rouge_tokens)


def main(data_args: UnlearnDataArguments, relearn_args: RelearnArguments, training_args: UnlearnConfig,
         model_args: ModelConfig) -> int:
    from .trainer import UnlearnTrainer

    forget, retain = _datasets(data_args, training_args.seed)
    if training_args.push_to_hub and (not training_args.hub_model_id or relearn_args.relearn_samples == 0):
        raise ValueError("`push_to_hub` needs `hub_model_id` and `relearn_samples` > 0 (the card carries the "
                         "relearning measurements).")
    model, tokenizer = load_model(model_args)
    # The Trainer must not push checkpoints itself: the final push carries the robustness card.
    push, training_args.push_to_hub = training_args.push_to_hub, False
    peft_config = get_peft_config(model_args)
    reference = None
    if is_partitioned(model) and peft_config is None:
        # Loaded partitioned (ZeRO-3 zero3_init): a deep copy would hold this rank's shards only, so the reference is
        # loaded the same way as the policy, as trl loads DPO's reference.
        reference, _ = load_model(model_args)
    trainer = UnlearnTrainer(model=model, args=training_args, forget_dataset=forget, retain_dataset=retain,
                             processing_class=tokenizer, peft_config=peft_config, ref_model=reference)
    trainer.train()
    if not push:
        trainer.save_model(training_args.output_dir)  # on every process: sharded set-ups gather collectively
    model = trainer.accelerator.unwrap_model(trainer.model)
    if has_sharded_weights(model):
        # The relearning attack fine-tunes a copy on the main process alone: a plain model with the gathered weights
        # (the other ranks wait at the barrier of end_distributed), never one rank inside the engine's collectives.
        model = unsharded_model(trainer.accelerator, trainer.model_wrapped)
    if trainer.accelerator.is_main_process:
        _finish(trainer, model, tokenizer, forget, retain, relearn_args, push)
    end_distributed()
    return 0


def _finish(trainer, model, tokenizer, forget, retain, relearn_args: RelearnArguments, push: bool) -> None:
    args = trainer.args
    method = f"{args.method.upper()}{'' if args.smoothing == 'none' else '+' + args.smoothing.upper()}"
    os.makedirs(args.output_dir, exist_ok=True)
    if relearn_args.relearn_samples == 0:
        return
    result = relearn(trainer, model, tokenizer, forget, retain, relearn_args)
    with open(os.path.join(args.output_dir, "robustness.json"), "w") as handle:
        json.dump({"before_relearning": result.before.as_dict(), "after_relearning": result.after.as_dict(),
                   "recovery": result.recovery, "samples": len(result.samples), "steps": result.steps,
                   "attacker": dataclasses.asdict(result.config),
                   "curve": [{"steps": step, **metrics.as_dict()} for step, metrics in result.curve]}, handle)
    results = result.robustness_results(dataset="forget set (held out from the attacker)")
    description = (
        f"Unlearned with {method} by hf-robust. A relearning attack ({len(result.samples)} forget samples, "
        f"{result.steps} steps) moved the held-out forget NLL from {result.before.forget_nll:.3f} to "
        f"{result.after.forget_nll:.3f}."
    )
    tags = ["unlearning", args.method] + ([] if args.smoothing == "none" else [args.smoothing])
    if push:
        push_robust_to_hub(model, args.hub_model_id, results, method=method, tokenizer=tokenizer,
                           save_directory=args.output_dir, tags=tags, paper=trainer._paper, description=description,
                           private=args.hub_private_repo)
        return
    from peft import PeftModel

    card = build_robustness_card(results, method=method, model_name=os.path.basename(args.output_dir.rstrip("/")),
                                 library_name="peft" if isinstance(model, PeftModel) else "transformers",
                                 tags=tags, paper=trainer._paper, description=description)
    card.save(os.path.join(args.output_dir, "README.md"))
    print(f"{method}: held-out forget NLL {result.before.forget_nll:.3f} -> {result.after.forget_nll:.3f} under "
          f"relearning; saved to {args.output_dir}")


if __name__ == "__main__":
    from hf_robust.cli import parse_script_args

    main(*parse_script_args(make_parser()))
