import runpy
import sys
from pathlib import Path

from huggingface_hub import ModelCard

from hf_robust import robustness_results_from_card

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hub_push.py"


def test_hub_push_example_writes_weights_and_card(tmp_path, monkeypatch, capsys):
    output = tmp_path / "robust"
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--repo_id", "you/robust", "--output_dir", str(output),
                                      "--no_upload"])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert (output / "model.safetensors").is_file()
    (result,) = robustness_results_from_card(ModelCard((output / "README.md").read_text()))
    assert result.metric == "attack_success_rate" and 0.0 <= result.value <= 1.0
    assert f"success rate: {result.value:.2f}" in capsys.readouterr().out
