"""`hf-robust eval`: attack a saved model or adapter on a behaviour set and write the report and the card.

    hf-robust eval --model_name_or_path smollm2 --attacks clean,strong,gcg-fast --max_behaviours 20
    hf-robust eval --model_name_or_path ./cat-model --behaviours my_behaviours.jsonl --output_dir ./eval
    hf-robust eval --model_name_or_path ./cat-model --accelerate_config cpu_ddp --num_processes 2

Writes into `--output_dir`: robustness.json, report.md, asr_vs_budget.png, loss_curves.png and README.md (the model's
card — its own README.md when the folder has one — with the results in `model-index`); `--push_to_hub` uploads that
card to `--hub_model_id`.
"""

import logging
import os
from dataclasses import dataclass, field

from trl import TrlParser

from .judges import REFUSAL_JUDGES, refusal_judge

logger = logging.getLogger(__name__)


@dataclass
class EvalArguments:
    model_name_or_path: str = field(
        default=None, metadata={"help": "A local folder (a full model or a PEFT adapter), a Hub id, or 'smollm2'."})
    behaviours: str = field(
        default="advbench", metadata={"help": "'advbench', a .csv/.jsonl/.json file with prompt (or goal) and target "
                                      "columns, or a Hub dataset id."})
    behaviours_split: str = field(default="test", metadata={"help": "'train', 'test' or 'all' (seeded split)."})
    seed: int = field(default=0, metadata={"help": "Seed of the behaviours' train/test split. >= 0."})
    max_behaviours: int | None = field(default=None, metadata={"help": "Attack only the first N behaviours. >= 1."})
    attacks: str = field(
        default="clean,strong",
        metadata={"help": "Comma-separated: 'clean', embedding presets ('train', 'strong'), GCG presets ('gcg', "
                  "'gcg-fast'), 'universal-<GCG preset>'."})
    embedding_success: str = field(
        default="target",
        metadata={"help": "When an embedding attack breaks a behaviour: 'target' (the greedy reply starts with the "
                  "target at some iterate) or 'target_or_judge' (that, or the refusal judge finds no refusal in the "
                  "reply under the last iterate: catches compliance in other words; for models that refuse in words).",
                  "choices": ["target", "target_or_judge"]})
    judge: str = field(
        default="refusal-substrings-gcg",
        metadata={"help": "The refusal judge of clean answers and judged replies: 'refusal-substrings-gcg' (GCG's "
                  "list, case-sensitive) or 'refusal-substrings-extended' (also \"can't help\"-style phrases in any "
                  "case, and empty replies count as refused: stricter on perturbed replies).",
                  "choices": list(REFUSAL_JUDGES)})
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens generated for the refusal judge."})
    batch_size: int = field(default=8, metadata={"help": "Behaviours per batch (clean generation, embedding attack)."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    output_dir: str = field(default="robustness-eval", metadata={"help": "Where the report and the card go."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the card (README.md) to `hub_model_id`."})
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Hub repo of the card; defaults to `model_name_or_path` when it is a Hub id."})

    def __post_init__(self):
        from ..checks import check_integer
        from .runner import check_embedding_success, parse_attacks

        if not isinstance(self.model_name_or_path, str) or not self.model_name_or_path:
            raise ValueError("`--model_name_or_path` is required: a local folder, a Hub id, or 'smollm2'.")
        if self.behaviours_split not in ("train", "test", "all"):
            raise ValueError(f"`--behaviours_split` must be 'train', 'test' or 'all', got {self.behaviours_split!r}.")
        check_integer("seed", self.seed, 0)
        if self.max_behaviours is not None:
            check_integer("max_behaviours", self.max_behaviours, 1)
        check_embedding_success(self.embedding_success, "--embedding_success")
        refusal_judge(self.judge, "--judge")
        check_integer("max_new_tokens", self.max_new_tokens, 1)
        check_integer("batch_size", self.batch_size, 1)
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"`--dtype` must be float32, bfloat16 or float16, got {self.dtype!r}.")
        parse_attacks(self.attacks)  # unknown attack names fail before anything loads
        if self.push_to_hub and not (self.hub_model_id or not os.path.isdir(self.model_name_or_path)
                                     and self.model_name_or_path != "smollm2"):
            raise ValueError("`--push_to_hub` needs `--hub_model_id` when the model is a local folder or 'smollm2'.")


def make_parser(prog=None):
    return TrlParser((EvalArguments,), prog=prog)


def load_for_evaluation(name: str, dtype: str):
    """(model, tokenizer) in eval mode: 'smollm2', a PEFT adapter folder (adapter_config.json), a model folder or a
    Hub id."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if name == "smollm2":
        from ..testing import load_smollm2

        return load_smollm2(dtype=torch_dtype)
    if os.path.isfile(os.path.join(name, "adapter_config.json")):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
        source = name if os.path.isfile(os.path.join(name, "tokenizer_config.json")) else \
            model.peft_config[model.active_adapter].base_model_name_or_path
        return model.eval(), AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
    return model.eval(), AutoTokenizer.from_pretrained(name)


def main(args: EvalArguments) -> int:
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from ..scripts import end_distributed
    from .behaviours import load_behaviours
    from .report import robustness_results, updated_card, write_report
    from .runner import evaluate_robustness

    split = None if args.behaviours_split == "all" else args.behaviours_split
    behaviours = load_behaviours(args.behaviours, split=split, seed=args.seed)
    if args.max_behaviours is not None:
        behaviours = behaviours.select(range(min(args.max_behaviours, len(behaviours))))
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator(): the launcher's CPU flag
    model, tokenizer = load_for_evaluation(args.model_name_or_path, args.dtype)
    model.to(state.device)
    outcomes = evaluate_robustness(model, tokenizer, behaviours, args.attacks, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size, embedding_success=args.embedding_success,
                                   judge=refusal_judge(args.judge))
    if state.is_main_process:
        dataset = "AdvBench" if args.behaviours == "advbench" else args.behaviours
        paths = write_report(outcomes, args.output_dir, model=args.model_name_or_path, dataset=dataset, split=split)
        own_card = os.path.join(args.model_name_or_path, "README.md")
        existing = open(own_card).read() if os.path.isfile(own_card) else None
        model_name = args.hub_model_id or args.model_name_or_path
        card = updated_card(existing, robustness_results(outcomes, dataset, split), model_name)
        card.save(os.path.join(args.output_dir, "README.md"))
        if args.push_to_hub:
            card.push_to_hub(args.hub_model_id or args.model_name_or_path)
        for name, outcome in outcomes.items():
            print(f"{name}: success rate {outcome.success_rate:.1%} on {len(outcome.rows)} behaviours "
                  f"({outcome.seconds:.0f} s)")
        print(f"report: {paths['markdown']}")
    end_distributed()
    return 0


if __name__ == "__main__":
    from hf_robust.cli import parse_script_args

    main(*parse_script_args(make_parser()))
