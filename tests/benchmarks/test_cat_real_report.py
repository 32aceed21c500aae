"""`benchmarks/cat_real_report.py`: the Markdown table averages over seeds with their spread, names the models not
measured yet (no number claimed for them) and what each model trained on; the PNG is a real image."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import cat_real_report  # noqa: E402


def record(seeds: dict) -> dict:
    return {"model": "SmolLM2", "machine": "machine A", "data_mix": "paper", "seeds": seeds,
            "steps": {"safety": 3, "variants": 2}, "lora": {"r": 16},
            "training_attack": {"attack_eps": 0.1, "attack_eps_mode": "relative", "attack_steps": 10,
                                "attack_step_size": 0.1, "attack_optimizer": "adam"},
            "evaluation": {"held_out_behaviours": "4 of advbench", "strong": {"name": "strong"},
                           "gcg": {"name": "gcg-cpu"}, "gcg_behaviours": 2, "benign_test": "3 of builtin",
                           "judge": "refusal-substrings-gcg v1"},
            "targets": {"CAT strong ASR": "<= 50% of control's"}}


def measured(strong_asr: float) -> dict:
    return {"clean_refusal": 1.0, "strong_asr": strong_asr, "strong_budget": [0.0, strong_asr],
            "over_refusal": 0.1, "utility_nll": 0.5, "seconds_per_step": 2.0}


def test_table_gives_mean_and_spread_over_seeds_and_a_dash_for_what_a_model_lacks():
    table = cat_real_report.table(record({"0": {"base": {"clean_refusal": 0.0}, "cat": measured(0.25)},
                                          "1": {"cat": measured(0.75)}}))
    rows = {line.split(" | ")[0]: line for line in table.splitlines()}
    assert "| cat (2 seeds)" in rows and "50% ± 35% |" in rows["| cat (2 seeds)"]  # a rate's spread in points
    assert "0.50 ± 0.00 |" in rows["| cat (2 seeds)"]  # the NLL's in nats
    assert rows["| base (1 seed)"].count("–") == 14  # only clean refusal measured for it
    extended = cat_real_report.table(record({"0": {"cat": {**measured(0.25), "clean_refusal_extended": 0.5}}}))
    assert "(1 of 2 seeds)" not in rows["| cat (2 seeds)"]  # every column of that row has both seeds
    assert "| cat (1 seed) | 100% | 50% |" in extended  # the extended judge's rates are rates too


def test_markdown_names_the_models_not_measured_and_the_data_each_trained_on(tmp_path):
    path = tmp_path / "record.md"
    cat_real_report.write_markdown(record({"0": {"base": {"clean_refusal": 0.0}, "control": measured(1.0)}}), path)
    text = path.read_text()
    assert "Not measured yet (seed 0: safety-tuned, cat)" in text  # CAPO: the same model under either mix
    assert "`--paper-mix`" in text and "Targets: CAT strong ASR <= 50% of control's." in text
    assert "eps 0.1 relative, 10 adam steps of 0.1 x radius)" in text  # the training attack, step size included
    control_rows = {**record({"0": {"base": {}, "control": measured(1.0)}}), "data_mix": "control-rows"}
    cat_real_report.write_markdown(control_rows, path)
    assert "Not measured yet (seed 0: safety-tuned, cat, capo)" in path.read_text()


def test_plot_writes_a_png_with_the_strong_attack_curve(tmp_path):
    path = tmp_path / "record.png"
    cat_real_report.plot(record({"0": {"control": measured(1.0), "cat": measured(0.5)}}), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_markdown_gives_the_strong_attack_steps_each_model_needs():
    fast, slow = measured(1.0), measured(1.0)
    fast["strong_budget"], slow["strong_budget"] = [0.0, 0.6, 1.0], [0.0, 0.0, 0.2, 0.5, 0.9]
    text = cat_real_report.budget_description(record({"0": {"control": fast, "cat": slow}, "1": {"cat": slow}}))
    assert "control 1 / 2; cat 3 / 4." in text
    assert cat_real_report.steps_to_reach([0.0, 0.4], 0.5) is None
    assert "cat 3 / never" in cat_real_report.budget_description(
        record({"0": {"cat": {**slow, "strong_budget": [0.0, 0.0, 0.2, 0.5, 0.8]}}}))


def test_a_column_measured_on_fewer_seeds_than_its_row_says_how_many():
    table = cat_real_report.table(record({"0": {"cat": {**measured(0.25), "gcg_asr": 0.0}},
                                          "1": {"cat": measured(0.75)}}))
    row = next(line for line in table.splitlines() if line.startswith("| cat (2 seeds)"))
    assert "| 0% (1 of 2 seeds) |" in row and "50% ± 35% |" in row
