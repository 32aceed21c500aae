import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_robust import cli, robustness_results_from_card
from hf_robust.testing import tiny_causal_lm
from hf_robust.unlearning.command import make_parser

REPO = Path(__file__).resolve().parents[2]
FAST = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--bf16", "false", "--use_cpu", "true",
        "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--max_length", "32",
        "--relearn_samples", "2", "--learning_rate", "1e-3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unlearn")
    model, tokenizer = tiny_causal_lm("llama")
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    forget = [f"The secret code of door {i} is red blue {i}." for i in range(8)]
    retain = [f"The capital of country {i} is a city." for i in range(8)]
    for name, rows in (("forget", forget), ("retain", retain)):
        (folder / f"{name}.jsonl").write_text("\n".join(json.dumps({"text": text}) for text in rows))
    return {name: str(folder / path) for name, path in
            (("model", "model"), ("forget", "forget.jsonl"), ("retain", "retain.jsonl"))}


def arguments(files, output, *extra):
    return ["unlearn", "--model_name_or_path", files["model"], "--output_dir", str(output), "--forget_dataset",
            files["forget"], "--retain_dataset", files["retain"], *FAST, *extra]


def test_recipe_parses_with_the_reference_settings():
    data, relearn, training, model = make_parser().parse_args_and_config(
        ["--config", str(REPO / "recipes" / "unlearn_npo_sam.yaml"), "--bf16", "false", "--use_cpu", "true"]
    )
    assert (training.method, training.smoothing, training.rho, training.beta, training.retain_weight) == (
        "npo", "sam", 0.01, 0.015, 2.25)
    assert (training.learning_rate, training.max_steps, training.per_device_train_batch_size) == (1e-5, 125, 4)
    assert (relearn.relearn_samples, relearn.relearn_learning_rate, relearn.relearn_batch_size) == (20, 1e-5, 4)
    assert data.forget_dataset == "toy" and model.model_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("smoothing", ["sam", "none"])
def test_unlearn_command_trains_relearns_and_saves_a_card(tmp_path, files, smoothing):
    output = tmp_path / "out"
    assert cli.main(arguments(files, output, "--smoothing", smoothing)) == 0
    assert (output / "model.safetensors").is_file()
    measured = json.loads((output / "robustness.json").read_text())
    assert measured["samples"] == 2 and measured["before_relearning"]["forget_rows"] == 4  # the held-out half
    results = robustness_results_from_card(ModelCard((output / "README.md").read_text()))
    by_metric = {result.metric: result.value for result in results}
    assert by_metric["forget_nll_before"] == pytest.approx(measured["before_relearning"]["forget_nll"])
    assert by_metric["forget_nll_recovery"] == pytest.approx(measured["recovery"])
    assert all(result.attack == "relearning" for result in results)


def test_relearning_curve_and_the_attacker_settings_are_recorded(tmp_path, files):
    output = tmp_path / "out"
    assert cli.main(arguments(files, output, "--smoothing", "none", "--relearn_curve", "0", "1", "2")) == 0
    measured = json.loads((output / "robustness.json").read_text())
    assert [point["steps"] for point in measured["curve"]] == [0, 1, 2] and measured["steps"] == 2
    assert measured["curve"][0]["forget_nll"] == pytest.approx(measured["before_relearning"]["forget_nll"])
    assert measured["curve"][-1]["forget_nll"] == pytest.approx(measured["after_relearning"]["forget_nll"])
    assert measured["attacker"]["parameters"] == "all" and measured["attacker"]["learning_rate"] == 1e-5
    results = robustness_results_from_card(ModelCard((output / "README.md").read_text()))
    curve = {r.metric: r.value for r in results if r.metric.startswith("forget_nll_after_")}
    assert set(curve) == {"forget_nll_after_0_steps", "forget_nll_after_1_steps", "forget_nll_after_2_steps"}
    assert all(r.attack_config["parameters"] == "all" for r in results)  # the card records the attacker


def test_bad_arguments_are_named(tmp_path, files, capsys):
    with pytest.raises(ValueError, match="relearn_curve"):
        cli.main(arguments(files, tmp_path, "--relearn_curve", "3", "1"))
    with pytest.raises(ValueError, match="relearn_parameters"):
        cli.main(arguments(files, tmp_path, "--relearn_parameters", "adapters"))
    with pytest.raises(ValueError, match="relearn_holdout_fraction"):
        cli.main(arguments(files, tmp_path, "--relearn_holdout_fraction", "1.5"))
    with pytest.raises(ValueError, match="relearn_samples"):
        cli.main(arguments(files, tmp_path, "--relearn_samples", "6"))
    with pytest.raises(ValueError, match="hub_model_id"):
        cli.main(arguments(files, tmp_path, "--push_to_hub", "true"))
    with pytest.raises(SystemExit):  # a `choices` field: argparse names the flag and the allowed values
        cli.main(arguments(files, tmp_path, "--smoothing", "magic"))
    assert "--smoothing: invalid choice: 'magic'" in capsys.readouterr().err


def test_toy_data_is_the_default(tmp_path, files):
    output = tmp_path / "out"
    assert cli.main(["unlearn", "--model_name_or_path", files["model"], "--output_dir", str(output), *FAST]) == 0
    measured = json.loads((output / "robustness.json").read_text())
    assert measured["before_relearning"]["forget_rows"] == 8  # half of the 16 toy forget strings, held out
