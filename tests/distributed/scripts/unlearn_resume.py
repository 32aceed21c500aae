"""UnlearnTrainer (NPO, with a smoother) on a tiny Llama for 3 steps, saving a checkpoint every step, or resumed from
one (in a new launch, as a user resumes): reports the full final weights (gathered), the engine and the global step
at which each step of this run began.

Usage: unlearn_resume.py OUTPUT_DIR SMOOTHING [RESUME_FROM_CHECKPOINT]

Runs under every `run_distributed` engine. Every launch starts from the same initial weights (the user's model), so
the NPO reference is the initial model in both; a resumed run loads the step-1 weights, AdamW state and data position.
"""

import sys

import torch
from transformers import TrainerCallback

from hf_robust.testing import finish_distributed, save_rank_result, tiny_causal_lm, training_arguments_for_engine
from hf_robust.testing.distributed import trainer_report
from hf_robust.unlearning import UnlearnConfig, UnlearnTrainer

from unlearn_tiny import token_rows  # noqa: E402  (the launched scripts' folder is on sys.path)


class StepsTaken(TrainerCallback):
    def __init__(self):
        self.began = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.began.append(state.global_step)


def trained(model, tokenizer, output_dir: str, smoothing: str, resume: str | None) -> dict:
    args = UnlearnConfig(
        output_dir=output_dir, **training_arguments_for_engine(), bf16=False, report_to="none", disable_tqdm=True,
        max_steps=3, per_device_train_batch_size=2, optim="adamw_torch", learning_rate=1e-3, seed=0, logging_steps=1,
        method="npo", smoothing=smoothing, rho=0.5, retain_weight=0.7, save_strategy="steps", save_steps=1,
        save_only_model=False,
    )
    steps = StepsTaken()
    torch.manual_seed(0)
    trainer = UnlearnTrainer(model=model, args=args, forget_dataset=token_rows(12, 1),
                             retain_dataset=token_rows(12, 2), processing_class=tokenizer, callbacks=[steps])
    trainer.train(resume_from_checkpoint=resume)
    return {**trainer_report(trainer), "steps": steps.began}


if __name__ == "__main__":
    model, tokenizer = tiny_causal_lm("llama")
    report = trained(model, tokenizer, sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    save_rank_result({key: report[key] for key in ("final", "steps", "engine")})
    finish_distributed()
