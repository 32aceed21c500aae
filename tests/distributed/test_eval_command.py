"""`hf-robust eval` on 2 CPU processes (behaviours split between them, rows gathered) == 1 process."""

import json

import pytest

from hf_robust.evaluation.command import EvalArguments, main

from .engines import SCRIPTS, run_on

pytestmark = pytest.mark.distributed
ARGUMENTS = {"max_behaviours": 3, "attacks": "clean,strong", "max_new_tokens": 4, "batch_size": 2,
             "embedding_success": "target_or_judge"}  # the replies under the attack are gathered too


def without_seconds(summary):
    for attack in summary["attacks"].values():
        attack.pop("seconds")
    return summary


def test_two_processes_equal_one(tmp_path, model_folder):
    flags = [item for key, value in ARGUMENTS.items() for item in (f"--{key}", str(value))]
    results = run_on("ddp", SCRIPTS / "run_command.py", "hf_robust.evaluation.command", str(tmp_path / "two"),
                     "--model_name_or_path", model_folder, *flags, timeout=300)
    assert {"robustness.json", "report.md", "asr_vs_budget.png", "loss_curves.png", "README.md"} <= set(
        results[0]["files"])
    main(EvalArguments(model_name_or_path=model_folder, output_dir=str(tmp_path / "one"), **ARGUMENTS))
    two = without_seconds(json.loads((tmp_path / "two" / "robustness.json").read_text()))
    one = without_seconds(json.loads((tmp_path / "one" / "robustness.json").read_text()))
    assert two["behaviours"] == one["behaviours"]
    for name in one["attacks"]:
        rows_two, rows_one = two["attacks"][name].pop("rows"), one["attacks"][name].pop("rows")
        assert two["attacks"][name] == one["attacks"][name]
        for row_two, row_one in zip(rows_two, rows_one, strict=True):
            history_two, history_one = row_two.pop("loss_history", []), row_one.pop("loss_history", [])
            assert history_two == pytest.approx(history_one, abs=1e-4)
            assert row_two == pytest.approx(row_one, abs=1e-4) if "delta_norm_fraction" in row_one else \
                row_two == row_one
