"""`hf-robust advunlearn`: the recipe, a toy run that saves a loadable encoder and a card, the push path, bad input."""

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from diffusers import StableDiffusionPipeline
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from transformers import CLIPTextModel

from hf_robust import cli
from hf_robust.erasure.command import AdvUnlearnScriptArguments, main, make_parser
from hf_robust.erasure.toy import TOY_CONCEPT_PROMPTS, toy_erasure_components
from hf_robust.hub import robustness_results_from_card
from hf_robust.testing import tiny_sd_components

REPO = Path(__file__).resolve().parents[2]
FAST = ["--max_steps", "2", "--ddim_steps", "4", "--attack_steps", "2", "--attack_warmup", "0", "--retain_batch", "2",
        "--learning_rate", "1e-3", "--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--save_strategy",
        "no", "--disable_tqdm", "true", "--eval_discrete_iters", "2", "--eval_soft_steps", "2",
        "--eval_n_timesteps", "2"]


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setattr(cli, "_COMMANDS", dict(cli._COMMANDS))
    cli.register_command("advunlearn", "hf_robust.erasure.command", "AdvUnlearn concept erasure")


def run(*argv):
    return cli.main(["advunlearn", *argv])


def test_recipe_parses_with_the_reference_settings():
    script, training = make_parser().parse_args_and_config(
        ["--config", str(REPO / "recipes" / "advunlearn_sd15.yaml"), "--bf16", "false", "--use_cpu", "true"])
    assert script.model_name_or_path == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert script.concepts == ["nudity"] and training.concept_type == "nudity" and training.retain_weight == 0.3
    assert (training.max_steps, training.learning_rate, training.attack_warmup, training.attack_steps) == (
        1000, 1e-5, 200, 30)
    assert (training.num_adv_tokens, training.adv_position, training.attack_lr, training.attack_mode) == (
        1, "prefix", 1e-3, "adam")
    assert (training.ddim_steps, training.guidance_scale, training.share_xt, training.eta) == (50, 3.0, True, 1.0)
    assert (training.lr_scheduler_type, training.max_grad_norm, training.retain_batch) == ("constant", 0.0, 5)
    assert script.eval_attacks == ["discrete", "soft"] and len(script.eval_prompts) == 4
    bf16 = make_parser().parse_args_and_config(["--config", str(REPO / "recipes" / "advunlearn_sd15.yaml"),
                                                "--use_cpu", "true"])[1].bf16
    assert bf16 is True


def test_toy_run_saves_a_loadable_encoder_robustness_json_and_card(tmp_path):
    output = tmp_path / "erased"
    assert run("--model_name_or_path", "toy", "--output_dir", str(output), *FAST) == 0
    original = toy_erasure_components()
    encoder = CLIPTextModel.from_pretrained(output, subfolder="text_encoder")
    assert (output / "text_encoder" / "model.safetensors").is_file()
    saved, before = encoder.state_dict(), original["text_encoder"].state_dict()
    assert any(not torch.equal(saved[key], before[key]) for key in saved)  # the encoder was trained
    # Embeddings are frozen: the saved ones are the original's.
    assert torch.equal(encoder.get_input_embeddings().weight, original["text_encoder"].get_input_embeddings().weight)
    pipeline = StableDiffusionPipeline(**{**original, "text_encoder": encoder})
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline("a photo of a church", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3)

    measured = json.loads((output / "robustness.json").read_text())
    assert measured["concepts"] == ["church"]
    assert [row["prompt"] for row in measured["rows"]] == list(TOY_CONCEPT_PROMPTS)
    for row in measured["rows"]:
        assert row["leakage_before"] > 0 and row["leakage_discrete"] >= 0 and row["leakage_soft"] >= 0
    results = robustness_results_from_card(ModelCard((output / "README.md").read_text()))
    by_name = {(result.attack, result.metric): result.value for result in results}
    assert by_name[("no_attack", "concept_leakage")] == pytest.approx(measured["mean_before"])
    assert by_name[("unlearndiffatk", "concept_leakage")] == pytest.approx(measured["mean_discrete"])
    assert by_name[("soft_prompt", "concept_leakage")] == pytest.approx(measured["mean_soft"])
    assert by_name[("prompt_attack", "attack_success_rate")] == pytest.approx(measured["attack_success_rate"])
    assert 'subfolder="text_encoder"' in (output / "README.md").read_text()


def test_a_pipeline_folder_with_prompt_files(tmp_path):
    folder = tmp_path / "pipeline"
    StableDiffusionPipeline(**tiny_sd_components(seed=0)).save_pretrained(folder)
    retain, prompts = tmp_path / "retain.txt", tmp_path / "prompts.txt"
    retain.write_text("a photo of a cat\n\na photo of a dog\na photo of a house\n")
    prompts.write_text("a church in the snow\n")
    output = tmp_path / "erased"
    assert run("--model_name_or_path", str(folder), "--concepts", "church", "a golf ball", "--retain_prompts",
               str(retain), "--eval_prompts_file", str(prompts), "--eval_attacks", "soft", "--output_dir",
               str(output), *FAST) == 0
    assert CLIPTextModel.from_pretrained(output, subfolder="text_encoder") is not None
    measured = json.loads((output / "robustness.json").read_text())
    assert measured["concepts"] == ["church", "a golf ball"] and measured["config"]["attacks"] == ["soft"]
    assert [row["prompt"] for row in measured["rows"]] == ["a church in the snow"]
    assert measured["rows"][0]["leakage_discrete"] is None


def test_no_evaluation_saves_the_encoder_only(tmp_path):
    output = tmp_path / "erased"
    assert run("--model_name_or_path", "toy", "--output_dir", str(output), "--eval_attacks", "none", *FAST) == 0
    assert (output / "text_encoder" / "model.safetensors").is_file()
    assert not (output / "robustness.json").exists() and not (output / "README.md").exists()


def test_push_uploads_the_encoder_and_the_card(tmp_path):
    uploaded = {}

    def upload_folder(api, **kwargs):
        folder = Path(kwargs["folder_path"])
        uploaded["repo_id"] = kwargs["repo_id"]
        uploaded["files"] = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
        uploaded["card"] = (folder / "README.md").read_text()
        return CommitInfo(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/0123abcd",
                          commit_message=kwargs["commit_message"], commit_description="", oid="0123abcd")

    create = mock.patch.object(HfApi, "create_repo", autospec=True,
                               side_effect=lambda api, repo_id, **kwargs: RepoUrl(f"https://huggingface.co/{repo_id}"))
    upload = mock.patch.object(HfApi, "upload_folder", autospec=True, side_effect=upload_folder)
    output = tmp_path / "erased"
    with create as create_repo, upload as upload_call:
        assert run("--model_name_or_path", "toy", "--output_dir", str(output), "--push_to_hub", "true",
                   "--hub_model_id", "user/erased-church", *FAST) == 0
    create_repo.assert_called_once()
    upload_call.assert_called_once()
    assert uploaded["repo_id"] == "user/erased-church"
    assert {"README.md", "text_encoder/config.json", "text_encoder/model.safetensors"} <= set(uploaded["files"])
    results = robustness_results_from_card(ModelCard(uploaded["card"]))
    assert {result.attack for result in results} == {"no_attack", "unlearndiffatk", "soft_prompt", "prompt_attack"}
    assert (output / "robustness.json").is_file()


def test_bad_input_is_named(tmp_path, capsys):
    common = ["--output_dir", str(tmp_path), *FAST]
    with pytest.raises(ValueError, match="hub_model_id"):
        run("--model_name_or_path", "toy", "--push_to_hub", "true", *common)
    with pytest.raises(ValueError, match="concepts"):
        run("--model_name_or_path", str(tmp_path), *common)
    with pytest.raises(ValueError, match="retain_prompts"):
        run("--retain_prompts", str(tmp_path / "missing.txt"), *common)
    with pytest.raises(ValueError, match="eval_attacks"):
        run("--eval_attacks", "magic", *common)
    with pytest.raises(ValueError, match="eval_num_adv_tokens"):
        run("--eval_num_adv_tokens", "0", *common)
    with pytest.raises(ValueError, match="eval_n_timesteps"):  # more points than the training's DDIM schedule
        run("--model_name_or_path", str(tmp_path), *common, "--eval_n_timesteps", "5")
    with pytest.raises(ValueError, match="eval_prompts"):
        AdvUnlearnScriptArguments(eval_prompts=["a church"], eval_prompts_file=str(REPO / "README.md"))
    with pytest.raises(ValueError, match="concepts"):
        AdvUnlearnScriptArguments(concepts=[" "])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no prompt"):
        run("--model_name_or_path", "toy", "--retain_prompts", str(empty), *common)
    with pytest.raises(SystemExit):  # a `choices` field: argparse names the flag and the allowed values
        run("--dtype", "float8", *common)
    assert "--dtype: invalid choice: 'float8'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="num_adv_tokens"):  # the trainer's own config checks
        main(AdvUnlearnScriptArguments(), *make_parser().parse_args_and_config(
            ["--output_dir", str(tmp_path), "--num_adv_tokens", "0"])[1:])
