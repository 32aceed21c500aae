"""Run a script under `accelerate launch` on CPU processes and collect what each rank reports.

The test side calls `run_distributed(script, ...)`; the launched script calls `save_rank_result(obj)` on every rank
and ends with `finish_distributed()`. A launched script looks like:

    from hf_robust.testing import finish_distributed, save_rank_result

    def main():
        ...
        save_rank_result({"weight": model.weight.detach()})

    if __name__ == "__main__":
        main()
        finish_distributed()  # only on success: after an exception the other rank would wait in the barrier
"""

import importlib.resources
import os
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed

RESULT_DIR_VARIABLE = "HF_ROBUST_RESULT_DIR"
OUTPUT_TAIL_CHARS = 3000


def _cpu_ddp_config() -> Path:
    """The packaged accelerate config that starts `num_processes` CPU processes talking over gloo."""
    return Path(str(importlib.resources.files("hf_robust.accelerate_configs").joinpath("cpu_ddp.yaml")))


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
) -> list:
    """Launch `script` on `num_processes` CPU processes with `accelerate launch` and return each rank's result.

    Both 1 and N processes go through the same launcher and config, so a 1-process run is the exact single-process
    counterpart of an N-process run. The environment is offline (`HF_HUB_OFFLINE=1`), one thread per process, with
    `ACCELERATE_USE_CPU=true` so that a plain `Accelerator()` in the script joins the gloo group.

    Args:
        script: path of the Python script to launch; it must call `save_rank_result` once on every rank.
        script_args: command-line arguments passed to the script.
        num_processes: how many processes to start (at least 1).
        timeout: seconds before the launcher and its workers are stopped.
        env: extra environment variables for the launched processes.

    Returns:
        The objects passed to `save_rank_result`, ordered by rank (`len == num_processes`).

    Raises:
        RuntimeError: the launch failed or timed out (the message carries the command and the output tail), or the
            ranks that reported do not match `num_processes` (the world size was not what was asked for).
    """
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be an integer >= 1, got {num_processes!r}")
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    script = Path(script)
    if not script.is_file():
        raise FileNotFoundError(f"script {str(script)!r} does not exist or is not a file")

    with tempfile.TemporaryDirectory(prefix="hf_robust_distributed_") as result_dir:
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(_cpu_ddp_config()),
            "--num_processes", str(num_processes),
            "--main_process_port", str(_free_port()),
            str(script), *map(str, script_args),
        ]  # fmt: skip
        process_env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "ACCELERATE_USE_CPU": "true",
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
        records = [torch.load(path, weights_only=False) for path in sorted(Path(result_dir).glob("rank*.pt"))]

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
    torch.save({"rank": rank, "world_size": world_size, "result": obj}, partial_path)
    partial_path.replace(path)
    return path


def finish_distributed() -> None:
    """End a launched script cleanly: wait for every rank, then destroy the process group.

    Exiting with a live gloo group sometimes aborts at interpreter exit ("terminate called without an active
    exception"), so every launched script ends with this. Safe to call when torch.distributed is not initialized.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
