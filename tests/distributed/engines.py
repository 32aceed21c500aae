"""Run a launched script under each engine on 2 CPU processes: `run_on(engine, script, ...)` adds what the engine
needs on CPU (the FSDP shim for "fsdp2"); everything else is `hf_robust.testing.run_distributed`."""

import os
from pathlib import Path

from hf_robust.testing import run_distributed

SCRIPTS = Path(__file__).parent / "scripts"
SHIM = Path(__file__).parent / "cpu_fsdp"
SHARDED_ENGINES = ("fsdp2", "zero2", "zero3")


def engine_environment(engine: str) -> dict[str, str]:
    if engine != "fsdp2":
        return {}
    path = os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")]))
    return {"HF_ROBUST_CPU_FSDP_SHIM": "1", "PYTHONPATH": path, "ACCELERATE_TORCH_DEVICE": "cpu"}


def run_on(engine: str, script, *script_args: str, num_processes: int = 2, timeout: float = 600, env=None,
           mixed_precision: str = "no") -> list:
    environment = {**engine_environment(engine), **(env or {})}
    return run_distributed(script, *script_args, num_processes=num_processes, timeout=timeout, env=environment,
                           engine=engine, mixed_precision=mixed_precision)
