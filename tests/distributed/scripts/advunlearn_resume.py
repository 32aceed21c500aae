"""AdvUnlearnTrainer on tiny SD components, resumed from a checkpoint: reports the full final text encoder of an
uninterrupted 3-step run and of a run resumed from its step-1 checkpoint (both gathered in full), and the global
step at which each step of the resumed run began.

Usage: advunlearn_resume.py OUTPUT_DIR

Runs under every `run_distributed` engine (the checkpoint is the engine's own: DeepSpeed's, or FSDP2's optimizer
state beside the full encoder weights). The randomness of an iteration is keyed on the seed, the step and the global
row, so the resumed run retraces the uninterrupted one when the weights, the AdamW state and the step are restored.
ZeRO-3 keeps the tiny encoder's small weights whole (persistent), as it would a real encoder's position table: the
case where CLIP's embeddings module read its child's weight while a prefetch was still in flight.
"""

import sys

from transformers import TrainerCallback

from hf_robust.erasure import AdvUnlearnConfig, AdvUnlearnTrainer
from hf_robust.testing import finish_distributed, save_rank_result, tiny_sd_components, training_arguments_for_engine
from hf_robust.testing.distributed import trainer_report


class StepsTaken(TrainerCallback):
    def __init__(self):
        self.began = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.began.append(state.global_step)


def trained(output_dir: str, resume: str | None) -> dict:
    args = AdvUnlearnConfig(
        output_dir=output_dir, **training_arguments_for_engine(), bf16=False, report_to="none", disable_tqdm=True,
        max_steps=3, per_device_train_batch_size=1, optim="adamw_torch", learning_rate=1e-3, seed=0,
        logging_steps=1, ddim_steps=4, attack_steps=2, attack_lr=0.01, attack_warmup=1, retain_batch=2,
        save_strategy="steps", save_steps=1, save_only_model=False,
    )
    steps = StepsTaken()
    trainer = AdvUnlearnTrainer(tiny_sd_components(seed=0), args, concepts=["nudity"], callbacks=[steps])
    trainer.train(resume_from_checkpoint=resume)
    return {**trainer_report(trainer), "steps": steps.began}


def main(output_dir: str) -> None:
    uninterrupted = trained(output_dir, None)
    resumed = trained(output_dir + "-resumed", f"{output_dir}/checkpoint-1")
    save_rank_result({"uninterrupted": uninterrupted["final"], "resumed": resumed["final"],
                      "resumed_steps": resumed["steps"], "engine": resumed["engine"]})


if __name__ == "__main__":
    main(sys.argv[1])
    finish_distributed()
