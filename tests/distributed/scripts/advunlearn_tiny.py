"""AdvUnlearnTrainer on tiny SD components; reports the initial and the full final text encoder, the logged terms,
the engine and whether it sharded the weights.

Usage: advunlearn_tiny.py PER_DEVICE_BATCH_SIZE BF16(0|1) [callback] [xl]

Runs under every `run_distributed` engine (DDP, FSDP2 with the test shim, DeepSpeed ZeRO-2/3). With `callback`, a
`ConceptLeakageCallback` attacks two concept prompts when training ends and its logged values are reported; with
`xl`, the components are SDXL's (both text encoders trained, as one `TextEncoderPair`).

The randomness of an iteration (the sampling step, x_T, the retain prompts, the attack's start) is a function of the
seed, the iteration and the global row index, so 2 processes x 1 row draw what 1 process x 2 rows draws; the engines
average the per-rank mean gradients, which is the gradient of the 2-row mean. Step 0 is warmup, step 1 attacked.
"""

import sys
import tempfile

from hf_robust.erasure import AdvUnlearnConfig, AdvUnlearnTrainer, ConceptLeakageCallback, PromptAttackConfig
from hf_robust.sharding import is_dtensor, is_zero3_partitioned
from hf_robust.testing import finish_distributed, save_rank_result, tiny_sd_components, training_arguments_for_engine
from hf_robust.testing.distributed import trainer_report


def partition_every_weight(trainer) -> None:
    """ZeRO-3 keeps parameters under `stage3_param_persistence_threshold` elements (1e5 by default) whole on every
    rank: every weight of the tiny encoder would be. 0 partitions them all, as a real encoder's embedding is."""
    plugin = trainer.accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3:
        plugin.deepspeed_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0


def main(per_device_batch_size: int, bf16: bool, with_callback: bool, xl: bool) -> None:
    components = tiny_sd_components(xl, seed=0)
    encoders = {"text_encoder": components["text_encoder"]}
    if xl:  # the trained model is then the pair: its state dict names the encoders
        encoders["text_encoder_2"] = components["text_encoder_2"]
    initial = {(f"{prefix}." if xl else "") + name: tensor.detach().clone()
               for prefix, encoder in encoders.items() for name, tensor in encoder.state_dict().items()}
    with tempfile.TemporaryDirectory() as output_dir:
        args = AdvUnlearnConfig(
            output_dir=output_dir, **training_arguments_for_engine(), bf16=bf16, report_to="none", save_strategy="no",
            disable_tqdm=True,
            max_steps=2, per_device_train_batch_size=per_device_batch_size, optim="sgd", learning_rate=20.0,
            seed=0, logging_steps=1, ddim_steps=4, attack_steps=2, attack_lr=0.01, attack_warmup=1, retain_batch=2,
        )
        trainer = AdvUnlearnTrainer(components, args, concepts=["nudity"])
        partition_every_weight(trainer)
        if with_callback:
            config = PromptAttackConfig(num_adv_tokens=2, discrete_iters=2, soft_steps=2, n_timesteps=2, ddim_steps=4,
                                        seed=0)
            trainer.add_callback(ConceptLeakageCallback(trainer, ["nudity", "a nude person"], config))
        trainer.train()
    report = trainer_report(trainer)  # the full trained encoder, gathered (on rank 0 under FSDP2 / ZeRO-3)
    leakage = [{key: value for key, value in entry.items() if key.startswith("leakage/")}
               for entry in trainer.state.log_history if any(key.startswith("leakage/") for key in entry)]
    # How the trained token embedding is held on this rank.
    weight = trainer.accelerator.unwrap_model(trainer.model_wrapped).get_input_embeddings().weight
    partitioned = is_zero3_partitioned(weight) and not weight.ds_persist
    embedding = "dtensor" if is_dtensor(weight) else "zero3" if partitioned else "whole"
    save_rank_result({**report, "initial": initial, "leakage": leakage, "embedding": embedding,
                      "num_processes": trainer.accelerator.num_processes})


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2] == "1", "callback" in sys.argv[3:], "xl" in sys.argv[3:])
    finish_distributed()
