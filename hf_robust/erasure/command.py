"""`hf-robust advunlearn`: AdvUnlearn concept erasure from a recipe, then prompt attacks, saved or pushed with a card.

    hf-robust advunlearn --config recipes/advunlearn_sd15.yaml
    hf-robust advunlearn --config recipes/advunlearn_sd15.yaml --accelerate_config multi_gpu --num_processes 4
    accelerate launch recipes/advunlearn.py --config recipes/advunlearn_sd15.yaml
    hf-robust advunlearn --model_name_or_path toy --max_steps 20 --learning_rate 1e-3 --use_cpu true  # toy, CPU

The erased text encoder(s) are saved in diffusers layout (`text_encoder/`, `text_encoder_2/` for SDXL) under
`output_dir`. Then the main process attacks the erased model (under FSDP2 / DeepSpeed ZeRO-3 a copy with the gathered
weights, while the other processes wait at the closing barrier) with `prompt_attack` (a discrete UnlearnDiffAtk-style
prefix and a soft-token attack) on held-out concept prompts; the per-prompt leakage before and after each attack goes
to `robustness.json`, and the rates and mean leakage into the model card (README.md) or, with `--push_to_hub true
--hub_model_id ...`, to the Hub through `push_robust_to_hub`.
"""

import json
import os
from dataclasses import dataclass, field

from trl import TrlParser

from ..hub import build_robustness_card, diffusers_usage, push_robust_to_hub
from ..scripts import end_distributed
from .config import AdvUnlearnConfig
from .evaluation import prompt_attack
from .prompt_attack_config import ATTACKS, PromptAttackConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class AdvUnlearnScriptArguments:
    model_name_or_path: str = field(
        default="toy", metadata={"help": "A diffusers SD 1.x-type or SDXL pipeline (Hub id or local folder), or "
                                 "'toy' (tiny components taught the concept 'church', see hf_robust.erasure.toy)."})
    model_revision: str | None = field(default=None, metadata={"help": "Revision of `model_name_or_path`."})
    dtype: str = field(
        default="float32", metadata={"help": "dtype the pipeline is loaded in ('auto' keeps the stored one); bf16 "
                                     "autocast is `--bf16 true`.", "choices": list(DTYPES)})
    concepts: list[str] | None = field(
        default=None, metadata={"help": "Concept prompts to erase (several: multi-concept erasure in one run); None: "
                                "'church' for the toy model, required otherwise."})
    retain_prompts: str | None = field(
        default=None, metadata={"help": "Retain prompts: a text file (one prompt a line), 'default' (76 'a photo of "
                                "a <COCO object>' prompts) or None (the toy's retain prompts for the toy model, else "
                                "'default')."})
    eval_prompts: list[str] | None = field(
        default=None, metadata={"help": "Held-out concept prompts the prompt attacks run on; None: the toy's for the "
                                "toy model, else `concepts`."})
    eval_prompts_file: str | None = field(
        default=None, metadata={"help": "A text file of evaluation prompts (one a line), instead of `eval_prompts`."})
    eval_attacks: list[str] = field(
        default_factory=lambda: list(ATTACKS),
        metadata={"help": "Prompt attacks of the evaluation: 'discrete' and/or 'soft'; 'none' (or an empty list): no "
                  "evaluation, no card."})
    eval_num_adv_tokens: int = field(default=5, metadata={"help": "Discrete attack: prefix tokens. >= 1."})
    eval_discrete_iters: int = field(default=40, metadata={"help": "Discrete attack: token-search iterations."})
    eval_soft_steps: int = field(default=30, metadata={"help": "Soft attack: steps (1 soft token, Adam)."})
    eval_soft_lr: float = field(default=1e-3, metadata={"help": "Soft attack: Adam learning rate."})
    eval_n_timesteps: int = field(default=5, metadata={"help": "Evaluation points (z_t, t) per prompt."})
    eval_leakage_threshold: float = field(
        default=0.5, metadata={"help": "A prompt leaks when its leakage distance is below this (see "
                               "hf_robust.erasure.leakage)."})

    def __post_init__(self):
        if self.concepts is not None and (not self.concepts or not all(
                isinstance(concept, str) and concept.strip() for concept in self.concepts)):
            raise ValueError(f"`concepts` must be a non-empty list of non-empty strings, got {self.concepts!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {list(DTYPES)}, got {self.dtype!r}.")
        for name in ("retain_prompts", "eval_prompts_file"):
            value = getattr(self, name)
            if value not in (None, "default") and not os.path.isfile(value):
                allowed = "a text file" + (" or 'default'" if name == "retain_prompts" else "")
                raise ValueError(f"`{name}` must be {allowed}, got {value!r} (no such file).")
        if self.eval_prompts_file == "default":
            raise ValueError("`eval_prompts_file` must be a text file, got 'default'.")
        if self.eval_prompts is not None and self.eval_prompts_file is not None:
            raise ValueError("Give `eval_prompts` or `eval_prompts_file`, not both.")
        if isinstance(self.eval_attacks, str):
            self.eval_attacks = [self.eval_attacks]
        self.eval_attacks = [attack for attack in self.eval_attacks if attack != "none"]
        unknown = [attack for attack in self.eval_attacks if attack not in ATTACKS]
        if unknown:
            raise ValueError(f"`eval_attacks` must hold items of {list(ATTACKS)}, got {unknown}.")
        if self.eval_attacks:
            self.prompt_attack_config(seed=0)  # validates the eval_* fields

    def prompt_attack_config(self, seed: int, ddim_steps: int = 50, guidance_scale: float = 3.0) -> PromptAttackConfig:
        """The eval_* fields as a `PromptAttackConfig` (points sampled like the training's z_t)."""
        try:
            return PromptAttackConfig(
                attacks=list(self.eval_attacks), num_adv_tokens=self.eval_num_adv_tokens,
                discrete_iters=self.eval_discrete_iters, soft_steps=self.eval_soft_steps, soft_lr=self.eval_soft_lr,
                n_timesteps=self.eval_n_timesteps, leakage_threshold=self.eval_leakage_threshold,
                ddim_steps=ddim_steps, guidance_scale=guidance_scale, seed=seed)
        except ValueError as error:  # name this command's flags
            message = str(error)
            for name in ("num_adv_tokens", "discrete_iters", "soft_steps", "soft_lr", "n_timesteps",
                         "leakage_threshold"):
                message = message.replace(f"`{name}`", f"`eval_{name}`")
            raise ValueError(message) from None


def make_parser(prog=None):
    return TrlParser((AdvUnlearnScriptArguments, AdvUnlearnConfig), prog=prog)


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{path!r} holds no prompt (one prompt a line).")
    return lines


def load_components(script_args: AdvUnlearnScriptArguments) -> dict:
    """The pipeline's components: the toy ones, or `DiffusionPipeline.from_pretrained(model_name_or_path)`'s."""
    if script_args.model_name_or_path == "toy":
        from .toy import toy_erasure_components

        return toy_erasure_components()
    if not script_args.model_name_or_path:
        raise ValueError("`model_name_or_path` is required: a diffusers pipeline (Hub id or folder), or 'toy'.")
    import torch
    from diffusers import DiffusionPipeline

    dtype = script_args.dtype if script_args.dtype == "auto" else getattr(torch, script_args.dtype)
    pipeline = DiffusionPipeline.from_pretrained(script_args.model_name_or_path, revision=script_args.model_revision,
                                                 dtype=dtype)
    return dict(pipeline.components)


def prompts_of(script_args: AdvUnlearnScriptArguments) -> tuple[list[str], list[str] | None, list[str]]:
    """(concepts, retain prompts (None: the trainer's default list), evaluation prompts)."""
    toy = script_args.model_name_or_path == "toy"
    from . import toy as toy_task

    concepts = script_args.concepts or ([toy_task.TOY_CONCEPT] if toy else None)
    if concepts is None:
        raise ValueError("`concepts` is required (the concept prompts to erase) unless `model_name_or_path` is 'toy'.")
    if script_args.retain_prompts is None:
        retain = list(toy_task.TOY_RETAIN_PROMPTS) if toy else None
    else:
        retain = None if script_args.retain_prompts == "default" else _read_lines(script_args.retain_prompts)
    if script_args.eval_prompts_file is not None:
        evaluation = _read_lines(script_args.eval_prompts_file)
    else:
        evaluation = script_args.eval_prompts or (list(toy_task.TOY_CONCEPT_PROMPTS) if toy else list(concepts))
    return list(concepts), retain, evaluation


def main(script_args: AdvUnlearnScriptArguments, training_args: AdvUnlearnConfig) -> int:
    from .trainer import AdvUnlearnTrainer

    if training_args.push_to_hub and (not training_args.hub_model_id or not script_args.eval_attacks):
        raise ValueError("`push_to_hub` needs `hub_model_id` and at least one of `eval_attacks` (the card carries the "
                         "prompt-attack measurements).")
    if script_args.eval_attacks:  # fail before training, not after it
        script_args.prompt_attack_config(training_args.seed, training_args.ddim_steps, training_args.guidance_scale)
    concepts, retain, evaluation = prompts_of(script_args)
    components = load_components(script_args)
    # The Trainer must not push checkpoints itself: the final push carries the robustness card.
    push, training_args.push_to_hub = training_args.push_to_hub, False
    trainer = AdvUnlearnTrainer(components, training_args, concepts=concepts, retain_prompts=retain)
    trainer.train()
    if not push:
        trainer.save_model(training_args.output_dir)  # on every process: sharded set-ups gather collectively
    # On every process too (it gathers sharded weights); then the main process alone attacks its whole copy.
    erased = trainer.erased_components() if script_args.eval_attacks else None
    if trainer.accelerator.is_main_process:
        _finish(trainer, erased, script_args, concepts, evaluation, push)
    end_distributed()
    return 0


def _finish(trainer, erased, script_args: AdvUnlearnScriptArguments, concepts: list[str], evaluation: list[str],
            push: bool) -> None:
    args = trainer.args
    os.makedirs(args.output_dir, exist_ok=True)
    if not script_args.eval_attacks:
        return
    config = script_args.prompt_attack_config(args.seed, args.ddim_steps, args.guidance_scale)
    result = prompt_attack(erased, evaluation, config, original=trainer.original_text_encoders)
    with open(os.path.join(args.output_dir, "robustness.json"), "w") as handle:
        json.dump({"concepts": concepts, **result.to_dict()}, handle, indent=1)
    results = result.robustness_results(dataset="held-out concept prompts")
    names = " + ".join(repr(concept) for concept in concepts)
    description = (
        f"Text encoder(s) of a diffusion pipeline with the concept {names} erased by AdvUnlearn ({args.max_steps} "
        f"iterations, {args.attack_steps}-step soft-prompt attack after {args.attack_warmup}) with hf-robust. Prompt "
        f"attacks on {len(evaluation)} held-out concept prompts: mean leakage distance "
        f"{result.mean_leakage():.3f} without attack"
        + "".join(f", {result.mean_leakage(attack):.3f} under the {attack} attack" for attack in config.attacks)
        + f" (0 = the original concept prediction); attack success rate {result.attack_success_rate:.0%}."
    )
    encoders = erased.text_encoders
    folders = ["text_encoder", "text_encoder_2"][:len(encoders)]
    base_model = None if script_args.model_name_or_path == "toy" or os.path.isdir(
        script_args.model_name_or_path) else script_args.model_name_or_path
    tags = ["concept-erasure", "diffusers"]
    if push:
        push_robust_to_hub(dict(zip(folders, encoders)), args.hub_model_id, results, method="advunlearn",
                           base_model=base_model, save_directory=args.output_dir, tags=tags, paper=trainer._paper,
                           description=description, private=args.hub_private_repo)
        return
    model_name = os.path.basename(args.output_dir.rstrip("/"))
    usage = diffusers_usage({folder: type(encoder).__name__ for folder, encoder in zip(folders, encoders)},
                             model_name, base_model)
    card = build_robustness_card(results, method="advunlearn", model_name=model_name, base_model=base_model,
                                 library_name="diffusers", tags=tags, paper=trainer._paper, description=description,
                                 usage=usage)
    card.save(os.path.join(args.output_dir, "README.md"))
    print(f"AdvUnlearn: leakage {result.mean_leakage():.3f} without attack, "
          + ", ".join(f"{result.mean_leakage(attack):.3f} under {attack}" for attack in config.attacks)
          + f"; saved to {args.output_dir}")


if __name__ == "__main__":
    from hf_robust.cli import parse_script_args

    main(*parse_script_args(make_parser()))
