"""CATTrainer on a tiny Llama; reports the final parameters and the logged terms.

Usage: cat_tiny.py PER_DEVICE_BATCH_SIZE [lora]     (bf16 when launched with mixed_precision="bf16")

Runs under any engine of `run_distributed` (DDP, FSDP2, ZeRO-2/3), in fp32 or launched in bf16; the final weights
are gathered in full. Also reports the initial weights and the dtypes the Linear layers computed with in training.

Rows are attacked independently and the loss divides by counts gathered over all processes, so 2 processes × 2 rows
and 1 process × 4 rows must give the same update.
"""

import sys
import tempfile

from hf_robust.cat.cat_config import CATConfig
from hf_robust.cat.cat_trainer import CATTrainer
from hf_robust.testing import (
    finish_distributed, save_rank_result, tiny_causal_lm, trainer_report, training_arguments_for_engine,
)
from hf_robust.testing.chat_rows import adversarial_dataset, utility_dataset
from hf_robust.testing.distributed import launched_in_bf16, recorded_linear_dtypes


def main(per_device_batch_size: int, lora: bool) -> None:
    model, tokenizer = tiny_causal_lm("llama")
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    adversarial, utility = adversarial_dataset(), utility_dataset()
    with tempfile.TemporaryDirectory() as output_dir:
        args = CATConfig(
            output_dir=output_dir, **training_arguments_for_engine(), bf16=launched_in_bf16(),
            gradient_checkpointing=False,
            max_steps=2,
            per_device_train_batch_size=per_device_batch_size, optim="sgd", learning_rate=0.5, seed=0,
            report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, max_length=64,
            adversarial_fraction=0.5, mixing_stopping_strategy="all_exhausted",
            # "l2" steps: continuous in the gradient, so float noise between set-ups cannot flip a sign step.
            attack_eps=0.5, attack_steps=3, attack_step_size=0.3, attack_step_mode="relative", attack_optimizer="l2",
        )
        trainer = CATTrainer(model=model, args=args, adversarial_dataset=adversarial, utility_dataset=utility,
                             processing_class=tokenizer, peft_config=peft_config)
        with recorded_linear_dtypes() as dtypes:
            trainer.train()
        report = trainer_report(trainer)
    save_rank_result({**report, **dtypes, "initial": initial})


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:] == ["lora"])
    finish_distributed()
