"""Launched by benchmarks/distributed_speed.py on every rank: train one method for a few steps on a small Llama under
the launched engine; report per-step seconds (after warm-up), the peak resident memory of the process, the bytes of
the trainable weights (whole and this rank's part) and, for SAM, of its restore copy.

Usage: distributed_step.py TRAINER STEPS WARMUP   (TRAINER: sft | cat | capo | npo | npo_sam | rmu | advunlearn)

The language-model trainers share one small Llama and batch; `advunlearn` trains the text encoder of the tiny SD
components (`hf_robust.testing.tiny_sd_components`), every step attacked.
"""

import resource
import statistics
import sys
import tempfile
import time

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback

from hf_robust.sharding import engine_of, local_tensor
from hf_robust.testing import (
    finish_distributed, save_rank_result, tiny_sd_components, tiny_tokenizer, training_arguments_for_engine,
)

HIDDEN, LAYERS, LENGTH, BATCH = 256, 4, 64, 4


class StepClock(TrainerCallback):
    def __init__(self):
        self.seconds, self.started = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.started)


def small_llama(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=4 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2 * LENGTH,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False))


def texts(count: int, seed: int) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    words = ["red", "blue", "door", "code", "river", "stone", "seven", "north", "light", "paper"]
    return [" ".join(words[index] for index in torch.randint(len(words), (LENGTH // 2,), generator=generator))
            for _ in range(count)]


def build(name: str, model, tokenizer, output_dir: str, steps: int, clock, overrides: dict | None = None):
    """The trainer `name` on `model`; `overrides` replace training arguments (also used by trainer_steps.py)."""
    common = dict(output_dir=output_dir, **training_arguments_for_engine(), bf16=False, report_to="none",
                  save_strategy="no", disable_tqdm=True, max_steps=steps, per_device_train_batch_size=BATCH,
                  learning_rate=1e-4, seed=0, logging_strategy="no")
    common.update(overrides or {})
    if name in ("npo", "npo_sam", "rmu"):
        from hf_robust.unlearning import UnlearnConfig, UnlearnTrainer

        # RMU steers layer 2 of 4 (its default trains the MLP down projections of layers 0..2).
        args = UnlearnConfig(**common, method="rmu" if name == "rmu" else "npo",
                             smoothing="sam" if name == "npo_sam" else "none", rmu_layer=2, max_length=LENGTH)
        rows = BATCH * steps * 2
        return UnlearnTrainer(model=model, args=args, forget_dataset=Dataset.from_dict({"text": texts(rows, 1)}),
                              retain_dataset=Dataset.from_dict({"text": texts(rows, 2)}), processing_class=tokenizer,
                              callbacks=[clock])
    prompts = [{"prompt": text[:40], "completion": text[40:]} for text in texts(BATCH * steps * 2, 3)]
    if name == "capo":
        import copy

        from hf_robust.cat import CAPOConfig, CAPOTrainer

        # Full fine-tuning against a frozen reference, which trl prepares for the engine like the policy.
        pairs = Dataset.from_list([{"prompt": [{"role": "user", "content": row["prompt"]}],
                                    "chosen": [{"role": "assistant", "content": "I cannot help with that."}],
                                    "rejected": [{"role": "assistant", "content": row["completion"]}]}
                                   for row in prompts])
        args = CAPOConfig(**common, gradient_checkpointing=False, max_length=2 * LENGTH, attack_steps=10)
        return CAPOTrainer(model=model, ref_model=copy.deepcopy(model).eval(), args=args, train_dataset=pairs,
                           processing_class=tokenizer, callbacks=[clock])
    if name == "cat":
        from hf_robust.cat import CATConfig, CATTrainer

        adversarial = Dataset.from_list([{"prompt": row["prompt"], "target": "Sure, here is " + row["completion"],
                                          "refusal": "I cannot help with that."} for row in prompts])
        args = CATConfig(**common, gradient_checkpointing=False, max_length=2 * LENGTH, adversarial_fraction=0.5,
                         mixing_stopping_strategy="all_exhausted", attack_steps=10)
        utility = Dataset.from_list([{"messages": [{"role": "user", "content": row["prompt"]},
                                                   {"role": "assistant", "content": row["completion"]}]}
                                     for row in prompts])
        return CATTrainer(model=model, args=args, adversarial_dataset=adversarial, utility_dataset=utility,
                          processing_class=tokenizer, callbacks=[clock])
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**common, gradient_checkpointing=False, max_length=2 * LENGTH)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(prompts), processing_class=tokenizer,
                      callbacks=[clock])


def recorded_restore_bytes(trainer) -> list[int]:
    """For a SAM trainer, a list that gets the bytes of every restore copy SAM makes (its evidence of perturbing the
    weights, and their memory); stays empty for any other trainer."""
    sizes = []
    smoother = getattr(trainer, "smoother", None)
    if smoother is not None and hasattr(smoother, "restore_buffers"):
        original = smoother.restore_buffers

        def recording(parameters):
            buffers = original(parameters)
            sizes.append(sum(buffer.numel() * buffer.element_size() for buffer in buffers))
            return buffers

        smoother.restore_buffers = recording
    return sizes


def advunlearn(output_dir: str, steps: int, clock, overrides: dict | None = None):
    """AdvUnlearnTrainer on the tiny SD components (its model is the text encoder), every step attacked."""
    from hf_robust.erasure import AdvUnlearnConfig, AdvUnlearnTrainer

    common = dict(output_dir=output_dir, **training_arguments_for_engine(), bf16=False, report_to="none",
                  save_strategy="no", disable_tqdm=True, max_steps=steps, per_device_train_batch_size=1, seed=0,
                  logging_strategy="no")
    args = AdvUnlearnConfig(**{**common, **(overrides or {})}, ddim_steps=4, attack_steps=5, attack_warmup=0,
                            retain_batch=2)
    trainer = AdvUnlearnTrainer(tiny_sd_components(seed=0), args, concepts=["nudity"], callbacks=[clock])
    plugin = trainer.accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3:
        # ZeRO-3 keeps weights under 1e5 elements whole on every rank (all of the tiny encoder's): partition them
        # all, as a real encoder's would be.
        plugin.deepspeed_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return trainer


def main(name: str, steps: int, warmup: int) -> None:
    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        if name == "advunlearn":
            trainer = advunlearn(output_dir, steps + warmup, clock)
            model = trainer.model
        else:
            tokenizer = tiny_tokenizer()
            assert isinstance(tokenizer, PreTrainedTokenizerFast)
            model = small_llama(tokenizer)
            trainer = build(name, model, tokenizer, output_dir, steps + warmup, clock)
        whole_bytes = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
        sam_bytes = recorded_restore_bytes(trainer)
        trainer.train()
        # This rank's part: a DTensor's local shard (FSDP2), a ZeRO-3 parameter's partition (`ds_tensor`).
        local_bytes = sum((parameter.ds_tensor if hasattr(parameter, "ds_tensor") else local_tensor(
            parameter.detach())).numel() * parameter.element_size() for parameter in trainer.model.parameters())
    save_rank_result({
        "engine": engine_of(trainer.accelerator), "step_seconds": statistics.median(clock.seconds[warmup:]),
        "peak_resident_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "weights_mib": whole_bytes / 2**20, "local_weights_mib": local_bytes / 2**20,
        "restore_copy_mib": max(sam_bytes) / 2**20 if sam_bytes else None,
    })


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    finish_distributed()
