"""Tests for hf_robust.hub.push: pushes write loadable safetensors and a card, and check every argument first.

Only the two HTTP calls (`HfApi.create_repo`, `HfApi.upload_folder`) are patched; everything else runs for real.
"""

from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedTokenizerFast,
)

from hf_robust.hub import PushResult, push_robust_to_hub, robustness_results_from_card
from hf_robust.testing import tiny_causal_lm, tiny_sd_components, tiny_sentence_transformer, tiny_tokenizer

from .common import canonical, make_results


# --------------------------------------------------------------------------------------------- tiny models


def tiny_llama(seed=0):
    return tiny_causal_lm("llama", seed=seed)[0]


def tiny_clip_text(model_class=CLIPTextModel, seed=0):
    """The SD text encoder, or SDXL's second one (with projection), from the shared offline builders."""
    if model_class is CLIPTextModelWithProjection:
        return tiny_sd_components(xl=True, seed=seed)["text_encoder_2"].eval()
    return tiny_sd_components(seed=seed)["text_encoder"].eval()


def tiny_lora_llama():
    from peft import LoraConfig, get_peft_model

    # init_lora_weights=False: nonzero B, so a lost adapter would change the parameters.
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(1)
    return get_peft_model(tiny_llama(), config)


def assert_same_parameters(expected: torch.nn.Module, actual: torch.nn.Module):
    expected_state, actual_state = expected.state_dict(), actual.state_dict()
    assert expected_state.keys() == actual_state.keys()
    for name, tensor in expected_state.items():
        assert torch.equal(tensor, actual_state[name]), name


# --------------------------------------------------------------------------------------------- HTTP mocks


class FakeHub:
    """Patches HfApi.create_repo / upload_folder; records what the folder held when upload_folder ran."""

    def __init__(self):
        self.uploaded_files = None
        self.upload_kwargs = None

    def create_repo(self, repo_id, **kwargs):
        self.create_kwargs = {"repo_id": repo_id, **kwargs}
        owner_and_name = repo_id if "/" in repo_id else f"user/{repo_id}"
        return RepoUrl(f"https://huggingface.co/{owner_and_name}")

    def upload_folder(self, **kwargs):
        self.upload_kwargs = kwargs
        folder = Path(kwargs["folder_path"])
        self.uploaded_files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
        self.uploaded_readme = (folder / "README.md").read_text()
        return CommitInfo(
            commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/0123abcd",
            commit_message=kwargs["commit_message"], commit_description="", oid="0123abcd",
        )

    def __enter__(self):
        self.create_mock = mock.patch.object(HfApi, "create_repo", autospec=True, side_effect=self._create)
        self.upload_mock = mock.patch.object(HfApi, "upload_folder", autospec=True, side_effect=self._upload)
        self.create_repo_calls = self.create_mock.start()
        self.upload_folder_calls = self.upload_mock.start()
        return self

    def _create(self, api, repo_id, **kwargs):
        return self.create_repo(repo_id, **kwargs)

    def _upload(self, api, **kwargs):
        return self.upload_folder(**kwargs)

    def __exit__(self, *exc_info):
        self.create_mock.stop()
        self.upload_mock.stop()


# --------------------------------------------------------------------------------------------- cards


# --------------------------------------------------------------------------------------------- pushes


@pytest.fixture(scope="module")
def sentence_transformer(tmp_path_factory):
    return tiny_sentence_transformer()


def push(obj, folder, **kwargs):
    with FakeHub() as hub:
        outcome = push_robust_to_hub(
            obj, "owner/robust", make_results(), method="cat", save_directory=folder, **kwargs
        )
    assert isinstance(outcome, PushResult) and outcome.folder == folder
    assert outcome.commit.commit_url == "https://huggingface.co/owner/robust/commit/0123abcd"
    hub.create_repo_calls.assert_called_once()
    assert hub.create_kwargs == {"repo_id": "owner/robust", "exist_ok": True, "private": kwargs.get("private")}
    hub.upload_folder_calls.assert_called_once()
    assert hub.upload_kwargs["repo_id"] == "owner/robust"
    assert Path(hub.upload_kwargs["folder_path"]) == folder
    assert "README.md" in hub.uploaded_files
    assert canonical(robustness_results_from_card(hub.uploaded_readme)) == canonical(make_results())
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in hub.uploaded_files)
    return hub, ModelCard(hub.uploaded_readme)


def test_push_transformers_model(tmp_path):
    model = tiny_llama()
    tokenizer = tiny_tokenizer()
    hub, card = push(model, tmp_path / "out", tokenizer=tokenizer, private=True, base_model="meta-llama/Llama-3.2-1B")
    assert "model.safetensors" in hub.uploaded_files and "tokenizer.json" in hub.uploaded_files
    assert card.data.library_name == "transformers" and card.data.base_model == "meta-llama/Llama-3.2-1B"
    assert_same_parameters(model, AutoModelForCausalLM.from_pretrained(tmp_path / "out"))
    assert AutoTokenizer.from_pretrained(tmp_path / "out").get_vocab() == tokenizer.get_vocab()


def test_push_peft_adapter(tmp_path):
    from peft import PeftModel

    model = tiny_lora_llama()
    hub, card = push(model, tmp_path / "out")
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(hub.uploaded_files)
    assert "model.safetensors" not in hub.uploaded_files
    assert card.data.library_name == "peft" and "AutoPeftModelForCausalLM" in card.text
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "out")
    assert_same_parameters(model, loaded)


def test_push_peft_takes_base_model_from_adapter_config(tmp_path):
    model = tiny_lora_llama()
    model.peft_config["default"].base_model_name_or_path = "meta-llama/Llama-3.2-1B"
    _, card = push(model, tmp_path / "out")
    assert card.data.base_model == "meta-llama/Llama-3.2-1B"


def test_push_sentence_transformer(tmp_path, sentence_transformer):
    from sentence_transformers import SentenceTransformer

    hub, card = push(sentence_transformer, tmp_path / "out")
    assert "model.safetensors" in hub.uploaded_files and "modules.json" in hub.uploaded_files
    assert card.data.library_name == "sentence-transformers"
    loaded = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    assert_same_parameters(sentence_transformer, loaded)
    sentences = ["the cat sat on the mat", "a dog"]
    assert torch.equal(
        sentence_transformer.encode(sentences, convert_to_tensor=True),
        loaded.encode(sentences, convert_to_tensor=True),
    )


def test_push_text_encoder_into_subfolder(tmp_path):
    encoder = tiny_clip_text()
    tokenizer = tiny_tokenizer()
    hub, card = push(
        encoder,
        tmp_path / "out",
        subfolder="text_encoder",
        tokenizer=tokenizer,
        base_model="CompVis/stable-diffusion-v1-4",
    )
    expected_files = {"text_encoder/model.safetensors", "text_encoder/config.json", "tokenizer/tokenizer.json"}
    assert expected_files <= set(hub.uploaded_files)
    assert card.data.library_name == "diffusers"
    assert 'DiffusionPipeline.from_pretrained("CompVis/stable-diffusion-v1-4", text_encoder=text_encoder)' in card.text
    assert_same_parameters(encoder, CLIPTextModel.from_pretrained(tmp_path / "out", subfolder="text_encoder"))


def test_push_two_text_encoders(tmp_path):
    encoders = {
        "text_encoder": tiny_clip_text(seed=0),
        "text_encoder_2": tiny_clip_text(CLIPTextModelWithProjection, seed=1),
    }
    hub, card = push(encoders, tmp_path / "out")
    assert {"text_encoder/model.safetensors", "text_encoder_2/model.safetensors"} <= set(hub.uploaded_files)
    assert 'CLIPTextModelWithProjection.from_pretrained("owner/robust", subfolder="text_encoder_2")' in card.text
    loaded = CLIPTextModel.from_pretrained(tmp_path / "out", subfolder="text_encoder")
    assert_same_parameters(encoders["text_encoder"], loaded)
    loaded = CLIPTextModelWithProjection.from_pretrained(tmp_path / "out", subfolder="text_encoder_2")
    assert_same_parameters(encoders["text_encoder_2"], loaded)


def test_push_to_temporary_folder_uses_created_repo_id_and_cleans_up():
    with FakeHub() as hub:
        outcome = push_robust_to_hub(
            tiny_llama(), "robust", make_results(), method="cat", create_repo=True, commit_message="Robust weights"
        )
    assert outcome.folder is None
    assert hub.upload_kwargs["repo_id"] == "user/robust"  # the full id create_repo answered
    assert hub.upload_kwargs["commit_message"] == "Robust weights"
    assert {"README.md", "model.safetensors", "config.json"} <= set(hub.uploaded_files)
    assert not Path(hub.upload_kwargs["folder_path"]).exists()


def test_push_without_create_repo_only_uploads():
    with FakeHub() as hub:
        push_robust_to_hub(tiny_llama(), "owner/robust", make_results(), method="cat", create_repo=False)
    hub.create_repo_calls.assert_not_called()
    assert hub.upload_kwargs["repo_id"] == "owner/robust"
    assert hub.upload_kwargs["commit_message"] == "Upload cat model with robustness card"


@pytest.mark.parametrize(
    ("obj_name", "changes", "error", "name"),
    [
        ("module", {}, TypeError, "obj"),
        ("none", {}, TypeError, "obj"),
        ("empty_dict", {}, TypeError, "obj"),
        ("dict_bad_key", {}, TypeError, "obj"),
        ("dict_bad_value", {}, TypeError, "obj"),
        ("module", {"subfolder": "text_encoder"}, TypeError, "obj"),
        ("llama", {"subfolder": "text_encoder"}, ValueError, "subfolder"),
        ("clip", {"subfolder": "unet"}, ValueError, "subfolder"),
        ("llama", {"repo_id": "owner/name/extra"}, ValueError, "repo_id"),
        ("llama", {"repo_id": "bad name"}, ValueError, "repo_id"),
        ("llama", {"repo_id": ""}, ValueError, "repo_id"),
        ("llama", {"repo_id": None}, TypeError, "repo_id"),
        ("llama", {"results": []}, ValueError, "results"),
        ("llama", {"results": ["gcg"]}, TypeError, "results"),
        ("llama", {"method": ""}, ValueError, "method"),
        ("llama", {"method": 1}, TypeError, "method"),
        ("llama", {"tokenizer": "gpt2"}, TypeError, "tokenizer"),
        ("sentence_transformer", {"tokenizer": PreTrainedTokenizerFast}, ValueError, "tokenizer"),
        ("llama", {"private": "yes"}, TypeError, "private"),
        ("llama", {"commit_message": ""}, ValueError, "commit_message"),
        ("llama", {"tags": "robust"}, TypeError, "tags"),
        ("llama", {"paper": {"title": ""}}, ValueError, "paper"),
    ],
)
def test_push_rejects_bad_input_before_writing_or_uploading(
    tmp_path, sentence_transformer, obj_name, changes, error, name
):
    objects = {
        "module": torch.nn.Linear(2, 2),
        "none": None,
        "empty_dict": {},
        "dict_bad_key": {"unet": tiny_clip_text()},
        "dict_bad_value": {"text_encoder": tiny_llama()},
        "llama": tiny_llama(),
        "clip": tiny_clip_text(),
        "sentence_transformer": sentence_transformer,
    }
    arguments = {"repo_id": "owner/robust", "results": make_results(), "method": "cat", **changes}
    folder = tmp_path / "out"
    with FakeHub() as hub, pytest.raises(error, match=f"`{name}"):
        push_robust_to_hub(objects[obj_name], save_directory=folder, **arguments)
    assert not folder.exists()
    hub.create_repo_calls.assert_not_called()
    hub.upload_folder_calls.assert_not_called()


def test_push_type_error_lists_accepted_kinds():
    with pytest.raises(TypeError) as raised:
        push_robust_to_hub(torch.nn.Linear(2, 2), "owner/robust", make_results(), method="cat")
    for kind in ("PeftModel", "SentenceTransformer", "CLIPTextModel", "PreTrainedModel"):
        assert kind in str(raised.value)
