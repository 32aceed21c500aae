"""UnlearnTrainer (NPO + SAM) on a tiny Llama; reports the initial and final parameters and the logged terms.

Usage: unlearn_tiny.py PER_DEVICE_BATCH_SIZE GRADIENT_ACCUMULATION_STEPS

SAM perturbs each micro-batch (per process) by its own gradient, so 2 processes x 2 rows must equal 1 process x
2 rows x 2 accumulation steps: the same global batch of 4 rows, the same per-micro-batch perturbations. Rows have
different lengths, so the window-count normalisation is exercised too.
"""

import sys
import tempfile

import torch
from datasets import Dataset

from hf_robust.testing import finish_distributed, save_rank_result, tiny_causal_lm
from hf_robust.unlearning import UnlearnConfig, UnlearnTrainer


def token_rows(count: int, seed: int) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 10, (count,), generator=generator).tolist()
    return Dataset.from_dict({"input_ids": [torch.randint(3, 64, (length,), generator=generator).tolist()
                                            for length in lengths]})


def main(per_device_batch_size: int, accumulation: int) -> None:
    model, tokenizer = tiny_causal_lm("llama")
    initial = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as output_dir:
        args = UnlearnConfig(
            output_dir=output_dir, use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True,
            max_steps=2, per_device_train_batch_size=per_device_batch_size, gradient_accumulation_steps=accumulation,
            optim="sgd", learning_rate=0.1, lr_scheduler_type="constant", max_grad_norm=1.0, seed=0, logging_steps=1,
            method="npo", smoothing="sam", rho=0.5, retain_weight=0.7,
        )
        trainer = UnlearnTrainer(model=model, args=args, forget_dataset=token_rows(8, 1),
                                 retain_dataset=token_rows(8, 2), processing_class=tokenizer)
        trainer.train()
    final = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    save_rank_result({"initial": initial, "final": final, "logs": logs,
                      "num_processes": trainer.accelerator.num_processes})


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
    finish_distributed()
