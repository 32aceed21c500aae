"""UnlearnTrainer (NPO + SAM by default) on a tiny Llama; reports the initial and final parameters and the logs.

Usage: unlearn_tiny.py PER_DEVICE_BATCH_SIZE GRADIENT_ACCUMULATION_STEPS [METHOD [SMOOTHING|rs0 [lora]]]

Runs under any engine of `run_distributed`, in fp32 or launched in bf16; the final weights are gathered in full. Also
reports the dtypes the Linear layers computed with in training.

Under DDP, SAM perturbs each micro-batch (per process) by its own gradient, so 2 processes x 2 rows must equal
1 process x 2 rows x 2 accumulation steps. Under FSDP2 the first backward is synchronised (the gradient is sharded),
so SAM ascends along the gradient of all ranks' rows: 2 processes x 2 rows equal 1 process x 4 rows. Rows have
different lengths, so the window-count normalisation is exercised too.
"""

import sys
import tempfile

import torch
from datasets import Dataset

from hf_robust.testing import (
    finish_distributed, save_rank_result, tiny_causal_lm, trainer_report, training_arguments_for_engine,
)
from hf_robust.testing.distributed import launched_in_bf16, recorded_linear_dtypes
from hf_robust.unlearning import UnlearnConfig, UnlearnTrainer


def token_rows(count: int, seed: int) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 10, (count,), generator=generator).tolist()
    return Dataset.from_dict({"input_ids": [torch.randint(3, 64, (length,), generator=generator).tolist()
                                            for length in lengths]})


def main(per_device_batch_size: int, accumulation: int, method: str, smoothing: str, lora: bool) -> None:
    model, tokenizer = tiny_causal_lm("llama")
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    initial = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as output_dir:
        args = UnlearnConfig(
            output_dir=output_dir, **training_arguments_for_engine(), bf16=launched_in_bf16(), report_to="none",
            save_strategy="no", disable_tqdm=True,
            max_steps=2, per_device_train_batch_size=per_device_batch_size, gradient_accumulation_steps=accumulation,
            optim="sgd", learning_rate=0.1, lr_scheduler_type="constant", max_grad_norm=1.0, seed=0, logging_steps=1,
            # "rs0": RS with zero noise, whose gradient is the plain objective's: its passes checked exactly.
            method=method, smoothing=smoothing.removesuffix("0"), rs_sigma=0.0 if smoothing == "rs0" else 1e-4,
            rho=0.5, retain_weight=0.7, rmu_layer=1, rmu_alpha=10.0,
        )
        torch.manual_seed(0)  # the LoRA initialisation (drawn in the trainer) is the same in every set-up
        trainer = UnlearnTrainer(model=model, args=args, forget_dataset=token_rows(8, 1),
                                 retain_dataset=token_rows(8, 2), processing_class=tokenizer, peft_config=peft_config)
        with recorded_linear_dtypes() as dtypes:
            trainer.train()
        report = trainer_report(trainer)
    save_rank_result({**report, **dtypes, "initial": initial, "num_processes": trainer.accelerator.num_processes})


if __name__ == "__main__":
    arguments = sys.argv[3:] + ["npo", "sam", ""][len(sys.argv[3:]):]
    main(int(sys.argv[1]), int(sys.argv[2]), arguments[0], arguments[1], arguments[2] == "lora")
    finish_distributed()
