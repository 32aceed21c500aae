"""Tests for hf_robust.unlearning.rmu: the steered layer, the captured activations, the trained parameters."""

import pytest
import torch

from hf_robust.testing import tiny_causal_lm
from hf_robust.unlearning.rmu import captured_output, decoder_layers, select_rmu_parameters


def test_the_hook_captures_the_layer_output_and_goes_away():
    model, tokenizer = tiny_causal_lm("llama", seed=0)
    layers = decoder_layers(model)
    assert layers is model.model.layers
    input_ids = torch.tensor([tokenizer("a photo of a cat")["input_ids"]])
    model(input_ids=input_ids, output_hidden_states=True)  # transformers installs its own capturing hooks once
    hooks = dict(layers[0]._forward_hooks)
    with captured_output(layers[0]) as captured:
        hidden = model(input_ids=input_ids, output_hidden_states=True).hidden_states
    # hidden_states[0] is the embeddings, [1] the first layer's output (the last one is normed: not a layer output).
    assert len(captured) == 1 and torch.equal(captured[0], hidden[1])
    model(input_ids=input_ids)
    assert len(captured) == 1 and dict(layers[0]._forward_hooks) == hooks


def test_only_the_matched_parameters_stay_trainable():
    model, _ = tiny_causal_lm("llama", seed=0)
    select_rmu_parameters(model, 1, r"layers\.1\.mlp\.down_proj\.weight$")
    assert [name for name, parameter in model.named_parameters() if parameter.requires_grad] == [
        "model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match="rmu_layer"):
        select_rmu_parameters(model, len(model.model.layers), r"down_proj")
    with pytest.raises(ValueError, match="rmu_param_regex"):
        select_rmu_parameters(model, 0, r"nothing")
