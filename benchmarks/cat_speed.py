"""CAT step time against plain SFT on the same batch, beside the ideal ratio, and the peak memory of both.

    python benchmarks/cat_speed.py                       # a small random llama on CPU
    python benchmarks/cat_speed.py --model smollm2       # the real SmolLM2-135M-Instruct (LoRA)
    python benchmarks/cat_speed.py --device cuda --dtype bfloat16 --model smollm2

One CAT step on n_a adversarial and n_u utility rows runs K attack iterations (forward + backward to the input) on
the n_a prompts, then trains on 2 n_a + n_u sequences (away, toward, utility). The plain SFT step trains on the same
2 n_a + n_u sequences without the attack. With LoRA a training backward costs about one forward, as does an attack
backward (no weight gradients), so the ideal ratio is 1 + K n_a / (2 n_a + n_u) (2.11 at the paper's 10 x 1 / 9).
Target: measured ratio <= 1.1 x ideal.

Times come from one process alternating SFT and CAT steps on the same model, so both see the same machine load.
Peak memory comes from one fresh process per mode (same seed, same batch): CUDA max allocated, or on CPU the growth
of the process's peak resident set over the loaded model. Prints a table; asserts nothing.
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


def build(options):
    """(trainer, {"cat": batch, "sft": batch}) on one LoRA model: the CAT batch of n_a + n_u rows, and the same
    2 n_a + n_u sequences (away, toward, utility) as plain rows, which the trainer trains on with no attack."""
    from peft import LoraConfig, get_peft_model

    from hf_robust.cat.cat_config import CATConfig
    from hf_robust.cat.cat_trainer import CATTrainer
    from hf_robust.cat.toy import toy_adversarial_dataset, toy_utility_dataset

    model, tokenizer = speed_model(options)
    model = get_peft_model(model.to(options.device), LoraConfig(r=options.lora_r, lora_alpha=16,
                                                                target_modules="all-linear"))
    args = CATConfig(
        output_dir=tempfile.mkdtemp(), use_cpu=options.device == "cpu", bf16=False, gradient_checkpointing=False,
        report_to="none", save_strategy="no", disable_tqdm=True, max_length=256, seed=0, adversarial_fraction=0.5,
        mixing_stopping_strategy="all_exhausted", attack_steps=options.attack_steps,
    )
    trainer = CATTrainer(model=model, args=args, adversarial_dataset=toy_adversarial_dataset("train"),
                         utility_dataset=toy_utility_dataset("train"), processing_class=tokenizer)
    rows = [row for row in trainer.train_dataset if row["adversarial"]][: options.n_adversarial]
    rows += [row for row in trainer.train_dataset if not row["adversarial"]][: options.n_utility]
    sequences = [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in rows]
    sequences += [{"input_ids": row["refusal_input_ids"], "labels": row["refusal_labels"]}
                  for row in rows if row["adversarial"]]
    batches = {"cat": trainer.data_collator(rows), "sft": trainer.data_collator(sequences)}
    batches = {mode: {key: value.to(options.device) for key, value in batch.items()}
               for mode, batch in batches.items()}
    return trainer, batches


def step_function(options, trainer):
    """One CAT/SFT training step on a batch: the trainer's loss, backward, one AdamW step; timed."""
    import torch

    model = trainer.model
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    synchronize = torch.cuda.synchronize if options.device == "cuda" else (lambda: None)

    def step(batch) -> None:
        with torch.autocast(options.device, dtype=torch.bfloat16, enabled=options.autocast):
            loss = trainer.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return lambda batch: timed(lambda: step(batch), synchronize)()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_adversarial", type=int, default=1)
    parser.add_argument("--n_utility", type=int, default=7)
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--lora_r", type=int, default=64)
    add_common_arguments(parser, ("cat", "sft"))
    options = parser.parse_args(argv)
    import torch

    torch.set_num_threads(options.threads)
    if options.mode:
        trainer, batches = build(options)
        step = step_function(options, trainer)
        print(json.dumps(peak_memory(lambda: step(batches[options.mode]), options.device)))
        return
    arguments = argv if argv is not None else sys.argv[1:]
    memory = memory_in_fresh_processes(__file__, arguments, ("sft", "cat"))
    trainer, batches = build(options)
    step = step_function(options, trainer)
    measured = alternating_medians({mode: (lambda mode=mode: step(batches[mode])) for mode in ("sft", "cat")},
                                   options.warmup, options.steps)
    n_a, n_u, k = options.n_adversarial, options.n_utility, options.attack_steps
    ideal = 1 + k * n_a / (2 * n_a + n_u)
    ratio = measured["cat"] / measured["sft"]
    sequences, length = batches["sft"]["input_ids"].shape
    print(f"model {options.model} (LoRA r {options.lora_r}), device {options.device}, dtype {options.dtype}"
          f"{', bf16 autocast' if options.autocast else ''}; n_a {n_a}, n_u {n_u}, K {k}; "
          f"{sequences} sequences of {length} tokens; median of {options.steps} alternating steps")
    print_table([("plain SFT", measured["sft"], memory["sft"]), ("CAT", measured["cat"], memory["cat"])])
    print(f"\nratio CAT / SFT: {ratio:.2f}   ideal 1 + K n_a / (2 n_a + n_u): {ideal:.2f}   "
          f"measured / ideal: {ratio / ideal:.2f} (target <= 1.10)")


if __name__ == "__main__":
    main()
