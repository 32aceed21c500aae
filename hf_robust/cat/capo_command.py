"""`hf-robust capo`: CAPO training from a recipe, measured and saved (or pushed) with a robustness card.

    hf-robust capo --config recipes/capo.yaml
    hf-robust capo --config recipes/capo.yaml --accelerate_config multi_gpu --num_processes 4
    accelerate launch recipes/train_capo.py --config recipes/capo.yaml
"""

from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from ..scripts import load_data, load_model
from .capo_config import CAPOConfig
from .script import EvaluationArguments, evaluation_preset, train_and_measure


@dataclass
class CAPODataArguments:
    dataset_name: str = field(
        default="toy", metadata={"help": "Preference rows: `prompt`, `chosen` (refusal), `rejected` (harmful target); "
                                 "a Hub id, a data file or 'toy'."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of `dataset_name`."})


def make_parser(prog=None):
    return TrlParser((CAPODataArguments, EvaluationArguments, CAPOConfig, ModelConfig), prog=prog)


def main(data_args: CAPODataArguments, evaluation: EvaluationArguments, training_args: CAPOConfig,
         model_args: ModelConfig) -> int:
    # Before any work: a preset weaker than the training attack would measure the trained-on perturbation.
    preset = evaluation_preset(evaluation, training_args)
    from .capo_trainer import CAPOTrainer
    from .toy import toy_preference_dataset

    dataset = load_data(data_args.dataset_name, data_args.dataset_train_split, toy_preference_dataset, "dataset_name")
    model, tokenizer = load_model(model_args, training_args.trust_remote_code)
    peft_config = get_peft_config(model_args)
    # Full fine-tuning scores the reference with a frozen copy; LoRA disables the adapter instead.
    ref_model = None if peft_config is not None else load_model(model_args, training_args.trust_remote_code)[0]
    train_and_measure("CAPO", evaluation, training_args, preset, model, tokenizer, lambda: CAPOTrainer(
        model=model, ref_model=ref_model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=peft_config))
    return 0


if __name__ == "__main__":
    from hf_robust.cli import parse_script_args

    main(*parse_script_args(make_parser()))
