"""`hf-robust cat`: CAT training from a recipe, measured and saved (or pushed) with a robustness card.

    hf-robust cat --config recipes/cat.yaml
    hf-robust cat --config recipes/cat.yaml --accelerate_config multi_gpu --num_processes 4
    accelerate launch recipes/train_cat.py --config recipes/cat.yaml
"""

from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from ..scripts import load_data, load_model
from .cat_config import CATConfig
from .script import EvaluationArguments, evaluation_preset, train_and_measure


@dataclass
class CATDataArguments:
    adversarial_dataset: str = field(
        default="toy", metadata={"help": "Rows with `prompt`, `target` (harmful response), `refusal`: a Hub id, a "
                                 "data file or 'toy'."})
    adversarial_split: str = field(default="train", metadata={"help": "Split of `adversarial_dataset`."})
    utility_dataset: str = field(
        default="toy", metadata={"help": "trl conversational (`messages`) or prompt/completion rows: a Hub id, a data "
                                 "file or 'toy'."})
    utility_split: str = field(default="train", metadata={"help": "Split of `utility_dataset`."})


def make_parser(prog=None):
    return TrlParser((CATDataArguments, EvaluationArguments, CATConfig, ModelConfig), prog=prog)


def main(data_args: CATDataArguments, evaluation: EvaluationArguments, training_args: CATConfig,
         model_args: ModelConfig) -> int:
    # Before any work: a preset weaker than the training attack would measure the trained-on perturbation.
    preset = evaluation_preset(evaluation, training_args)
    from .cat_trainer import CATTrainer
    from .toy import toy_adversarial_dataset, toy_utility_dataset

    adversarial = load_data(data_args.adversarial_dataset, data_args.adversarial_split, toy_adversarial_dataset,
                            "adversarial_dataset")
    utility = load_data(data_args.utility_dataset, data_args.utility_split, toy_utility_dataset, "utility_dataset")
    model, tokenizer = load_model(model_args, training_args.trust_remote_code)
    train_and_measure("CAT", evaluation, training_args, preset, model, tokenizer, lambda: CATTrainer(
        model=model, args=training_args, adversarial_dataset=adversarial, utility_dataset=utility,
        processing_class=tokenizer, peft_config=get_peft_config(model_args)))
    return 0


if __name__ == "__main__":
    from hf_robust.cli import parse_script_args

    main(*parse_script_args(make_parser()))
