"""Tests for hf_robust.testing.language: the tiny tokenizer and causal LMs work with the libraries that consume them,
are seeded, are identical across processes and reject bad arguments."""

import subprocess
import sys

import pytest
import torch

from hf_robust.testing import diffusion, language, retrieval, tiny_causal_lm, tiny_tokenizer

from .helpers import state_dicts_equal

ARCHS = ["llama", "qwen2", "gpt2"]


# ---------------------------------------------------------------- tiny_tokenizer


def test_tokenizer_round_trips_any_text():
    tokenizer = tiny_tokenizer()
    for text in ["Sure, here is how to bake bread.", "Ünïcödé, 日本語 and emoji 🤗!\n\ttabs", "   ", "x"]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_token_id_zero_is_an_ordinary_text_token():
    tokenizer = tiny_tokenizer()
    assert 0 not in tokenizer.all_special_ids
    assert tokenizer.decode([0]).strip() != ""
    assert 0 in tokenizer("Hello! How can I help?")["input_ids"]


def test_tokenizer_special_tokens_are_distinct_last_and_not_added_by_encoding():
    tokenizer = tiny_tokenizer()
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert len(special) == 3 and None not in special
    assert special == set(range(len(tokenizer) - 3, len(tokenizer)))
    assert tokenizer.eos_token == "<|im_end|>"
    assert not special & set(tokenizer("Hello there")["input_ids"])
    assert 300 <= len(tokenizer) <= 600
    assert tokenizer.padding_side == "right" and tokenizer.model_max_length == 512


def test_tokenizer_is_a_fresh_object_each_call():
    first, second = tiny_tokenizer(), tiny_tokenizer()
    first.add_tokens(["<|new|>"])
    assert len(second) == len(first) - 1 == len(tiny_tokenizer())


def test_tokenizers_are_identical_across_processes():
    # Tests launched in separate processes (accelerate launch) must agree on every token id.
    code = (
        "from hf_robust.testing import diffusion, language, retrieval;"
        "print(language._byte_level_bpe_json() + str(diffusion._clip_vocab_and_merges())"
        " + retrieval._wordpiece_vocab_json())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = (language._byte_level_bpe_json() + str(diffusion._clip_vocab_and_merges())
            + retrieval._wordpiece_vocab_json())
    assert result.stdout.strip() == here


def test_chat_template_masks_exactly_the_assistant_reply():
    tokenizer = tiny_tokenizer()
    messages = [
        {"role": "user", "content": "Tell me how to bake bread."},
        {"role": "assistant", "content": "Sure, here is a recipe."},
    ]
    encoded = tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    masked = [token for token, flag in zip(encoded["input_ids"], encoded["assistant_masks"]) if flag]
    assert tokenizer.decode(masked) == "Sure, here is a recipe.<|im_end|>"
    text = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    # No default system turn is inserted.
    assert text == "<|im_start|>user\nTell me how to bake bread.<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------- tiny_causal_lm


@pytest.mark.parametrize("arch", ARCHS)
def test_causal_lm_forward_backward_and_config(arch):
    model, tokenizer = tiny_causal_lm(arch)
    batch = tokenizer(["Hello!", "Sure, here is how to bake bread."], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    output = model(**batch, labels=labels)
    assert output.logits.shape == (*batch["input_ids"].shape, len(tokenizer))
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.dtype == torch.float32 and model.device.type == "cpu" and not model.training
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        assert getattr(model.config, name) == getattr(model.generation_config, name) == getattr(tokenizer, name)
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_causal_lm_same_seed_gives_identical_weights_and_leaves_global_rng_alone(arch):
    rng_state = torch.get_rng_state()
    first, _ = tiny_causal_lm(arch, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_state)
    second, _ = tiny_causal_lm(arch, seed=3)
    other, _ = tiny_causal_lm(arch, seed=4)
    assert state_dicts_equal(first, second)
    assert not state_dicts_equal(first, other)


@pytest.mark.parametrize("arch", ARCHS)
def test_causal_lm_left_padded_batch_matches_unpadded(arch):
    model, tokenizer = tiny_causal_lm(arch)
    tokenizer.padding_side = "left"
    prompts = ["Hi", "Sure, here is how to bake bread"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0  # the short prompt really is left-padded
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(**batch, position_ids=position_ids).logits[0, -1]
        alone = model(**tokenizer(prompts[:1], return_tensors="pt")).logits[0, -1]
        generated = model.generate(**batch, max_new_tokens=4, do_sample=False)
        alone_batch = tokenizer(prompts[:1], return_tensors="pt")
        generated_alone = model.generate(**alone_batch, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-5)
    assert generated.shape == (2, batch["input_ids"].shape[1] + 4)
    assert torch.equal(generated[0, -4:], generated_alone[0, -4:])


@pytest.mark.parametrize("arch", ARCHS)
def test_causal_lm_wraps_with_peft_lora(arch):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_causal_lm(arch)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in peft_model.parameters())
    batch = tokenizer(["Hello there"], return_tensors="pt")
    assert torch.isfinite(peft_model(**batch, labels=batch["input_ids"]).loss)


def test_causal_lm_overrides_update_the_config():
    model, _ = tiny_causal_lm("llama", num_hidden_layers=3, hidden_size=32)
    assert model.config.num_hidden_layers == len(model.model.layers) == 3
    assert model.config.head_dim == 8  # derived fields follow the override
    gpt2, _ = tiny_causal_lm("gpt2", n_layer=1, attn_implementation="eager")
    assert len(gpt2.transformer.h) == 1 and gpt2.config._attn_implementation == "eager"


def test_causal_lm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="arch.*llama.*qwen2.*gpt2"):
        tiny_causal_lm("mistral")
    with pytest.raises(ValueError, match="not_a_field"):
        tiny_causal_lm("llama", not_a_field=1)
    with pytest.raises(ValueError, match="model_type"):
        tiny_causal_lm("qwen2", model_type="gpt2")
    with pytest.raises(TypeError, match="seed"):
        tiny_causal_lm("llama", seed="0")
