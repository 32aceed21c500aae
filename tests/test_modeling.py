"""hf_robust.modeling: the embedding-perturbation hook and eval_mode."""

import pytest
import torch

from hf_robust.modeling import added_to_input_embeddings, eval_mode, is_peft_model
from hf_robust.testing import tiny_causal_lm


def test_delta_is_added_inside_the_forward_and_the_hook_is_removed_after():
    model, tokenizer = tiny_causal_lm("llama")
    ids = tokenizer(["Name a colour."], return_tensors="pt")["input_ids"]
    embedding = model.get_input_embeddings()
    delta = torch.randn(*ids.shape, embedding.embedding_dim)
    with torch.no_grad():
        expected = model(inputs_embeds=embedding(ids) + delta).logits
        with added_to_input_embeddings(model, delta) as applied:
            perturbed = model(input_ids=ids).logits
        clean = model(input_ids=ids).logits
    torch.testing.assert_close(perturbed, expected)
    assert applied == [True] and not embedding._forward_hooks
    assert not torch.allclose(clean, perturbed)


def test_only_with_grad_skips_no_grad_forwards():
    model, tokenizer = tiny_causal_lm("llama")
    ids = tokenizer(["Name a colour."], return_tensors="pt")["input_ids"]
    delta = torch.ones(*ids.shape, model.config.hidden_size)
    with added_to_input_embeddings(model, delta, only_with_grad=True) as applied:
        with torch.no_grad():
            model(input_ids=ids)
        assert applied == []
        model(input_ids=ids)
    assert applied == [True]


def test_first_forward_only_perturbs_the_prefill_and_not_the_decoding_steps():
    model, tokenizer = tiny_causal_lm("llama")
    ids = tokenizer(["Name a colour."], return_tensors="pt")["input_ids"]
    delta = torch.randn(*ids.shape, model.config.hidden_size)
    with torch.no_grad():
        with added_to_input_embeddings(model, delta, first_forward_only=True) as applied:
            prefill = model(input_ids=ids).logits
            later = model(input_ids=ids[:, :1]).logits  # a decoding step's shape: untouched, and no shape error
        expected = model(inputs_embeds=model.get_input_embeddings()(ids) + delta).logits
        clean = model(input_ids=ids[:, :1]).logits
    torch.testing.assert_close(prefill, expected)
    torch.testing.assert_close(later, clean)
    assert applied == [True]


def test_a_shape_mismatch_is_an_error_naming_both_shapes_and_the_hook_goes():
    model, tokenizer = tiny_causal_lm("llama")
    ids = tokenizer(["Name a colour."], return_tensors="pt")["input_ids"]
    delta = torch.zeros(1, ids.shape[1] + 2, model.config.hidden_size)
    with pytest.raises(ValueError, match=r"input embeddings have shape .* but the perturbation has"):
        with added_to_input_embeddings(model, delta):
            model(input_ids=ids)
    assert not model.get_input_embeddings()._forward_hooks


def test_eval_mode_restores_each_flag_also_after_an_error():
    model, _ = tiny_causal_lm("llama")
    model.train()
    model.model.layers[0].eval()
    flags = [module.training for module in model.modules()]
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not any(module.training for module in model.modules())
            raise RuntimeError("boom")
    assert [module.training for module in model.modules()] == flags


def test_is_peft_model_tells_an_adapter_from_its_base():
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_causal_lm("llama", seed=0)
    assert not is_peft_model(model)
    assert is_peft_model(get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])))
