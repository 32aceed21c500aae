"""Test-only shim: let accelerate take its FSDP2 path on CPU processes (gloo), so FSDP2 can be tested without GPUs.

accelerate 1.15/1.16 decides the distributed type in `PartialState._prepare_backend`; on CPU it returns MULTI_CPU,
and `AcceleratorState` switches to FSDP only from MULTI_GPU-like types, so an FSDP config on CPU silently runs DDP.
This file is put on PYTHONPATH of the launched workers only (tests/distributed/engines.py): it initialises the gloo
group itself and reports MULTI_GPU; `ACCELERATE_TORCH_DEVICE=cpu` keeps the device on CPU. Every test that uses it
asserts that accelerate then really ran FSDP (DistributedType.FSDP, DTensor parameters): should a new accelerate
change this path, the tests fail instead of passing on DDP.
"""

import os

SUPPORTED_ACCELERATE = ("1.15.", "1.16.")


def _install() -> None:
    import accelerate
    import torch.distributed
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if not accelerate.__version__.startswith(SUPPORTED_ACCELERATE):
        raise RuntimeError(f"the CPU FSDP test shim is written for accelerate {SUPPORTED_ACCELERATE}, "
                           f"found {accelerate.__version__}: check PartialState._prepare_backend and update it")

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="gloo")
        return "gloo", DistributedType.MULTI_GPU

    PartialState._prepare_backend = prepare_backend


# Only in the launched workers (the launcher has no LOCAL_RANK) and only when a test asked for it.
if os.environ.get("HF_ROBUST_CPU_FSDP_SHIM") == "1" and "LOCAL_RANK" in os.environ:
    _install()
