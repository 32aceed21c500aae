"""Step time and memory per rank of each trainer under DDP, FSDP2 and DeepSpeed ZeRO-3, side by side in one run.

    python benchmarks/distributed_speed.py                       # 2 CPU processes (FSDP2 through the test shim)
    python benchmarks/distributed_speed.py --steps 8 --trainers sft npo_sam

On CPU, accelerate runs FSDP only through the test-only shim in tests/distributed/cpu_fsdp/ (accelerate 1.15/1.16
never takes its FSDP path on CPU); the engine each rank really ran is checked by the harness. A small Llama
(hidden 256, 4 layers, ~4 M parameters) keeps a run within minutes (AdvUnlearn: the tiny SD components, whose
trained text encoder has ~0.1 M); ratios are to DDP in the same run. Prints a
markdown table and writes JSON beside it with --output. SAM's restore copy per rank is compared with its bound:
1/N of the weights (+ the largest gathered unit, which the copy does not hold at all: it copies local shards).
"""

import argparse
import json
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "tests" / "distributed"))

from engines import run_on  # noqa: E402  (the harness with the CPU FSDP shim, shared with the tests)
from tables import print_table  # noqa: E402

STEP_SCRIPT = Path(__file__).parent / "launched" / "distributed_step.py"
TRAINERS = ("sft", "cat", "capo", "npo", "npo_sam", "rmu", "advunlearn")
ENGINES = ("ddp", "fsdp2", "zero3")
REFUSED = {("npo_sam", "zero3"): "refused: SAM under ZeRO-3 (use FSDP2)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS))
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", type=Path, help="write the measurements as JSON here")
    arguments = parser.parse_args()

    records = []
    for trainer in arguments.trainers:
        for engine in arguments.engines:
            if (trainer, engine) in REFUSED:
                continue
            ranks = run_on(engine, STEP_SCRIPT, trainer, str(arguments.steps), str(arguments.warmup), timeout=1200)
            records.append({"trainer": trainer, "engine": engine, "ranks": ranks})
            print(f"measured {trainer} under {engine}", file=sys.stderr)

    baseline = {record["trainer"]: max(rank["step_seconds"] for rank in record["ranks"])
                for record in records if record["engine"] == "ddp"}
    rows = []
    for record in records:
        ranks = record["ranks"]
        seconds = max(rank["step_seconds"] for rank in ranks)  # a step ends when its slowest rank does
        ratio = f"{seconds / baseline[record['trainer']]:.2f}" if record["trainer"] in baseline else "-"
        copy = ranks[0]["restore_copy_mib"]
        rows.append([record["trainer"], record["engine"], f"{seconds:.3f}", ratio,
                     f"{max(rank['peak_resident_mib'] for rank in ranks):.0f}",
                     f"{ranks[0]['local_weights_mib']:.1f} / {ranks[0]['weights_mib']:.1f}",
                     "-" if copy is None else f"{copy:.1f}"])
    rows += [[trainer, engine, reason, "-", "-", "-", "-"] for (trainer, engine), reason in REFUSED.items()
             if trainer in arguments.trainers and engine in arguments.engines]
    print_table(["trainer", "engine", "s / step", "vs DDP", "peak RSS MiB / rank", "weights MiB (rank / all)",
                 "SAM restore copy MiB / rank"], rows)
    if arguments.output:
        arguments.output.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
