"""AdvUnlearnTrainer on tiny SD components for 3 steps, saving a checkpoint every step, or resumed from one (in a new
launch, as a user resumes): reports the full final text encoder (gathered), the engine and the global step at which
each step of this run began.

Usage: advunlearn_resume.py OUTPUT_DIR [RESUME_FROM_CHECKPOINT]

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


if __name__ == "__main__":
    report = trained(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    save_rank_result({key: report[key] for key in ("final", "steps", "engine")})
    finish_distributed()
