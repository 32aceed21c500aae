"""Run a script under `accelerate launch` on CPU processes and collect what each rank reports.

The test side calls `run_distributed(script, ..., engine=...)`; the launched script calls `save_rank_result(obj)` on
every rank and ends with `finish_distributed()`. The engine is one of `ENGINES`: plain DDP, FSDP2, or DeepSpeed
ZeRO-2/3, each started from the accelerate config hf-robust ships for it, with CPU settings (2 processes, gloo, and
fp32 unless `mixed_precision="bf16"` is asked for) laid over it. A launched script looks like:

    from hf_robust.testing import finish_distributed, save_rank_result

    def main():
        ...
        save_rank_result({"weight": model.weight.detach()})

    if __name__ == "__main__":
        main()
        finish_distributed()  # only on success: after an exception the other rank would wait in the barrier
"""

import contextlib
import importlib.resources
import os
import shlex
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed
import yaml

RESULT_DIR_VARIABLE = "HF_ROBUST_RESULT_DIR"
# Set by `accelerate launch` from the config's `mixed_precision`; TrainingArguments reads it too (bf16=False or not).
MIXED_PRECISION_VARIABLE = "ACCELERATE_MIXED_PRECISION"
MIXED_PRECISIONS = ("no", "bf16")
ENGINE_VARIABLE = "HF_ROBUST_ENGINE"
OUTPUT_TAIL_CHARS = 3000

# engine -> (shipped accelerate config, the accelerate DistributedType its ranks must report)
ENGINES = {
    "ddp": ("cpu_ddp", "MULTI_GPU"),
    "fsdp2": ("fsdp2", "FSDP"),
    "zero2": ("deepspeed_zero2", "DEEPSPEED"),
    "zero3": ("deepspeed_zero3", "DEEPSPEED"),
}


def _shipped_config(name: str) -> Path:
    return Path(str(importlib.resources.files("hf_robust.accelerate_configs").joinpath(f"{name}.yaml")))


def _cpu_config(engine: str, directory: str, mixed_precision: str) -> Path:
    """The shipped config of `engine` with CPU settings over it: gloo processes (use_cpu), `mixed_precision` ("no"
    unless a test asks for the shipped configs' bf16), and no GPU ids. The launcher's --num_processes sets the
    count."""
    name, _ = ENGINES[engine]
    config = yaml.safe_load(_shipped_config(name).read_text())
    if engine != "ddp":  # the shipped cpu_ddp config is a CPU config already
        config.update({"use_cpu": not engine.startswith("zero")})
        config.pop("gpu_ids", None)
    config["mixed_precision"] = mixed_precision
    path = Path(directory) / f"cpu_{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _engine_environment(engine: str) -> dict[str, str]:
    if not engine.startswith("zero"):
        # `ACCELERATE_USE_CPU`: a plain `Accelerator()` or `TrainingArguments()` in the script joins the gloo group.
        return {ENGINE_VARIABLE: engine, "ACCELERATE_USE_CPU": "true"}
    # With use_cpu, accelerate would skip DeepSpeed and run DDP: DeepSpeed on CPU is its CPU accelerator over gloo
    # (`training_arguments_for_engine`). Its shm op JIT-builds once (~150 s): inside the venv, once per venv.
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
    return {ENGINE_VARIABLE: engine, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": extensions}


def training_arguments_for_engine() -> dict:
    """In a script launched by `run_distributed`: the `TrainingArguments` keywords that put the Trainer on CPU
    processes for the launched engine: `use_cpu=True` (DDP, FSDP2), `ddp_backend="gloo"` (DeepSpeed; in bf16 also
    `use_cpu=True`, without which TrainingArguments refuses bf16 on a machine without a bf16 GPU)."""
    engine = os.environ.get(ENGINE_VARIABLE, "ddp")
    if not engine.startswith("zero"):
        return {"use_cpu": True}
    return {"ddp_backend": "gloo", "use_cpu": True} if launched_in_bf16() else {"ddp_backend": "gloo"}


def launched_in_bf16() -> bool:
    """In a script launched by `run_distributed`: whether it was launched with `mixed_precision="bf16"`, i.e. the
    `bf16` its `TrainingArguments` must take. (TrainingArguments follows the launch even with bf16=False, so a
    script that pinned bf16=False would run bf16 while its arguments said otherwise.)"""
    return os.environ.get(MIXED_PRECISION_VARIABLE, "no") == "bf16"


def _free_port() -> int:
    """A TCP port free right now, so that concurrent runs do not share a gloo rendezvous port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch_failure(message: str, command: list[str], output: str) -> RuntimeError:
    """An error that carries what is needed to reproduce and diagnose a failed run."""
    return RuntimeError(
        f"{message}\ncommand: {shlex.join(command)}\n--- last {OUTPUT_TAIL_CHARS} characters of output ---\n"
        f"{output[-OUTPUT_TAIL_CHARS:]}"
    )


def _wait_or_stop(process: subprocess.Popen, timeout: float) -> bool:
    """Wait for the launcher; past `timeout` seconds stop it and its workers. Returns whether it timed out."""
    try:
        process.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        # torchrun starts each worker in a session of its own, out of reach of a process-group kill; on SIGTERM it
        # stops its workers itself (SIGTERM, then SIGKILL after a grace period) before exiting.
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return True


def run_distributed(
    script: str | os.PathLike,
    *script_args: str,
    num_processes: int = 2,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    engine: str = "ddp",
    mixed_precision: str = "no",
) -> list:
    """Launch `script` on `num_processes` CPU processes with `accelerate launch` and return each rank's result.

    Both 1 and N processes go through the same launcher and config, so a 1-process run is the exact single-process
    counterpart of an N-process run. The environment is offline (`HF_HUB_OFFLINE=1`), one thread per process, with
    `ACCELERATE_USE_CPU=true` (DDP, FSDP2) so that a plain `Accelerator()` in the script joins the gloo group, or
    DeepSpeed's CPU accelerator (ZeRO); a Trainer script takes `training_arguments_for_engine()`.

    Every rank's `save_rank_result` also records the engine accelerate really used, and a run whose ranks report
    another one is an error: accelerate 1.15/1.16 never takes its FSDP path on CPU (it runs DDP without a word), so
    `engine="fsdp2"` on CPU needs a shim of `PartialState._prepare_backend` in the launched processes, passed in
    through `env` (hf-robust's own tests keep theirs in tests/distributed/cpu_fsdp/); without it the run fails here
    instead of passing as DDP.

    Args:
        script: path of the Python script to launch; it must call `save_rank_result` once on every rank.
        script_args: command-line arguments passed to the script.
        num_processes: how many processes to start (at least 1).
        timeout: seconds before the launcher and its workers are stopped.
        env: extra environment variables for the launched processes.
        engine: one of `ENGINES`: "ddp", "fsdp2", "zero2" or "zero3" (DeepSpeed runs with `DS_ACCELERATOR=cpu`).
        mixed_precision: "no" (fp32, the default) or "bf16", the shipped configs' own setting: accelerate's bf16
            autocast (DDP), FSDP2's bf16 `MixedPrecisionPolicy`, DeepSpeed's bf16 mode; a Trainer script takes
            `bf16=launched_in_bf16()`.

    Returns:
        The objects passed to `save_rank_result`, ordered by rank (`len == num_processes`).

    Raises:
        RuntimeError: the launch failed or timed out (the message carries the command and the output tail), the
            ranks that reported do not match `num_processes` (the world size was not what was asked for), or a rank
            ran another engine than `engine`.
        ValueError: bad `num_processes`, `timeout`, `engine` or `mixed_precision`.
    """
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be an integer >= 1, got {num_processes!r}")
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {engine!r}")
    if mixed_precision not in MIXED_PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {mixed_precision!r}")
    script = Path(script)
    if not script.is_file():
        raise FileNotFoundError(f"script {str(script)!r} does not exist or is not a file")

    with tempfile.TemporaryDirectory(prefix="hf_robust_distributed_") as result_dir:
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(_cpu_config(engine, result_dir, mixed_precision)),
            "--num_processes", str(num_processes),
            "--main_process_port", str(_free_port()),
            str(script), *map(str, script_args),
        ]  # fmt: skip
        process_env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            **_engine_environment(engine),
            **(env or {}),
            RESULT_DIR_VARIABLE: result_dir,
        }
        # Output goes to a file, not a pipe: a worker that outlived the launcher would keep a pipe open forever.
        log_path = Path(result_dir) / "output.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, env=process_env, stdout=log, stderr=subprocess.STDOUT)
            timed_out = _wait_or_stop(process, timeout)
        output = log_path.read_text(errors="replace")
        if timed_out:
            raise _launch_failure(f"distributed run timed out after {timeout} s", command, output)
        if process.returncode != 0:
            raise _launch_failure(f"distributed run exited with code {process.returncode}", command, output)

        # Our own files from a fresh directory, so unpickling arbitrary objects is safe.
        records = [torch.load(path, weights_only=False) for path in Path(result_dir).glob("rank*.pt")]

    records.sort(key=lambda record: record["rank"])
    ranks = [record["rank"] for record in records]
    if ranks != list(range(num_processes)):
        raise _launch_failure(
            f"expected results from ranks {list(range(num_processes))}, got {ranks}: "
            "every rank must call save_rank_result once",
            command,
            output,
        )
    for record in records:
        if record["world_size"] != num_processes:
            raise _launch_failure(
                f"rank {record['rank']} ran in a world of {record['world_size']} processes, "
                f"expected {num_processes}",
                command,
                output,
            )
        expected = ENGINES[engine][1]
        if num_processes > 1 and record.get("distributed_type") not in (None, expected):
            raise _launch_failure(
                f"rank {record['rank']} ran accelerate's {record['distributed_type']}, not the {expected} that "
                f"engine={engine!r} asks for"
                + (" (on CPU, FSDP needs the test shim of PartialState._prepare_backend)"
                   if engine == "fsdp2" else ""),
                command,
                output,
            )
    return [record["result"] for record in records]


def _rank_and_world_size() -> tuple[int, int]:
    """This process's rank and world size: from torch.distributed, else the launcher's environment, else 0 and 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    # The trap this catches: without cpu=True, accelerate on a GPU-less machine sets up a process group but
    # reports a single process, so every rank silently trains alone.
    state_module = sys.modules.get("accelerate.state")
    if state_module is not None and state_module.PartialState._shared_state:
        state = state_module.PartialState()
        if (state.process_index, state.num_processes) != (rank, world_size):
            raise RuntimeError(
                f"accelerate sees process {state.process_index} of {state.num_processes} but torch.distributed sees "
                f"rank {rank} of {world_size}; use TrainingArguments(use_cpu=True), PartialState(cpu=True) or "
                "ACCELERATE_USE_CPU=true"
            )
    return rank, world_size


def _distributed_type() -> str | None:
    """The engine accelerate's `AcceleratorState` runs ("MULTI_GPU", "FSDP", "DEEPSPEED", ...), None without one."""
    state_module = sys.modules.get("accelerate.state")
    if state_module is None or not state_module.AcceleratorState._shared_state:
        return None
    distributed_type = state_module.AcceleratorState().distributed_type
    # DDP on CPU processes is MULTI_CPU to accelerate: the harness's DDP engine accepts it (reported as MULTI_GPU).
    return "MULTI_GPU" if distributed_type.name == "MULTI_CPU" else distributed_type.name


def save_rank_result(obj) -> Path:
    """Record `obj` (anything `torch.save` accepts) as this rank's result for `run_distributed` to collect.

    Call it once on every rank of a script launched by `run_distributed`. Returns the path written.
    """
    result_dir = os.environ.get(RESULT_DIR_VARIABLE)
    if not result_dir:
        raise RuntimeError(
            f"{RESULT_DIR_VARIABLE} is not set: save_rank_result only works in a script launched by run_distributed"
        )
    rank, world_size = _rank_and_world_size()
    path = Path(result_dir) / f"rank{rank}.pt"
    # Write then rename, so the harness never reads a half-written file.
    partial_path = path.with_suffix(".partial")
    record = {"rank": rank, "world_size": world_size, "distributed_type": _distributed_type(), "result": obj}
    torch.save(record, partial_path)
    partial_path.replace(path)
    return path


def trainer_report(trainer) -> dict:
    """What a launched training script reports after `trainer.train()`: `final` (the full trained state dict, gathered;
    `{}` on ranks other than 0 where the engine gathers to rank 0 only), `master` (the full weights the optimizer
    steps: `final` itself, except under DeepSpeed with 16-bit weights, where they are the fp32 master copies of the
    trainable parameters, on every rank), `master_dtypes` (the dtypes of this rank's tensors the optimizer steps),
    `engine` (see `hf_robust.sharding.engine_of`), `sharded` (whether the weights were really sharded: FSDP2 DTensors
    or ZeRO-3 partitions) and `logs` (the Trainer's log entries with a loss). A collective: call it on every rank."""
    from ..sharding import engine_of, full_state_dict, has_sharded_weights

    final = full_state_dict(trainer.accelerator, trainer.model_wrapped)
    final = {name: tensor.clone() for name, tensor in final.items()}
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    engine = engine_of(trainer.accelerator)
    trainable = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    master = final
    if engine.startswith("zero"):
        # DeepSpeed's optimizer steps flat partitions of its own (ZeRO-3 lends them to the torch optimizer only inside
        # `step`). In bf16 the model is a bf16 copy, rounded at every step; the fp32 partitions hold the updates.
        from deepspeed.utils import safe_get_full_fp32_param

        zero_optimizer = trainer.accelerator.deepspeed_engine_wrapped.engine.optimizer
        partitions = (zero_optimizer.fp32_partitioned_groups_flat if engine == "zero3"
                      else zero_optimizer.single_partition_of_fp32_groups)
        master_dtypes = {str(partition.dtype) for partition in partitions}
        if any(parameter.dtype != torch.float32 for _, parameter in trainable):
            # Gathered whole on every rank: a collective.
            master = {name: safe_get_full_fp32_param(parameter).detach().cpu().clone()
                      for name, parameter in trainable}
    else:
        master_dtypes = {str(tensor.dtype) for group in trainer.optimizer.param_groups for tensor in group["params"]}
    return {
        "final": final,
        "master": master,
        "master_dtypes": master_dtypes,
        "engine": engine,
        "sharded": has_sharded_weights(model),
        "logs": [entry for entry in trainer.state.log_history if "loss" in entry],
    }


@contextlib.contextmanager
def recorded_linear_dtypes() -> Iterator[dict[str, set[str]]]:
    """While active, record the dtypes of every `nn.Linear` forward: `compute_dtypes` (its output) and
    `weight_dtypes` (its weight: under FSDP2 the all-gathered one, in the policy's param_dtype). A global hook, so it
    also sees the modules that the engines wrap, re-class or replace."""
    dtypes = {"compute_dtypes": set(), "weight_dtypes": set()}

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            dtypes["compute_dtypes"].add(str(output.dtype))
            dtypes["weight_dtypes"].add(str(module.weight.dtype))

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        yield dtypes
    finally:
        handle.remove()


def finish_distributed() -> None:
    """End a launched script: wait for every rank, then leave the process without the interpreter's teardown.

    Every launched script ends with this, after its results are saved. The C++ teardown of a CPU run sometimes
    aborts ("terminate called without an active exception", exit -6) after all the work is done: with a live gloo
    group, and, even after `destroy_process_group()`, ZeRO-3 runs that saved DeepSpeed checkpoints (in 2 of 3
    fresh-clone `make test` runs, 2026-12-04/05; which thread is left joinable was not found). So once every
    rank has passed the barrier, the streams are flushed and the process exits with status 0 at once (`os._exit`);
    an error before that still fails the run. A script launched by `run_distributed` whose command already ended
    with barrier -> destroy_process_group (every `hf-robust` command does) exits the same way: its teardown aborted
    too (ZeRO-3 `hf-robust cat`, fresh-clone `make test`, 2026-12-05). Does nothing elsewhere (e.g. in the pytest
    process itself).
    """
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    if initialized:
        torch.distributed.barrier()
    if initialized or os.environ.get(RESULT_DIR_VARIABLE):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
