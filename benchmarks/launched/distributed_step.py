"""Launched by benchmarks/distributed_speed.py on every rank: train one method for a few steps on a small Llama under
the launched engine; report per-step seconds (after warm-up), the peak resident memory of the process, the bytes of
the trainable weights (whole and this rank's part) and, for SAM, of its restore copy.

Usage: distributed_step.py TRAINER STEPS WARMUP   (TRAINER: sft | cat | npo | npo_sam)
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
from hf_robust.testing import finish_distributed, save_rank_result, tiny_tokenizer, training_arguments_for_engine

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


def build(name: str, model, tokenizer, output_dir: str, steps: int, clock):
    common = dict(output_dir=output_dir, **training_arguments_for_engine(), bf16=False, report_to="none",
                  save_strategy="no", disable_tqdm=True, max_steps=steps, per_device_train_batch_size=BATCH,
                  learning_rate=1e-4, seed=0, logging_strategy="no")
    if name in ("npo", "npo_sam"):
        from hf_robust.unlearning import UnlearnConfig, UnlearnTrainer

        args = UnlearnConfig(**common, method="npo", smoothing="sam" if name == "npo_sam" else "none",
                             max_length=LENGTH)
        rows = BATCH * steps * 2
        return UnlearnTrainer(model=model, args=args, forget_dataset=Dataset.from_dict({"text": texts(rows, 1)}),
                              retain_dataset=Dataset.from_dict({"text": texts(rows, 2)}), processing_class=tokenizer,
                              callbacks=[clock])
    prompts = [{"prompt": text[:40], "completion": text[40:]} for text in texts(BATCH * steps * 2, 3)]
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


def main(name: str, steps: int, warmup: int) -> None:
    tokenizer = tiny_tokenizer()
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    model = small_llama(tokenizer)
    whole_bytes = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build(name, model, tokenizer, output_dir, steps + warmup, clock)
        sam_bytes = []
        if name == "npo_sam":
            original = trainer.smoother.restore_buffers

            def recording(parameters):
                buffers = original(parameters)
                sam_bytes.append(sum(buffer.numel() * buffer.element_size() for buffer in buffers))
                return buffers

            trainer.smoother.restore_buffers = recording
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
