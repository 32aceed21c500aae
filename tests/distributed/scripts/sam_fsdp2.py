"""SAM's building blocks on a tiny Llama sharded with plain FSDP2 (`fully_shard`, gloo): the ascent on local shards
against the same ascent on the unsharded model, the exact restore, and the restore buffer's size.

Every rank sees the same batch, so the reduce-scattered (averaged) gradient equals the unsharded gradient.
"""

import copy

import torch
from accelerate import PartialState
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from hf_robust.testing import finish_distributed, save_rank_result, tiny_causal_lm
from hf_robust.unlearning.smoothing import ascend_along_gradient, parameter_buffers, restored

RHO = 0.5


def backward(model, ids):
    model(input_ids=ids, labels=ids).loss.backward()


def full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def main() -> None:
    state = PartialState(cpu=True)
    torch.manual_seed(0)
    model, _ = tiny_causal_lm("llama")
    unsharded = copy.deepcopy(model)
    ids = torch.randint(3, 64, (2, 8), generator=torch.Generator().manual_seed(1))

    backward(unsharded, ids)
    reference = [parameter for parameter in unsharded.parameters()]
    norm = torch.sqrt(sum(parameter.grad.pow(2).sum() for parameter in reference))
    expected_eps = {name: RHO * parameter.grad / norm for name, parameter in unsharded.named_parameters()}

    mesh = init_device_mesh("cpu", (state.num_processes,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    backward(model, ids)
    parameters = list(model.parameters())
    names = [name for name, _ in model.named_parameters()]
    before = {name: full(parameter.detach()).clone() for name, parameter in zip(names, parameters)}
    buffers = parameter_buffers(parameters)
    with restored(parameters, buffers):
        sharded_norm = ascend_along_gradient(parameters, RHO)
        eps = {name: full(parameter.detach()) - before[name] for name, parameter in zip(names, parameters)}
    after = {name: full(parameter.detach()) for name, parameter in zip(names, parameters)}
    save_rank_result({
        "dtensor": all(type(parameter).__name__ == "DTensor" for parameter in parameters),
        "norm": float(sharded_norm), "expected_norm": float(norm),
        "eps_error": max(float((eps[name] - expected_eps[name]).abs().max()) for name in names),
        "eps_size": max(float(value.abs().max()) for value in expected_eps.values()),
        "restored_exactly": all(torch.equal(after[name], before[name]) for name in names),
        "buffer_elements": sum(buffer.numel() for buffer in buffers),
        "local_elements": sum(parameter.to_local().numel() for parameter in parameters),
        "full_elements": sum(parameter.numel() for parameter in parameters),
    })


if __name__ == "__main__":
    main()
    finish_distributed()
