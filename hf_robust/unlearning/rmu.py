"""RMU's hold on the model (Li et al. 2024, WMDP): the decoder layer whose activations it steers, a hook that
captures them, and the parameters it trains."""

import contextlib
import re

import torch


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layer list of a causal LM (the first ModuleList as long as the config's layer count)."""
    count = model.config.get_text_config().num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"found no list of {count} decoder layers in {type(model).__name__} (needed by method='rmu').")


@contextlib.contextmanager
def captured_output(module: torch.nn.Module):
    """Record `module`'s output hidden states (batch, seq, hidden) into the yielded list while active."""
    captured = []

    def hook(_, __, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def select_rmu_parameters(model, layer: int, parameter_regex: str) -> None:
    """Leave trainable only the trainable parameters whose names match `parameter_regex`; check `layer` exists."""
    layers = decoder_layers(model)
    if layer >= len(layers):
        raise ValueError(f"`rmu_layer` must be < the number of decoder layers ({len(layers)}), got {layer}.")
    pattern = re.compile(parameter_regex)
    chosen = [name for name, parameter in model.named_parameters() if parameter.requires_grad and pattern.search(name)]
    if not chosen:
        raise ValueError(f"`rmu_param_regex` {pattern.pattern!r} matches no trainable parameter of the model.")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in chosen)
