"""The frozen reference model of NPO, the KL retain loss and RMU: built without touching the policy, and prepared for
the engine the way trl prepares DPO's reference (DeepSpeed: its own inference engine, ZeRO-3 partitioned; FSDP:
sharded like the policy)."""

import copy

import torch

from ..sharding import engine_of, is_zero3_partitioned, refuse_before_work


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model`, frozen, that shares nothing with it.

    accelerate's `dispatch_model` (`device_map` models) puts wrappers of the ORIGINAL model's `.to`/`.cuda` in the
    instance's `__dict__`; a deep copy keeps those closures, so moving the copy would move the policy. They are
    dropped from the copy (its modules keep their own deep-copied dispatch hooks and devices).
    """
    if any(is_zero3_partitioned(parameter) for parameter in model.parameters()):
        raise refuse_before_work(
            "A deep-copied reference of a model loaded under DeepSpeed ZeRO-3 (zero3_init)",
            "its parameters hold only this rank's partition, so a copy would be partial",
            "`ref_model=` (a model id or a separately loaded model), a PEFT model (its base is the reference), "
            "or an objective without a reference",
        )
    reference = copy.deepcopy(model)
    for name, value in list(vars(reference).items()):
        if getattr(value, "_accelerate_added_attribute", False):
            delattr(reference, name)
    return reference.eval().requires_grad_(False)


def is_dispatched(model: torch.nn.Module) -> bool:
    """Whether `model` was placed by accelerate's `device_map` (it must not be moved as a whole)."""
    return bool(getattr(model, "hf_device_map", None))


def prepare_reference(reference: torch.nn.Module, trainer, copied: bool) -> torch.nn.Module:
    """`reference` ready for `trainer`'s engine: DeepSpeed and FSDP through trl's `prepare_deepspeed` /
    `prepare_fsdp`; a `device_map` model where it is; otherwise moved to the training device. A reference copied
    from an fp32 model trained with bf16 autocast is kept in bf16 (its forwards run under autocast anyway)."""
    reference.eval().requires_grad_(False)
    if copied and trainer.args.bf16 and not is_dispatched(reference):
        reference.to(torch.bfloat16)
    engine = engine_of(trainer.accelerator)
    if engine.startswith("zero"):
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(reference, trainer.accelerator)
    if engine.startswith("fsdp"):
        from trl.models.utils import prepare_fsdp

        return prepare_fsdp(reference, trainer.accelerator)
    if not is_dispatched(reference):
        reference.to(trainer.args.device)
    return reference
