"""AdvUnlearnTrainer on tiny SD components; reports the initial and final text encoder and the logged terms.

Usage: advunlearn_tiny.py PER_DEVICE_BATCH_SIZE BF16(0|1)

Runs under DDP and DeepSpeed ZeRO-2 (`run_distributed`'s engines); FSDP2 and ZeRO-3 are refused by the trainer.

The randomness of an iteration (the sampling step, x_T, the retain prompts, the attack's start) is a function of the
seed, the iteration and the global row index, so 2 processes x 1 row draw what 1 process x 2 rows draws; DDP
averages the per-rank mean gradients, which is the gradient of the 2-row mean. Step 0 is warmup, step 1 attacked.
"""

import sys
import tempfile

from hf_robust.erasure import AdvUnlearnConfig, AdvUnlearnTrainer
from hf_robust.sharding import engine_of
from hf_robust.testing import finish_distributed, save_rank_result, tiny_sd_components, training_arguments_for_engine


def main(per_device_batch_size: int, bf16: bool) -> None:
    components = tiny_sd_components(seed=0)
    encoder = components["text_encoder"]
    initial = {name: tensor.detach().clone() for name, tensor in encoder.state_dict().items()}
    with tempfile.TemporaryDirectory() as output_dir:
        args = AdvUnlearnConfig(
            output_dir=output_dir, **training_arguments_for_engine(), bf16=bf16, report_to="none", save_strategy="no",
            disable_tqdm=True,
            max_steps=2, per_device_train_batch_size=per_device_batch_size, optim="sgd", learning_rate=20.0,
            seed=0, logging_steps=1, ddim_steps=4, attack_steps=2, attack_lr=0.01, attack_warmup=1, retain_batch=2,
        )
        trainer = AdvUnlearnTrainer(components, args, concepts=["nudity"])
        trainer.train()
    final = {name: tensor.detach().clone() for name, tensor in encoder.state_dict().items()}
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    save_rank_result({"initial": initial, "final": final, "logs": logs,
                      "num_processes": trainer.accelerator.num_processes, "engine": engine_of(trainer.accelerator)})


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2] == "1")
    finish_distributed()
