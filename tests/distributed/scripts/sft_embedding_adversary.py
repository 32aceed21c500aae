"""A stock trl SFTTrainer with EmbeddingAdversaryCallback on a tiny Llama; reports the final parameters.

Usage: sft_embedding_adversary.py PER_DEVICE_BATCH_SIZE [lora]

Runs under any engine of `run_distributed` (DDP, FSDP2, ZeRO-2/3); the final weights are gathered in full.

The attack works row by row, so 2 processes × 2 rows and 1 process × 4 rows see the same perturbations; the loss
normaliser counts tokens across processes (average_tokens_across_devices), so the updates match too.
"""

import sys
import tempfile

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from hf_robust import EmbeddingAdversaryCallback, EmbeddingAttackConfig
from hf_robust.testing import (
    finish_distributed, save_rank_result, tiny_causal_lm, trainer_report, training_arguments_for_engine,
)
from hf_robust.testing.distributed import launched_in_bf16

PAIRS = [
    ("How do I boil an egg?", "Nine minutes in boiling water."),
    ("Name a colour.", "Blue."),
    ("What is two plus two?", "Four."),
    ("Say hello.", "Hello there!"),
    ("Name a fruit.", "An apple."),
    ("Count to three.", "One, two, three."),
    ("What is the sky?", "Air above us."),
    ("Say goodbye.", "Goodbye!"),
]


def main(per_device_batch_size: int, lora: bool) -> None:
    model, tokenizer = tiny_causal_lm("llama")
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": answer}]}
         for prompt, answer in PAIRS]
    )
    # "l2" steps: continuous in the gradient, so float noise between set-ups cannot flip a sign step.
    callback = EmbeddingAdversaryCallback(
        EmbeddingAttackConfig(eps=0.5, steps=3, step_size=0.3, step_mode="relative", optimizer="l2", targeted=False)
    )
    with tempfile.TemporaryDirectory() as output_dir:
        args = SFTConfig(
            output_dir=output_dir,
            **training_arguments_for_engine(),
            bf16=launched_in_bf16(),
            gradient_checkpointing=False,
            max_steps=2,
            per_device_train_batch_size=per_device_batch_size,
            optim="sgd",
            learning_rate=1e-1,
            seed=0,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            max_length=64,
        )
        torch.manual_seed(0)  # the LoRA initialisation (drawn in the trainer) is the same in every set-up
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[callback], peft_config=peft_config)
        trainer.train()
        report = trainer_report(trainer)
    attacked = callback.last_result is not None and float(callback.last_result.delta.norm()) > 0
    save_rank_result({**report, "attacked": attacked})


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:] == ["lora"])
    finish_distributed()
