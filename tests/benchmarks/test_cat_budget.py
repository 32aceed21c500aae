"""`benchmarks/cat_budget.py`: CAT's training budget against robustness, read across `cat_real.py` records (here
small hand-made records in that format)."""

import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import cat_budget  # noqa: E402


def model(strong_asr, curve, over_refusal, training_attack_asr=0.0, **judged):
    return {"clean_refusal": 1.0, "over_refusal": over_refusal, "utility_nll": 0.6, "strong_asr": strong_asr,
            "strong_budget": curve, "training_attack_asr": training_attack_asr, **judged}


def record(eps, seeds, steps=40):
    return {"model": "SmolLM2", "steps": {"safety": 60, "variants": steps}, "lora": {"r": 64}, "data_mix": "paper",
            "evaluation": {"strong": {"description": "strong", "settings": {}}, "gcg_behaviours": 10},
            "training_attack": {"attack_eps": eps, "attack_eps_mode": "relative", "attack_steps": 10,
                                "attack_step_size": 0.1, "attack_step_mode": "relative", "attack_optimizer": "adam"},
            "seeds": seeds}


@pytest.fixture
def records():
    small = record(0.1, {
        "0": {"control": model(1.0, [0, 1, 1], 0.0, 1.0), "cat": model(1.0, [0, 0, 1], 0.3)},
        "1": {"control": model(1.0, [0, 0.6, 1], 0.1, 1.0), "cat": model(1.0, [0, 0.2, 0.6], 0.2)}})
    large = record(0.5, {"1": {"safety-tuned": {}, "cat": model(0.4, [0, 0, 0.1, 0.4], 0.5, strong_judged_asr=0.7,
                                                                training_attack_judged_asr=0.25,
                                                                strong_extended_judged_asr=0.5,
                                                                clean_refusal_extended=0.75)}})
    large["evaluation"]["gcg_behaviours"] = 0  # GCG skipped: its own column, not a reason to refuse
    return small, large


def test_points_are_the_shared_seeds_control_first_then_each_budget(records):
    result = cat_budget.tradeoff(list(records), ["small", "large"])
    assert result["seeds"] == ["1"]  # seed 0 has no eps-0.5 model
    assert [(item["model"], item["training_eps"]) for item in result["points"]] == [
        ("control", 0.0), ("CAT eps 0.1, 10 attack steps", 0.1), ("CAT eps 0.5, 10 attack steps", 0.5)]
    control, small, large = result["points"]
    assert control["strong_steps_to_50"] == 1 and small["strong_steps_to_50"] == 2
    assert large["strong_steps_to_50"] is None  # never reached 50%: no number of steps
    assert large["strong_asr"] == 0.4 and large["over_refusal"] == 0.5 and "gcg_asr" not in large
    table = cat_budget.markdown(result)
    assert large["strong_judged_asr"] == 0.7 and "strong_judged_asr" not in small  # measured before the criterion
    assert "strong_20_asr" not in large  # a curve shorter than 20 steps
    assert ("| CAT eps 0.5, 10 attack steps | 40 | 0.5 | 10 | 40% | 70% | 50% | not reached | – | – | – | 0% | 25% "
            "| – | – | 50% | – | 100% | 75% | 0.60 |") in table
    assert "| CAT eps 0.1, 10 attack steps | 40 | 0.1 | 10 | 100% | – | – | 2 | – | – | – |" in table
    assert "target or extended judge" in table and "clean refusal, extended judge" in table


def test_the_strong_attack_at_20_steps_is_read_from_its_curve(records):
    small, large = records
    large["seeds"]["1"]["cat"]["strong_budget"] = [0.0] * 20 + [0.3] * 81
    (point,) = [item for item in cat_budget.tradeoff([small, large], ["small", "large"])["points"]
                if item["training_eps"] == 0.5]
    assert point["strong_20_asr"] == 0.3 and point["strong_steps_to_50"] is None


def test_means_over_several_shared_seeds(records):
    small, _ = records
    other = copy.deepcopy(small)
    other["training_attack"]["attack_eps"] = 0.3
    result = cat_budget.tradeoff([small, other], ["small", "other"])
    assert result["seeds"] == ["0", "1"]
    assert result["points"][0]["over_refusal"] == pytest.approx(0.05)
    assert result["points"][1]["strong_steps_to_50"] == pytest.approx(2.0)  # seeds: 2 and 2


def test_attack_steps_are_a_budget_too_ordered_after_the_radius(records):
    small, _ = records
    longer, wider = copy.deepcopy(small), copy.deepcopy(small)
    longer["training_attack"]["attack_steps"] = 30
    wider["training_attack"]["attack_eps"] = 0.5
    result = cat_budget.tradeoff([longer, wider, small], ["longer", "wider", "small"])
    assert [cat_budget.budget_label(item) for item in result["points"]] == ["control", "0.1 / 10", "0.1 / 30",
                                                                            "0.5 / 10"]
    assert "| CAT eps 0.1, 30 attack steps | 40 | 0.1 | 30 |" in cat_budget.markdown(result)


def test_each_training_length_has_its_own_control_and_line(records, tmp_path):
    small, _ = records
    longer = record(0.5, {"0": {"control": model(1.0, [0, 0, 1], 0.05, 1.0), "cat": model(0.6, [0, 0, 0.2], 0.4)},
                          "1": {"cat": model(0.2, [0, 0, 0.1], 0.3)}}, steps=120)
    result = cat_budget.tradeoff([small, longer], ["small", "longer"])
    assert [(item["model"], item["training_steps"]) for item in result["points"]] == [
        ("control", 40), ("CAT eps 0.1, 10 attack steps", 40), ("CAT eps 0.5, 10 attack steps", 120)]
    # the 120-step control misses seed 1, so it is no point (a mean over other seeds would not compare)
    assert [cat_budget.budget_label(item, 2) for item in result["points"]][-1] == "0.5 / 10\n120 steps"
    assert "| CAT eps 0.5, 10 attack steps | 120 | 0.5 | 10 | 40% |" in cat_budget.markdown(result)
    longer["seeds"]["1"]["control"] = model(1.0, [0, 1, 1], 0.0, 1.0)
    result = cat_budget.tradeoff([small, longer], ["small", "longer"])
    assert [(item["model"], item["training_steps"]) for item in result["points"]][2] == ("control", 120)
    longer["seeds"]["1"]["cat"]["strong_judged_asr"] = 0.9  # a metric only the later length measured
    result = cat_budget.tradeoff([small, longer], ["small", "longer"])
    figure = cat_budget.plot(result, tmp_path / "lengths.png")
    assert (tmp_path / "lengths.png").stat().st_size > 10_000
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "strong embedding ASR, target or judge" in legend and legend.count("strong embedding ASR") == 1
    longer["steps"]["safety"] = 30
    with pytest.raises(SystemExit, match="safety tuning's steps"):
        cat_budget.tradeoff([small, longer], ["small", "longer"])


def test_records_that_differ_in_more_than_the_training_attack_are_refused(records):
    small, large = records
    large["lora"] = {"r": 8}
    with pytest.raises(SystemExit, match="differ in 'lora'"):
        cat_budget.tradeoff([small, large], ["small", "large"])


def test_a_training_attack_stronger_than_the_yardstick_is_refused(records):
    small, large = records
    large["training_attack"]["attack_eps"] = 2.0
    with pytest.raises(ValueError, match="large"):
        cat_budget.tradeoff([small, large], ["small", "large"])


def test_the_command_writes_json_markdown_and_a_png(records, tmp_path, monkeypatch):
    for name, content in zip(["small", "large"], records):
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    monkeypatch.setattr(sys, "argv", ["cat_budget.py", "--records", "small", "large", "--name", "budget",
                                      "--results-dir", str(tmp_path)])
    cat_budget.main()
    assert json.loads((tmp_path / "budget.json").read_text())["seeds"] == ["1"]
    assert (tmp_path / "budget.md").read_text().startswith("# CAT's training budget")
    assert (tmp_path / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "budget.png").stat().st_size > 10_000
    monkeypatch.setattr(sys, "argv", ["cat_budget.py", "--records", "small", "gone", "--name", "budget",
                                      "--results-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="gone"):
        cat_budget.main()
