"""Train a tiny Llama for a few steps with `transformers.Trainer` and report its initial and final parameters.

Usage: train_tiny_llama.py PER_DEVICE_BATCH_SIZE [GRADIENT_ACCUMULATION_STEPS]

Everything that could make 1 process differ from N processes on the same global batch is pinned: model and data
come from fixed seeds, dropout is 0, and every sequence has the same length with labels == input_ids, so every
process holds the same number of loss tokens. (With unequal counts, the loss normaliser would matter: the Trainer
divides by the token count gathered across processes — `average_tokens_across_devices=True`, the default — and
multiplies by the world size to undo DDP's gradient averaging.)
"""

import sys
import tempfile

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hf_robust.testing import finish_distributed, save_rank_result, trainer_report, training_arguments_for_engine

VOCAB_SIZE = 64
NUM_SEQUENCES = 16
SEQUENCE_LENGTH = 8
SEED = 0


def main(per_device_batch_size: int, gradient_accumulation_steps: int) -> None:
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQUENCE_LENGTH,
        attention_dropout=0.0,
    )
    model = LlamaForCausalLM(config)
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    generator = torch.Generator().manual_seed(SEED)
    token_ids = torch.randint(VOCAB_SIZE, (NUM_SEQUENCES, SEQUENCE_LENGTH), generator=generator)
    dataset = Dataset.from_dict({"input_ids": token_ids.tolist(), "labels": token_ids.tolist()})

    with tempfile.TemporaryDirectory() as output_dir:
        arguments = TrainingArguments(
            output_dir=output_dir,
            **training_arguments_for_engine(),
            max_steps=3,
            per_device_train_batch_size=per_device_batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            # SGD keeps the update linear in the gradient; Adam's first step is ~sign(gradient), which would turn
            # float-rounding differences in near-zero gradients into full-size parameter differences.
            optim="sgd",
            learning_rate=1e-1,
            seed=SEED,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            bf16=False,
            dataloader_drop_last=True,
        )
        trainer = Trainer(model=model, args=arguments, train_dataset=dataset)
        trainer.train()
        report = trainer_report(trainer)
    save_rank_result({**report, "initial": initial})


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    finish_distributed()
