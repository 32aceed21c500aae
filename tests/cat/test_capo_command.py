import json

import pytest
from huggingface_hub import ModelCard

from hf_robust import cli, robustness_results_from_card
from hf_robust.evaluation.presets import get_preset

FAST = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--bf16", "false", "--gradient_checkpointing",
        "false", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
        "--eval_max_behaviours", "2", "--attack_steps", "2", "--max_length", "128"]


@pytest.mark.parametrize("peft", [True, False])
def test_capo_command_trains_measures_and_saves_a_card(tmp_path, model_folder, peft):
    output = tmp_path / "out"
    lora = ["--use_peft", "--lora_r", "4", "--lora_target_modules", "all-linear"] if peft else []
    assert cli.main(["capo", "--model_name_or_path", model_folder, "--output_dir", str(output), *lora, *FAST]) == 0
    assert (output / ("adapter_model.safetensors" if peft else "model.safetensors")).is_file()
    measured = json.loads((output / "robustness.json").read_text())
    (result,) = robustness_results_from_card(ModelCard((output / "README.md").read_text()))
    assert result.value == measured["attack_success_after"] and 0.0 <= result.value <= 1.0
    assert measured["attack_preset"] == result.attack_preset == "strong"
    assert measured["attack_settings"] == get_preset("strong").describe()["settings"]
    assert result.attack_config == {
        **{key: value for key, value in measured["attack_settings"].items() if value is not None},
        "success": measured["attack_success_criterion"]}
    assert measured["attack_success_criterion"] == "target"
    assert "CAPO" in (output / "README.md").read_text()


def test_weaker_preset_is_refused_before_any_work(tmp_path, model_folder):
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=r"`--eval_preset` 'train'.*weaker.*eps 0.5 relative"):
        cli.main(["capo", "--model_name_or_path", model_folder, "--output_dir", str(output), *FAST,
                  "--attack_eps", "0.5", "--eval_preset", "train"])
    assert not output.exists()


def test_bad_dataset_is_named(tmp_path, model_folder):
    with pytest.raises(ValueError, match="dataset_name"):
        cli.main(["capo", "--model_name_or_path", model_folder, "--output_dir", str(tmp_path), *FAST,
                  "--dataset_name", ""])
