"""`benchmarks/cat_levers.py`: every CAT lever beside its control, read across `cat_real.py` records (here small
hand-made records in that format)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import cat_levers  # noqa: E402


def model(strong_asr, over_refusal=0.0, **measured):
    return {"strong_asr": strong_asr, "over_refusal": over_refusal, "clean_refusal": 0.9, "utility_nll": 0.6,
            "seconds_per_step": 10.0, **measured}


def record(seeds, mix="paper", steps=120, attack_steps=30, machine="2-core CPU, no GPU", strong_steps=100):
    return {"model": "SmolLM2 (GGUF)", "machine": machine, "data_mix": mix,
            "steps": {"safety": 60, "variants": steps}, "lora": {"r": 16},
            "evaluation": {"strong": {"description": "strong.", "settings": {"steps": strong_steps}},
                           "gcg": {"name": "gcg-cpu"}, "gcg_behaviours": 10, "held_out_behaviours": "50 of advbench",
                           "benign_test": "59 of builtin"},
            "training_attack": {"attack_eps": 1.0, "attack_eps_mode": "relative", "attack_steps": attack_steps,
                                "attack_step_size": 0.1, "attack_step_mode": "relative", "attack_optimizer": "adam"},
            "seeds": seeds}


def rows_by_record(result):
    return {row["record"]: row for row in result["rows"]}


def test_a_cat_model_is_read_against_the_control_of_a_record_with_the_same_rows_and_length():
    records = {
        "control": record({"1": {"control": model(1.0, 0.02)}, "2": {"control": model(1.0, 0.02)}}, attack_steps=10),
        "cat": record({"1": {"cat": model(0.4, 0.10)}, "2": {"cat": model(0.5, 0.14)}}),
        "refusals": record({"1": {"cat": model(0.9, 0.2, gcg_asr=0.0, gcg_behaviours=10)}}, mix="paper-refusals"),
        "quarter": record({"1": {"cat": model(0.3)}}, mix="paper-quarter"),  # other control rows: no control
        "longer": record({"1": {"cat": model(0.2)}}, steps=240),  # trained longer: no control
    }
    result = cat_levers.levers(records)
    rows = rows_by_record(result)
    assert [row["record"] for row in result["rows"]] == ["longer", "quarter", "cat", "refusals"]  # best first
    cat = rows["cat"]
    assert cat["control_records"] == ["control"] and cat["seeds"] == ["1", "2"]
    assert cat["cat"]["strong_asr"]["mean"] == pytest.approx(0.45) and cat["strong_target"] == 0.5
    assert cat["strong_target_met"] and cat["over_refusal_met"]  # over-refusal 12%: 10 points above 2%
    refusals = rows["refusals"]  # paper-refusals trains its control on paper's rows
    assert refusals["control_records"] == ["control"] and not refusals["strong_target_met"]
    assert not refusals["over_refusal_met"] and refusals["gcg_behaviours"] == [10]
    for name in ("quarter", "longer"):
        assert rows[name]["control"] is None and rows[name]["strong_target_met"] is None
    table = cat_levers.markdown(result)
    assert ("| paper, 120 x 30 (eps 1), step 0.1, zero start | 1, 2 | 45% ± 7% | 100% ± 0% | 50%: met | – | – | – "
            "| 90% ± 0% | 12% ± 3% (2% ± 0%) | met | 0.60 ± 0.00 | 10.0 | `cat` (`control`) |") in table
    assert "| paper-quarter, 120 x 30 (eps 1), step 0.1, zero start | 1 | 30% | – | – |" in table
    assert "no control" in table and "0% (10)" in table


def test_a_control_is_only_taken_from_the_same_machine_and_safety_tuned_weights():
    digest = {"weights_sha256": "a"}
    records = {
        "control": record({"1": {"safety-tuned": digest, "control": model(1.0)}}, machine="2-core CPU, no GPU"),
        "gpu": record({"1": {"cat": model(0.3)}}, machine="NVIDIA H100"),
        "remarked": record({"1": {"cat": model(0.3)}}, machine="2-core CPU, no GPU (shared)"),  # the same machine
        "other weights": record({"1": {"safety-tuned": {"weights_sha256": "b"}, "cat": model(0.3)}}),
        "same weights": record({"1": {"safety-tuned": digest, "cat": model(0.3)}}),
        "other seed": record({"2": {"cat": model(0.3)}}),
    }
    rows = rows_by_record(cat_levers.levers(records))
    assert rows["remarked"]["control_records"] == rows["same weights"]["control_records"] == ["control"]
    for name in ("gpu", "other weights", "other seed"):
        assert rows[name]["control"] is None


def test_a_cat_model_is_compared_only_on_seeds_that_all_have_a_control():
    records = {"control": record({"1": {"control": model(1.0)}}),
               "cat": record({"1": {"cat": model(0.3)}, "2": {"cat": model(0.9)}})}
    row = cat_levers.levers(records)["rows"][0]
    assert row["control"] is None and row["cat"]["strong_asr"]["values"] == [0.3, 0.9]


def test_records_scored_by_different_strong_attacks_or_trained_harder_than_it_are_refused():
    with pytest.raises(SystemExit, match="different strong attacks"):
        cat_levers.levers({"a": record({"1": {"cat": model(0.3)}}),
                           "b": record({"1": {"cat": model(0.3)}}, strong_steps=50)})
    with pytest.raises(ValueError, match="--records harder"):  # a training attack stronger than the yardstick
        cat_levers.levers({"harder": record({"1": {"cat": model(0.3)}}, attack_steps=500)})


def test_the_command_writes_the_table_and_a_plot_of_every_record(tmp_path, capsys):
    (tmp_path / "cat_effect_smollm2_a.json").write_text(json.dumps(
        record({"1": {"control": model(1.0, 0.02), "cat": model(0.6, 0.05)}})))
    (tmp_path / "cat_effect_smollm2_b.json").write_text(json.dumps(record({"1": {"safety-tuned": {}}})))  # no CAT
    cat_levers.main(["--results-dir", str(tmp_path), "--name", "levers"])
    result = json.loads((tmp_path / "levers.json").read_text())
    assert [row["record"] for row in result["rows"]] == ["cat_effect_smollm2_a"]
    assert not result["rows"][0]["strong_target_met"] and result["rows"][0]["over_refusal_met"]
    assert (tmp_path / "levers.md").read_text() in capsys.readouterr().out
    assert (tmp_path / "levers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "levers.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match=r"no such record \['missing'\]"):
        cat_levers.main(["--results-dir", str(tmp_path), "--records", "missing"])
    with pytest.raises(SystemExit, match="none of .* has a CAT model"):
        cat_levers.main(["--results-dir", str(tmp_path), "--records", "cat_effect_smollm2_b"])
