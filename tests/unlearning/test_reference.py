"""The frozen reference: a copy that shares nothing with the policy (also for `device_map` models), prepared for the
engine, in bf16 when training in bf16, and refused before any work where it cannot be built."""

import pytest
import torch
from accelerate import dispatch_model

from hf_robust.testing import tiny_causal_lm
from hf_robust.unlearning.reference import frozen_copy, is_dispatched

from .helpers import make_trainer


def dispatched_model():
    """A tiny Llama placed by accelerate over two CPU "devices" (a device_map dict; hooks forced on, as a
    multi-device map would add them), with its `.to` wrapped as `dispatch_model` wraps it."""
    model, tokenizer = tiny_causal_lm("llama")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = dispatch_model(model, device_map=device_map, force_hooks=True)
    model.hf_device_map = device_map
    return model, tokenizer


def placement(model):
    return {name: (parameter.device, parameter.dtype) for name, parameter in model.named_parameters()}


def test_device_map_reference_does_not_move_the_policy(tmp_path):
    model, tokenizer = dispatched_model()
    assert getattr(model.to, "_accelerate_added_attribute", False)  # the wrapper a plain deep copy would keep
    before = placement(model)
    trainer = make_trainer(tmp_path, (model, tokenizer), method="npo")
    assert placement(model) == before
    assert is_dispatched(trainer.ref_model) and trainer.ref_model is not model
    # Moving or casting the reference must not reach the policy (the bug: the copy's `.to` was the policy's).
    trainer.ref_model.to(torch.float16)
    assert placement(model) == before
    assert all(parameter.dtype == torch.float16 for parameter in trainer.ref_model.parameters())


def test_frozen_copy_shares_no_parameter_and_is_frozen():
    model, _ = tiny_causal_lm("llama")
    reference = frozen_copy(model)
    policy = {parameter.data_ptr() for parameter in model.parameters()}
    assert not policy & {parameter.data_ptr() for parameter in reference.parameters()}
    assert not any(parameter.requires_grad for parameter in reference.parameters())
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert not reference.training


def test_reference_is_kept_in_bf16_when_training_in_bf16(tmp_path):
    trainer = make_trainer(tmp_path, method="npo", bf16=True)
    assert {parameter.dtype for parameter in trainer.ref_model.parameters()} == {torch.bfloat16}
    assert {parameter.dtype for parameter in trainer.model.parameters()} == {torch.float32}
    trainer.train()  # the bf16 reference runs under the training autocast


def test_zero3_partitioned_model_copy_is_refused_before_any_work():
    model, _ = tiny_causal_lm("llama")
    next(model.parameters()).ds_id = 0  # how DeepSpeed marks a ZeRO-3 partitioned parameter
    with pytest.raises(ValueError, match=r"ZeRO-3 .* is not supported: .* partition.* Use `ref_model=`"):
        frozen_copy(model)
