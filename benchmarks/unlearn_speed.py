"""NPO+SAM step time and peak memory against plain NPO on the same batches.

    python benchmarks/unlearn_speed.py                      # a small random llama on CPU
    python benchmarks/unlearn_speed.py --model smollm2      # the real SmolLM2-135M-Instruct, full fine-tuning
    python benchmarks/unlearn_speed.py --device cuda --model smollm2

Per micro-step NPO runs a reference forward, a forget forward + backward and a retain forward + backward; NPO+SAM
adds one forget forward + backward at the perturbed weights (the reference NLL is reused), so the ideal time ratio
is 10 / 7 = 1.43 with a backward costing two forwards (research note §5). Target: <= 1.5x time, and memory of one
extra parameter-sized buffer (the exact copy the weights are restored from).

Times come from one process alternating NPO and NPO+SAM steps on the same model and batches. Peak memory comes from
one fresh process per mode: CUDA max allocated, or on CPU the growth of the peak resident set over the loaded model
(coarse: allocator caching counts too). The extra memory is also given in units of the trainable parameters' size.
Prints a table; asserts nothing.
"""

import argparse
import json
import os
import sys
import tempfile

from speed_common import (
    add_common_arguments,
    alternating_medians,
    memory_in_fresh_processes,
    peak_memory,
    print_table,
    speed_model,
    timed,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(options, smoothing: str):
    import torch
    from datasets import Dataset

    from hf_robust.unlearning import UnlearnConfig, UnlearnTrainer

    torch.manual_seed(0)
    model, tokenizer = speed_model(options)
    generator = torch.Generator().manual_seed(0)
    vocabulary = min(model.config.vocab_size, len(tokenizer)) - 1

    def rows(count):
        ids = torch.randint(1, vocabulary, (count, options.length), generator=generator)
        return Dataset.from_dict({"input_ids": ids.tolist()})

    args = UnlearnConfig(
        output_dir=tempfile.mkdtemp(), method="npo", smoothing=smoothing, rho=0.01, use_cpu=options.device == "cpu",
        bf16=False, report_to="none", save_strategy="no", disable_tqdm=True, seed=0, max_length=options.length,
        per_device_train_batch_size=options.batch_size, optim="adamw_torch", learning_rate=1e-5,
    )
    trainer = UnlearnTrainer(model=model.to(options.device), args=args, forget_dataset=rows(options.batch_size),
                             retain_dataset=rows(options.batch_size), processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    batch = trainer.data_collator([trainer.train_dataset[index] for index in range(options.batch_size)])
    batch = {key: value.to(options.device) for key, value in batch.items()}
    return trainer, batch


def step_function(options, trainer, batch):
    """The Trainer's order: `training_step` (every backward pass of the step), then one optimizer step; timed."""
    import torch

    synchronize = torch.cuda.synchronize if options.device == "cuda" else (lambda: None)
    model = trainer.model
    model.train()

    def step() -> None:
        with torch.autocast(options.device, dtype=torch.bfloat16, enabled=options.autocast):
            trainer.training_step(model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    return timed(step, synchronize)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--length", type=int, default=64, help="tokens per forget / retain row")
    add_common_arguments(parser, ("none", "sam"))
    options = parser.parse_args(argv)
    import torch

    torch.set_num_threads(options.threads)
    if options.mode:
        print(json.dumps(peak_memory(step_function(options, *build(options, options.mode)), options.device)))
        return
    memory = memory_in_fresh_processes(__file__, argv if argv is not None else sys.argv[1:], ("none", "sam"))
    trainers = {mode: build(options, mode) for mode in ("none", "sam")}
    # One model, reference and optimizer for both modes, so both time the same weights in the same memory.
    for name in ("model", "ref_model", "optimizer"):
        setattr(trainers["sam"][0], name, getattr(trainers["none"][0], name))
    measured = alternating_medians({mode: step_function(options, *built) for mode, built in trainers.items()},
                                   options.warmup, options.steps)
    trainable = sum(p.numel() * p.element_size() for p in trainers["none"][0].model.parameters() if p.requires_grad)
    trainable_mib = trainable / 2**20
    ratio = measured["sam"] / measured["none"]
    extra = memory["sam"] - memory["none"]
    print(f"model {options.model} (full fine-tuning, {trainable_mib:.0f} MiB trainable), device "
          f"{options.device}, dtype {options.dtype}{', bf16 autocast' if options.autocast else ''}; batch "
          f"{options.batch_size} forget + {options.batch_size} retain rows of {options.length} tokens; median of "
          f"{options.steps} alternating steps")
    print_table([("NPO", measured["none"], memory["none"]), ("NPO+SAM", measured["sam"], memory["sam"])])
    print(f"\ntime ratio NPO+SAM / NPO: {ratio:.2f} (ideal 1.43, target <= 1.50)")
    print(f"extra peak memory: {extra:.1f} MiB = {extra / trainable_mib:.2f} x the trainable parameters "
          f"(target: about 1 buffer)")


if __name__ == "__main__":
    main()
