"""What every method needs to run under accelerate's engines (DDP, FSDP2, DeepSpeed ZeRO-2/3): which engine is
running, full (gathered) views of sharded parameters, full state dicts, and refusals that come before any work.

Every function that gathers is a collective: all ranks must call it, the same number of times, in the same order.
"""

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

ENGINE_NAMES = ("single", "ddp", "fsdp1", "fsdp2", "zero1", "zero2", "zero3")
ENGINE_LABELS = {"single": "a single process", "ddp": "DDP", "fsdp1": "FSDP1", "fsdp2": "FSDP2",
                 "zero1": "DeepSpeed ZeRO-1", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3"}
# Engines whose every forward gathers weights from all ranks: a forward on one rank alone waits forever.
SHARDED_WEIGHT_ENGINES = ("fsdp1", "fsdp2", "zero3")


def engine_of(accelerator) -> str:
    """The engine an `accelerate.Accelerator` runs: one of `ENGINE_NAMES`."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type == DistributedType.DEEPSPEED:
        return f"zero{state.deepspeed_plugin.zero_stage}"
    if state.distributed_type == DistributedType.FSDP:
        return "fsdp2" if state.fsdp_plugin.fsdp_version == 2 else "fsdp1"
    return "ddp" if state.num_processes > 1 else "single"


def is_zero3_partitioned(parameter: Tensor) -> bool:
    """Whether `parameter` is a DeepSpeed ZeRO-3 parameter (its `.data` holds only this rank's partition)."""
    return hasattr(parameter, "ds_id")


def is_dtensor(tensor: Tensor) -> bool:
    """Whether `tensor` is a `DTensor` (FSDP2 parameters, their gradients and `empty_like` copies)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def has_sharded_weights(model: nn.Module) -> bool:
    """Whether `model`'s weights are sharded across ranks (FSDP2 DTensors or ZeRO-3 partitions), judged by its input
    embeddings: then each forward is a collective that every rank must run."""
    weight = model.get_input_embeddings().weight
    return is_dtensor(weight) or is_zero3_partitioned(weight)


@contextlib.contextmanager
def full_tensor(parameter: Tensor) -> Iterator[Tensor]:
    """Yield the whole of `parameter`, read-only, detached: gathered from the ranks under FSDP2 (DTensor) and ZeRO-3
    (`deepspeed.zero.GatheredParameters`), the parameter itself otherwise. A collective when sharded."""
    if is_dtensor(parameter):
        yield parameter.detach().full_tensor()
    elif is_zero3_partitioned(parameter):
        import deepspeed
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        if parameter.ds_status == ZeroParamStatus.AVAILABLE:
            # Already gathered by an enclosing forward (e.g. a hook inside it): gathering again would re-partition
            # it on exit under the module that still uses it.
            yield parameter.detach()
            return
        with deepspeed.zero.GatheredParameters([parameter], modifier_rank=None):
            yield parameter.detach()
    else:
        yield parameter.detach()


@contextlib.contextmanager
def whole_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """While active, a model loaded partitioned (DeepSpeed ZeRO-3 `zero3_init`, before the engine wraps it) holds its
    whole weights on every rank, read-only; any other model as it is. A collective when partitioned."""
    partitioned = [parameter for parameter in model.parameters() if is_zero3_partitioned(parameter)]
    if not partitioned:
        yield model
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield model


def is_partitioned(model: nn.Module) -> bool:
    """Whether `model` was loaded partitioned by DeepSpeed ZeRO-3 (`zero3_init`)."""
    return any(is_zero3_partitioned(parameter) for parameter in model.parameters())


def local_tensor(tensor: Tensor) -> Tensor:
    """This rank's part of `tensor`: the local shard of a DTensor, the tensor itself otherwise."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def inner_module(module: nn.Module) -> nn.Module:
    """The model inside a DeepSpeed engine (e.g. a reference prepared by trl's `prepare_deepspeed`), else `module`."""
    return module.module if type(module).__name__ == "DeepSpeedEngine" else module


def full_state_dict(accelerator, model: nn.Module) -> dict[str, Tensor]:
    """The full state dict of a prepared model on the main process (CPU tensors under FSDP2; ZeRO-3 needs
    `zero3_save_16bit_model`), `{}` on the other ranks where the engine gathers to rank 0 only. A collective."""
    state_dict = accelerator.get_state_dict(model)
    return {} if state_dict is None else {name: tensor.detach() for name, tensor in state_dict.items()}


def unsharded_model(accelerator, model: nn.Module) -> nn.Module | None:
    """A plain copy of a prepared model whose weights are sharded (FSDP2, ZeRO-3), for end-of-run evaluation on the
    main process alone: built from its config (and PEFT config) and loaded with the gathered full state dict, on
    `accelerator.device`. None on the other ranks, which must wait (e.g. at a barrier) while the main process works.
    A collective: every rank calls it."""
    state = full_state_dict(accelerator, model)
    if not accelerator.is_main_process:
        return None
    from transformers import AutoModelForCausalLM

    unwrapped = accelerator.unwrap_model(model)
    base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
    # accelerate's FSDP2 class (FSDP<Model>) is a subclass of the model's own class.
    model_class = next((cls for cls in type(base).__mro__ if cls.__module__.startswith("transformers.models.")),
                       None)
    plain = (model_class(base.config) if model_class is not None
             else AutoModelForCausalLM.from_config(base.config))
    if base is not unwrapped:
        from peft import get_peft_model

        plain = get_peft_model(plain, unwrapped.peft_config[unwrapped.active_adapter])
    dtype = next(iter(state.values())).dtype
    plain.to(dtype=dtype).load_state_dict(state, strict=True)
    return plain.to(accelerator.device).eval()


def on_main_process(accelerator, model: nn.Module, work):
    """`work(plain)` on the main process alone, over a plain copy of a prepared model with sharded weights
    (`unsharded_model`), while the other ranks wait; its (picklable) result is broadcast to every rank. A collective:
    every rank calls it. For end-of-run and callback evaluations that must not run inside the engine's collectives."""
    import torch.distributed

    plain = unsharded_model(accelerator, model)
    result = [work(plain) if accelerator.is_main_process else None]
    torch.distributed.broadcast_object_list(result, src=0)
    return result[0]


def load_full_state_dict(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a full (unsharded) state dict, the same on every rank, into `module` as it is held: plain tensors, or
    FSDP2's DTensors (each rank keeps its shard of the full tensor). Not for ZeRO-3 partitions (DeepSpeed resumes
    from its own checkpoint)."""
    from torch.distributed.tensor import distribute_tensor

    targets = module.state_dict()
    unexpected = sorted(set(state) - set(targets))
    missing = sorted(set(targets) - set(state))
    if unexpected or missing:
        raise KeyError(f"state dict does not match the module: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, target in targets.items():
        value = state[name].to(device=target.device, dtype=target.dtype)
        if is_dtensor(target):
            value = distribute_tensor(value, target.device_mesh, target.placements)
        target.detach().copy_(value)


def gather_read_in_parent(module: nn.Module, attribute: str) -> None:
    """ZeRO-3: DeepSpeed gathers a module's own weights before its forward; a module that reads a child's weight
    itself (CLIP's embeddings read `position_embedding.weight.shape`) can find it empty or still in flight from a
    prefetch. Registering each such weight as an external parameter of the reading module makes DeepSpeed gather it
    (and wait for it) first. No-op for weights that are not ZeRO-3 partitions."""
    partitioned = [(parent, getattr(parent, attribute).weight) for parent in module.modules()
                   if isinstance(getattr(parent, attribute, None), nn.Module)
                   and is_zero3_partitioned(getattr(parent, attribute).weight)]
    if partitioned:
        import deepspeed

        for parent, weight in partitioned:
            deepspeed.zero.register_external_parameter(parent, weight)


def refuse_before_work(combination: str, why: str, instead: str) -> ValueError:
    """The error for an engine x method x precision combination hf-robust cannot run: what, why, and what works."""
    return ValueError(f"{combination} is not supported: {why}. Use {instead}.")
