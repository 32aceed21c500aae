"""Every trainer for a few steps through its own Trainer loop in one process, with real mixed precision (`bf16=True`:
accelerate's autocast, fp32 weights), as a user's recipe runs it: step time, loss, attack norm, peak memory.

    python benchmarks/trainer_steps.py                                        # small Llama, CPU, fp32
    python benchmarks/trainer_steps.py --device cuda --bf16 --model smollm2-shape   # in benchmarks/gpu_check.sh

The trainers are built as in `launched/distributed_step.py` (the DDP / FSDP2 / ZeRO-3 comparison): SFT, CAT and
CAPO (full fine-tuning, CAPO against a frozen reference), NPO, NPO+SAM and RMU on the language model, AdvUnlearn on
the tiny SD components. Each row fails on its own (the table says how) so one broken trainer does not hide the rest.
Prints a markdown table; writes JSON with --output.
"""

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "launched"))
sys.path.insert(0, str(Path(__file__).parent))

from distributed_step import BATCH, LENGTH, StepClock, advunlearn, build, recorded_restore_bytes  # noqa: E402
from speed_common import speed_model  # noqa: E402
from tables import print_table  # noqa: E402

TRAINERS = ("sft", "cat", "capo", "npo", "npo_sam", "rmu", "advunlearn")


def peak_mib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def one_trainer(name: str, options) -> dict:
    import torch
    from transformers import PrinterCallback

    if options.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    overrides = {"use_cpu": options.device == "cpu", "bf16": options.bf16, "logging_steps": 1,
                 "logging_strategy": "steps"}
    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        if name == "advunlearn":
            trainer = advunlearn(output_dir, options.steps + options.warmup, clock, overrides)
        else:
            model, tokenizer = speed_model(argparse.Namespace(model=options.model, dtype="float32"))
            trainer = build(name, model, tokenizer, output_dir, options.steps + options.warmup, clock, overrides)
        trainer.remove_callback(PrinterCallback)
        restore_bytes = recorded_restore_bytes(trainer)  # SAM's evidence: the copy it restores from
        started = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - started
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    losses = [entry["loss"] for entry in logs]
    norms = [entry["attack_delta_norm"] for entry in logs if "attack_delta_norm" in entry]
    return {
        "trainer": name, "steps": len(clock.seconds),
        "step_seconds": statistics.median(clock.seconds[options.warmup:]),
        "total_seconds": total, "losses": losses, "finite": all(math.isfinite(loss) for loss in losses),
        "attack_delta_norm": norms[-1] if norms else None,
        "sam_restore_mib": max(restore_bytes) / 2**20 if restore_bytes else None, "peak_mib": peak_mib(options.device),
        "weights_dtype": str(next(trainer.model.parameters()).dtype).removeprefix("torch."),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS))
    parser.add_argument("--model", choices=["small", "smollm2-shape"], default="small",
                        help="'small': a 4-layer Llama; 'smollm2-shape': SmolLM2-135M's architecture, random weights")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="train with bf16=True (accelerate's bf16 autocast)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, help="write the measurements as JSON here")
    options = parser.parse_args()
    import torch

    if options.threads:
        torch.set_num_threads(options.threads)
    records = []
    for name in options.trainers:
        try:
            records.append(one_trainer(name, options))
        except Exception as error:  # reported in the table; the other trainers still run
            traceback.print_exc()
            records.append({"trainer": name, "error": f"{type(error).__name__}: {error}"[:200]})
        print(f"ran {name}", file=sys.stderr, flush=True)
    rows = []
    for record in records:
        if "error" in record:
            rows.append([record["trainer"], "failed: " + record["error"], "-", "-", "-", "-", "-", "-"])
            continue
        norm, copy, peak = record["attack_delta_norm"], record["sam_restore_mib"], record["peak_mib"]
        rows.append([record["trainer"], f"{record['step_seconds']:.3f}", f"{record['losses'][-1]:.4g}",
                     "yes" if record["finite"] else "NO", "-" if norm is None else f"{norm:.3g}",
                     "-" if copy is None else f"{copy:.1f}", "-" if peak is None else f"{peak:.0f}",
                     record["weights_dtype"]])
    print(f"\n{options.model} (LM batch {BATCH} x {LENGTH} tokens), {options.device}, "
          f"{'bf16 autocast' if options.bf16 else 'fp32'}; median of {options.steps} steps after {options.warmup}")
    print_table(["trainer", "s / step", "last loss", "losses finite", "attack ‖δ‖ (last)", "SAM restore copy MiB",
                 "peak MiB",
                 "weights dtype"], rows)
    if options.output:
        options.output.write_text(json.dumps(records, indent=1))
    if any("error" in record or not record["finite"] for record in records):
        sys.exit(1)


if __name__ == "__main__":
    main()
