"""CAPOTrainer with a LoRA adapter on a tiny Llama; reports the final parameters and the logged attack metrics.

Usage: capo_tiny.py PER_DEVICE_BATCH_SIZE [full]

With `full`, the whole model is trained against a frozen copy as trl's `ref_model` (trl prepares it for the engine).

Runs under any engine of `run_distributed` (DDP, FSDP2, ZeRO-2/3); the final weights are gathered in full.

The attack works row by row and the IPO loss is a mean over rows, so 2 processes × 2 rows (DDP averages the two
gradients) and 1 process × 4 rows see the same perturbations and take the same optimizer steps.
"""

import copy
import sys
import tempfile

from peft import LoraConfig

from hf_robust.cat.capo_config import CAPOConfig
from hf_robust.cat.capo_trainer import CAPOTrainer
from hf_robust.testing import (
    finish_distributed, save_rank_result, tiny_causal_lm, trainer_report, training_arguments_for_engine,
)
from hf_robust.testing.chat_rows import preference_dataset
from hf_robust.testing.distributed import launched_in_bf16


def main(per_device_batch_size: int, full: bool) -> None:
    model, tokenizer = tiny_causal_lm("llama")
    dataset = preference_dataset()
    with tempfile.TemporaryDirectory() as output_dir:
        args = CAPOConfig(
            output_dir=output_dir,
            **training_arguments_for_engine(),
            bf16=launched_in_bf16(),
            gradient_checkpointing=False,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            max_steps=2,
            per_device_train_batch_size=per_device_batch_size,
            optim="sgd",
            learning_rate=0.1,
            seed=0,
            logging_steps=1,
            max_length=64,
            # "l2" steps: continuous in the gradient, so float noise between set-ups cannot flip a sign step.
            attack_eps=0.5,
            attack_steps=2,
            attack_step_size=0.3,
            attack_step_mode="relative",
            attack_optimizer="l2",
        )
        adapter = None if full else LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        trainer = CAPOTrainer(
            model=model, ref_model=copy.deepcopy(model).eval() if full else None, args=args, train_dataset=dataset,
            processing_class=tokenizer, peft_config=adapter,
        )
        initial = {name: tensor.detach().clone() for name, tensor in trainer.model.named_parameters()
                   if full or "lora_" in name}
        trainer.train()
        report = trainer_report(trainer)
    report["initial"] = initial
    report["final"] = {name: tensor for name, tensor in report["final"].items() if full or "lora_" in name}
    report["logs"] = [entry for entry in report["logs"] if "attack_loss" in entry]
    save_rank_result({**report, "world_size": trainer.accelerator.num_processes})


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:] == ["full"])
    finish_distributed()
