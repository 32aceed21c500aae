"""Helpers on models that every method shares: evaluation mode with each module's flag restored, a perturbation
added to the input embeddings inside the model's own forward, and whether a model is a peft adapter.

The perturbation goes in through a forward hook on `get_input_embeddings()`, not by calling the embedding and
passing `inputs_embeds`: the forward then runs through the root module, so sharded engines (FSDP2's lazy init and
all-gathers, DeepSpeed ZeRO-3's parameter fetches) see an ordinary forward.
"""

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode (dropout off); on exit, also on error, restore each submodule's own train/eval flag."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


@contextlib.contextmanager
def added_to_input_embeddings(model: nn.Module, delta: Tensor, only_with_grad: bool = False,
                              first_forward_only: bool = False) -> Iterator[list]:
    """While active, every forward of `model`'s input embedding module returns `embedding + delta`.

    Args:
        model: a model with `get_input_embeddings()` (PEFT models included).
        delta: Tensor, shape (batch, seq, hidden); cast to the embeddings' dtype when added. Its shape must match
            the embedded ids (an error names both shapes otherwise, e.g. for prompt-learning PEFT that adds tokens).
        only_with_grad: add delta only in forwards run with gradients enabled (skips e.g. trl's reference forward
            under `no_grad`).
        first_forward_only: add delta to the first forward only: generation's prefill, whose positions delta
            covers; each decoding step after it embeds only the new token.

    Yields:
        A list that gets one entry per forward that delta was added to (to check that it was).
    """
    applied = []

    def add_delta(module, args, output):
        if (only_with_grad and not torch.is_grad_enabled()) or (first_forward_only and applied):
            return None
        if output.shape != delta.shape:
            raise ValueError(f"the input embeddings have shape {tuple(output.shape)}, but the perturbation has "
                             f"{tuple(delta.shape)}; models that add tokens (e.g. prompt-learning PEFT) are not "
                             "supported.")
        applied.append(True)
        return output + delta.to(output.dtype)

    handle = model.get_input_embeddings().register_forward_hook(add_delta)
    try:
        yield applied
    finally:
        handle.remove()


def is_peft_model(model) -> bool:
    """Whether `model` is a `peft.PeftModel` (False when peft is not installed)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)
