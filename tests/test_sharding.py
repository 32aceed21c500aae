"""hf_robust.sharding without processes: engine names, plain tensors passing through, refusals. The gathering paths
run under real engines in tests/distributed/ (test_engines.py, test_commands.py)."""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from hf_robust.sharding import (
    ENGINE_NAMES, engine_of, full_tensor, has_sharded_weights, inner_module, is_dtensor, is_partitioned,
    is_zero3_partitioned, local_tensor, refuse_before_work, whole_parameters,
)
from hf_robust.testing import tiny_causal_lm


def accelerator(distributed_type, processes=2, stage=None, fsdp_version=None):
    state = SimpleNamespace(distributed_type=distributed_type, num_processes=processes,
                            deepspeed_plugin=SimpleNamespace(zero_stage=stage),
                            fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version))
    return SimpleNamespace(state=state)


@pytest.mark.parametrize(("state", "name"), [
    (accelerator(DistributedType.NO, processes=1), "single"),
    (accelerator(DistributedType.MULTI_CPU), "ddp"),
    (accelerator(DistributedType.MULTI_GPU), "ddp"),
    (accelerator(DistributedType.FSDP, fsdp_version=2), "fsdp2"),
    (accelerator(DistributedType.FSDP, fsdp_version=1), "fsdp1"),
    (accelerator(DistributedType.DEEPSPEED, stage=2), "zero2"),
    (accelerator(DistributedType.DEEPSPEED, stage=3), "zero3"),
])
def test_engine_names(state, name):
    assert engine_of(state) == name and name in ENGINE_NAMES


def test_plain_tensors_and_models_pass_through():
    model, _ = tiny_causal_lm("llama")
    weight = model.get_input_embeddings().weight
    with full_tensor(weight) as whole:
        assert torch.equal(whole, weight) and not whole.requires_grad
    assert local_tensor(weight) is weight and inner_module(model) is model
    assert not (is_dtensor(weight) or is_zero3_partitioned(weight) or has_sharded_weights(model)
                or is_partitioned(model))
    with whole_parameters(model) as same:
        assert same is model


def test_a_zero3_parameter_is_recognised_by_its_deepspeed_id():
    model, _ = tiny_causal_lm("llama")
    model.get_input_embeddings().weight.ds_id = 3
    assert is_zero3_partitioned(model.get_input_embeddings().weight)
    assert has_sharded_weights(model) and is_partitioned(model)


def test_refusal_names_the_combination_why_and_what_to_use():
    error = refuse_before_work("X under FSDP2", "it cannot", "DDP")
    assert isinstance(error, ValueError) and str(error) == "X under FSDP2 is not supported: it cannot. Use DDP."


def test_load_full_state_dict_loads_a_plain_module_and_names_mismatched_keys():
    from hf_robust.sharding import load_full_state_dict

    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    load_full_state_dict(target, source.state_dict())
    assert all(torch.equal(target.state_dict()[name], value) for name, value in source.state_dict().items())
    with pytest.raises(KeyError, match=r"missing \['bias'\], unexpected \['offset'\]"):
        load_full_state_dict(target, {"weight": source.weight, "offset": source.bias})


def test_gather_read_in_parent_leaves_unpartitioned_modules_alone():
    from hf_robust.sharding import gather_read_in_parent

    module = torch.nn.Module()
    module.position_embedding = torch.nn.Embedding(4, 2)
    gather_read_in_parent(module, "position_embedding")  # not a ZeRO-3 partition: nothing to register
    assert not hasattr(module, "_external_params")
