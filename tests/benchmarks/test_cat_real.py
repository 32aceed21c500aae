"""`benchmarks/cat_real.py` (the real-model CAT/CAPO benchmark) goes on from where a cut run stopped: each model is a
stage saved and recorded, so the CPU record can be built over several sessions. The models here are a tiny llama
and the training and measuring are stand-ins that count their calls; the stage logic is the benchmark's own."""

import json
import shutil
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import cat_real  # noqa: E402
import cat_real_record  # noqa: E402


class Cut(Exception):
    """The session ending in the middle of a stage."""


@pytest.fixture
def stand_ins(monkeypatch):
    import hf_robust.testing

    from hf_robust.testing import tiny_causal_lm

    calls = {"trained": [], "measured": []}

    def load_smollm2():
        return tiny_causal_lm()

    def safety_tune(model, tokenizer, adversarial, benign, steps, seed, output_dir):
        calls["trained"].append("safety-tuned")  # (`safety_seed`: a run whose training gives other weights)
        return tiny_causal_lm(seed=calls["safety_seed"])[0] if "safety_seed" in calls else model

    def train_variant(variant, folder, tokenizer, adversarial, benign, steps, seed, training_attack, mix):
        assert (folder / "config.json").is_file()  # every variant starts from the saved safety-tuned checkpoint
        if variant in calls.get("cut", ()):
            raise Cut(variant)
        calls["trained"].append(variant)
        calls.setdefault("mixes", []).append(mix)
        return tiny_causal_lm(seed=1)[0], 2.5

    def measure(model, tokenizer, held_out, benign_test, gcg_behaviours, strong=True, training_attack=None):
        calls["measured"].append(len(calls["measured"]))
        return {"clean_refusal": 0.5, "over_refusal": 0.1, "utility_nll": 1.0, "clean_refusal_extended": 0.5,
                **({"strong_asr": 0.25, "strong_budget": [0.0, 0.25], "strong_judged_asr": 0.5,
                    "strong_20_judged_asr": 0.25} if strong else {}),
                **({"training_attack_asr": 0.125, "training_attack_judged_asr": 0.5} if training_attack else {})}

    def measure_training_attack(model, tokenizer, held_out, training_attack):
        calls.setdefault("topped_up", []).append(training_attack["attack_eps"])
        return {"training_attack_asr": 0.0, "training_attack_judged_asr": 0.75}

    def measure_strong(model, tokenizer, held_out):
        calls.setdefault("topped_up", []).append("strong")
        return {"strong_asr": 0.375, "strong_budget": [0.0, 0.25], "strong_judged_asr": 0.5}

    monkeypatch.setattr(hf_robust.testing, "load_smollm2", load_smollm2, raising=False)
    monkeypatch.setattr(cat_real, "base_answers", lambda model, tokenizer, prompts, path: dict.fromkeys(prompts, "ok"))
    monkeypatch.setattr(cat_real, "safety_tune", safety_tune)
    monkeypatch.setattr(cat_real, "train_variant", train_variant)
    monkeypatch.setattr(cat_real, "measure", measure)
    monkeypatch.setattr(cat_real, "measure_training_attack", measure_training_attack)
    def measure_short_strong(model, tokenizer, held_out):
        calls.setdefault("topped_up", []).append("strong-20")
        return {"strong_20_asr": 0.0, "strong_20_judged_asr": 0.25}

    def measure_clean(model, tokenizer, held_out, benign_test):
        calls.setdefault("topped_up", []).append("clean")
        return {"clean_refusal": 0.5, "over_refusal": 0.1, "clean_refusal_extended": 0.75,
                "over_refusal_extended": 0.125}

    def measure_gcg(model, tokenizer, held_out, count):
        calls.setdefault("topped_up", []).append(f"gcg-{count}")
        return {"gcg_asr": 0.5, "gcg_seconds": 1.0, "gcg_behaviours": count}

    monkeypatch.setattr(cat_real, "measure_clean", measure_clean)
    monkeypatch.setattr(cat_real, "measure_gcg", measure_gcg)
    monkeypatch.setattr(cat_real, "measure_strong", measure_strong)
    monkeypatch.setattr(cat_real, "measure_short_strong", measure_short_strong)
    return calls


def options(tmp_path, **changes):
    return types.SimpleNamespace(**{
        "eps": 0.1, "attack_steps": 10, "eval_behaviours": None, "n_eval": 4, "benign": None,
        "results_dir": str(tmp_path / "results"),
        "record": "cat_cpu", "resume": False, "machine": "machine A", "safety_steps": 3, "steps": 2,
        "gcg_behaviours": 0, "seeds": [0], "work_dir": str(tmp_path / "work"), "variants": ["control", "cat", "capo"],
        **changes})


def recorded(tmp_path) -> dict:
    return json.loads((tmp_path / "results" / "cat_cpu.json").read_text())


def test_a_resumed_run_goes_on_from_the_first_model_not_measured(tmp_path, stand_ins):
    stand_ins["cut"] = ["cat"]
    with pytest.raises(Cut):
        cat_real.run(options(tmp_path))
    assert stand_ins["trained"] == ["safety-tuned", "control"]
    assert set(recorded(tmp_path)["seeds"]["0"]) == {"base", "safety-tuned", "control"}
    assert (tmp_path / "results" / "cat_cpu.md").read_text().count("| control (1 seed) |") == 1
    assert "Not measured yet (seed 0: cat, capo)" in (tmp_path / "results" / "cat_cpu.md").read_text()

    stand_ins.update(cut=[], trained=[], measured=[])
    record = cat_real.run(options(tmp_path, resume=True, machine="machine B"))
    assert stand_ins["trained"] == ["cat", "capo"] and len(stand_ins["measured"]) == 2
    models = record["seeds"]["0"]
    assert [models[name]["machine"] for name in ("base", "safety-tuned", "control", "cat", "capo")] == [
        "machine A", "machine A", "machine A", "machine B", "machine B"]
    assert models["cat"]["seconds_per_step"] == 2.5
    assert "machine A, machine B" in (tmp_path / "results" / "cat_cpu.md").read_text()
    assert "Not measured yet" not in (tmp_path / "results" / "cat_cpu.md").read_text()


def test_a_model_trained_but_not_measured_is_measured_from_its_saved_folder(tmp_path, stand_ins):
    cat_real.run(options(tmp_path, variants=["control"]))
    record = recorded(tmp_path)
    del record["seeds"]["0"]["control"]  # cut after saving the model, before measuring it
    (tmp_path / "results" / "cat_cpu.json").write_text(json.dumps(record))
    stand_ins.update(trained=[], measured=[])
    cat_real.run(options(tmp_path, variants=["control"], resume=True))
    assert stand_ins["trained"] == [] and len(stand_ins["measured"]) == 1
    assert recorded(tmp_path)["seeds"]["0"]["control"]["trained_on"] == "machine A"


def test_a_model_measured_before_the_judged_columns_gets_only_those_measured(tmp_path, stand_ins):
    cat_real.run(options(tmp_path, variants=["control", "cat"]))
    assert recorded(tmp_path)["seeds"]["0"]["cat"]["training_attack_judged_asr"] == 0.5  # measured with the rest
    record = recorded(tmp_path)
    for key in ("training_attack_asr", "training_attack_judged_asr", "strong_judged_asr", "strong_20_judged_asr"):
        del record["seeds"]["0"]["cat"][key]  # an older record
    (tmp_path / "results" / "cat_cpu.json").write_text(json.dumps(record))
    stand_ins.update(trained=[], measured=[])
    cat_real.run(options(tmp_path, variants=["control", "cat"], resume=True, machine="machine B"))
    assert stand_ins["trained"] == [] and stand_ins["measured"] == []
    assert stand_ins["topped_up"] == [0.1, "strong", "strong-20"]
    cat = recorded(tmp_path)["seeds"]["0"]["cat"]
    assert cat["training_attack_asr"] == 0.0 and cat["training_attack_judged_asr"] == 0.75
    assert cat["training_attack_judged_asr_machine"] == cat["strong_judged_asr_machine"] == "machine B"
    assert cat["strong_judged_asr"] == 0.5 and cat["strong_20_judged_asr"] == 0.25 and cat["machine"] == "machine A"
    # a number the record has is kept; a differing re-measurement goes beside it, an equal one nowhere
    assert cat["strong_asr"] == 0.25 and cat["strong_asr_rerun"] == 0.375 and "strong_budget_rerun" not in cat
    cat_real.run(options(tmp_path, variants=["control", "cat"], resume=True))
    assert stand_ins["topped_up"] == [0.1, "strong", "strong-20"]  # measured once


def test_a_run_cut_during_a_models_top_ups_keeps_those_it_finished(tmp_path, stand_ins, monkeypatch):
    cat_real.run(options(tmp_path, variants=["cat"]))
    record = recorded(tmp_path)
    for key in ("training_attack_asr", "training_attack_judged_asr", "strong_judged_asr", "strong_20_judged_asr"):
        del record["seeds"]["0"]["cat"][key]  # an older record
    (tmp_path / "results" / "cat_cpu.json").write_text(json.dumps(record))

    def strong_cut(model, tokenizer, held_out):
        raise Cut("strong")

    monkeypatch.setattr(cat_real, "measure_strong", strong_cut)
    with pytest.raises(Cut):
        cat_real.run(options(tmp_path, variants=["cat"], resume=True))
    cat = recorded(tmp_path)["seeds"]["0"]["cat"]
    assert cat["training_attack_judged_asr"] == 0.75 and "strong_judged_asr" not in cat  # the first one is kept
    assert stand_ins["topped_up"] == [0.1]


def test_older_models_get_the_extended_judge_clean_measured_and_attacks_rejudged(tmp_path, stand_ins):
    cat_real.run(options(tmp_path, variants=["cat"]))
    record = recorded(tmp_path)
    assert record["extended_judge"]["name"] == "refusal-substrings-extended"
    for name in ("safety-tuned", "cat"):
        del record["seeds"]["0"][name]["clean_refusal_extended"]  # measured before the extended judge
    # 4 behaviours: 1 forced, 1 kept reply that the extended judge refuses, 1 it passes
    record["seeds"]["0"]["cat"].update(strong_asr=0.25, strong_judged_asr=0.75,
                                       strong_unrefused_replies=["sorry, I can't help with that.", "Step one"])
    (tmp_path / "results" / "cat_cpu.json").write_text(json.dumps(record))
    stand_ins.update(trained=[], measured=[])
    cat_real.run(options(tmp_path, variants=["cat"], resume=True))
    assert stand_ins["trained"] == [] and stand_ins["measured"] == []
    assert stand_ins["topped_up"] == ["clean", "clean"]  # the safety-tuned model and CAT, from their saved folders
    models = recorded(tmp_path)["seeds"]["0"]
    assert models["safety-tuned"]["clean_refusal_extended"] == models["cat"]["clean_refusal_extended"] == 0.75
    assert models["cat"]["over_refusal_extended"] == 0.125 and "clean_refusal_rerun" not in models["cat"]
    assert models["cat"]["strong_extended_judged_asr"] == 0.5
    assert "strong emb. ASR, target or extended judge" in (tmp_path / "results" / "cat_cpu.md").read_text()


def test_a_resume_with_more_gcg_behaviours_measures_gcg_on_the_models_without_it(tmp_path, stand_ins):
    cat_real.run(options(tmp_path, variants=["control", "cat"]))
    record = recorded(tmp_path)
    record["seeds"]["0"]["control"]["gcg_asr"] = 0.25  # measured with the record's count (0 here: a stand-in)
    (tmp_path / "results" / "cat_cpu.json").write_text(json.dumps(record))
    stand_ins.update(trained=[], measured=[])
    cat_real.run(options(tmp_path, variants=["control", "cat"], resume=True, gcg_behaviours=3))
    assert stand_ins["trained"] == [] and stand_ins["measured"] == []
    assert stand_ins["topped_up"] == ["gcg-3"]  # CAT only: the control has GCG, the safety-tuned model is not attacked
    record = recorded(tmp_path)
    models = record["seeds"]["0"]
    assert models["cat"]["gcg_asr"] == 0.5 and models["cat"]["gcg_behaviours"] == 3
    assert models["control"]["gcg_asr"] == 0.25 and models["control"]["gcg_behaviours"] == 0
    assert record["evaluation"]["gcg_behaviours"] == 3
    with pytest.raises(SystemExit, match="evaluation"):  # any other evaluation setting must still agree
        cat_real.run(options(tmp_path, variants=["cat"], resume=True, n_eval=3))


def test_without_the_safety_checkpoint_one_trained_again_with_other_weights_makes_every_later_model_anew(
        tmp_path, stand_ins, capsys):
    cat_real.run(options(tmp_path, variants=["control"]))
    (tmp_path / "work" / "seed0" / "safety-tuned" / "config.json").unlink()
    stand_ins.update(trained=[], measured=[], safety_seed=2)
    cat_real.run(options(tmp_path, variants=["control", "cat"], resume=True))  # cat must start from the same one
    assert stand_ins["trained"] == ["safety-tuned", "control", "cat"]
    assert len(stand_ins["measured"]) == 3  # base kept: it does not depend on the checkpoint
    assert "differs from the recorded one, so ['control'] are measured anew" in capsys.readouterr().out


def test_a_safety_checkpoint_trained_again_with_the_recorded_weights_keeps_the_models_measured_from_it(
        tmp_path, stand_ins, capsys):
    cat_real.run(options(tmp_path, variants=["control"]))
    first = recorded(tmp_path)["seeds"]["0"]
    assert first["safety-tuned"]["weights_sha256"] == cat_real.weights_digest(cat_real_record.load_saved(
        tmp_path / "work" / "seed0" / "safety-tuned"))
    shutil.rmtree(tmp_path / "work")  # a fresh clone: the record, not the models
    stand_ins.update(trained=[], measured=[])
    record = cat_real.run(options(tmp_path, variants=["control", "cat"], resume=True, machine="machine B"))
    assert stand_ins["trained"] == ["safety-tuned", "cat"] and len(stand_ins["measured"]) == 2
    models = record["seeds"]["0"]
    assert models["control"] == first["control"]  # kept as measured, on machine A
    assert models["safety-tuned"]["weights_sha256"] == first["safety-tuned"]["weights_sha256"]
    assert "has the recorded weights" in capsys.readouterr().out


def test_a_record_without_the_safety_checkpoints_digest_gets_it_from_the_saved_folder_or_measures_anew(
        tmp_path, stand_ins):
    cat_real.run(options(tmp_path, variants=["control"]))
    record = recorded(tmp_path)
    digest = record["seeds"]["0"]["safety-tuned"].pop("weights_sha256")  # measured before digests existed
    (tmp_path / "results" / "cat_cpu.json").write_text(json.dumps(record))
    stand_ins.update(trained=[], measured=[])
    cat_real.run(options(tmp_path, variants=["control"], resume=True))
    assert stand_ins["trained"] == [] and recorded(tmp_path)["seeds"]["0"]["safety-tuned"]["weights_sha256"] == digest
    record = recorded(tmp_path)
    del record["seeds"]["0"]["safety-tuned"]["weights_sha256"]
    (tmp_path / "results" / "cat_cpu.json").write_text(json.dumps(record))
    shutil.rmtree(tmp_path / "work")  # and now its folder is gone too: nothing to compare the new one with
    cat_real.run(options(tmp_path, variants=["control", "cat"], resume=True))
    assert stand_ins["trained"] == ["safety-tuned", "control", "cat"]


def test_a_seed_measured_whole_is_kept_without_its_saved_models_and_base_is_measured_once(tmp_path, stand_ins):
    cat_real.run(options(tmp_path, variants=["control"]))
    shutil.rmtree(tmp_path / "work")  # a fresh clone: the record, not the models
    stand_ins.update(trained=[], measured=[])
    record = cat_real.run(options(tmp_path, variants=["control"], seeds=[0, 1], resume=True))
    assert stand_ins["trained"] == ["safety-tuned", "control"] and len(stand_ins["measured"]) == 2  # seed 1 only
    assert set(record["seeds"]["0"]) == {"base", "safety-tuned", "control"}
    assert set(record["seeds"]["1"]) == {"safety-tuned", "control"}
    stand_ins.update(trained=[], measured=[])
    cat_real.run(options(tmp_path, variants=["control"], seeds=[1], resume=True))
    assert stand_ins["trained"] == [] and stand_ins["measured"] == []


def test_only_the_models_asked_for_are_listed_as_not_measured(tmp_path, stand_ins):
    cat_real.run(options(tmp_path, variants=["cat"]))  # e.g. a CAT-only record of another training radius
    assert recorded(tmp_path)["variants"] == ["cat"]
    assert "Not measured yet" not in (tmp_path / "results" / "cat_cpu.md").read_text()
    stand_ins["cut"] = ["control"]
    with pytest.raises(Cut):
        cat_real.run(options(tmp_path, variants=["control"], resume=True))
    assert recorded(tmp_path)["variants"] == ["control", "cat"]
    assert "Not measured yet (seed 0: control)" in (tmp_path / "results" / "cat_cpu.md").read_text()


def test_resuming_a_record_of_other_settings_is_refused_naming_them(tmp_path, stand_ins):
    cat_real.run(options(tmp_path, variants=[]))
    before = (tmp_path / "results" / "cat_cpu.json").read_text()
    with pytest.raises(SystemExit, match=r"other \['steps'\]"):
        cat_real.run(options(tmp_path, variants=[], resume=True, steps=5))
    assert (tmp_path / "results" / "cat_cpu.json").read_text() == before  # nothing lost


def test_a_training_attack_stronger_than_the_strong_yardstick_is_refused_before_any_work(tmp_path, stand_ins):
    with pytest.raises(ValueError, match="--eps/--attack-steps"):
        cat_real.run(options(tmp_path, attack_steps=101))  # the strong preset takes 100 steps
    assert not (tmp_path / "results").exists() and stand_ins["trained"] == stand_ins["measured"] == []


def test_the_record_keeps_the_training_attack_steps_and_step_size_asked_for(tmp_path, stand_ins):
    cat_real.run(options(tmp_path, variants=["cat"], attack_steps=30, attack_step_size=0.03))
    attack = recorded(tmp_path)["training_attack"]
    assert attack["attack_steps"] == 30 and attack["attack_step_size"] == 0.03


def test_a_uniform_training_attack_start_is_recorded_and_trained_with_while_zero_stays_out_of_the_record(
        tmp_path, stand_ins, monkeypatch):
    attacks = []
    train_variant = cat_real.train_variant
    monkeypatch.setattr(cat_real, "train_variant", lambda *arguments: attacks.append(arguments[7])
                        or train_variant(*arguments))
    cat_real.run(options(tmp_path, variants=["cat"], attack_init="uniform"))
    assert recorded(tmp_path)["training_attack"]["attack_init"] == "uniform"
    assert attacks == [recorded(tmp_path)["training_attack"]]
    assert "fresh uniform start" in (tmp_path / "results" / "cat_cpu.md").read_text()
    shutil.rmtree(tmp_path / "results")
    cat_real.run(options(tmp_path, variants=["cat"], attack_init="zero"))  # the earlier records' dict, unchanged
    assert "attack_init" not in recorded(tmp_path)["training_attack"]
    assert "uniform" not in (tmp_path / "results" / "cat_cpu.md").read_text()


def test_the_data_mix_is_recorded_and_an_older_record_without_it_resumes_as_control_rows(tmp_path, stand_ins):
    cat_real.run(options(tmp_path, variants=["control"]))
    assert recorded(tmp_path)["data_mix"] == "control-rows" and stand_ins["mixes"] == ["control-rows"]
    older = recorded(tmp_path)
    del older["data_mix"]  # written before the setting existed
    (tmp_path / "results" / "cat_cpu.json").write_text(json.dumps(older))
    stand_ins.update(trained=[], mixes=[])
    cat_real.run(options(tmp_path, variants=["control", "cat"], resume=True))
    assert stand_ins["trained"] == ["cat"] and stand_ins["mixes"] == ["control-rows"]
    assert recorded(tmp_path)["data_mix"] == "control-rows"
    with pytest.raises(SystemExit, match=r"other \['data_mix'\]"):
        cat_real.run(options(tmp_path, variants=[], resume=True, paper_mix=True))
    cat_real.run(options(tmp_path, variants=["control"], record="paper", paper_mix=True,
                         work_dir=str(tmp_path / "paper")))
    paper = json.loads((tmp_path / "results" / "paper.json").read_text())
    assert paper["data_mix"] == "paper" and stand_ins["mixes"][-1] == "paper"
    assert "`--paper-mix`" in (tmp_path / "results" / "paper.md").read_text()


@pytest.fixture(scope="module")
def rows():
    adversarial = [{"prompt": f"harmful request {index}", "target": f"Sure, here is {index}"} for index in range(40)]
    benign = {f"benign request {index}": f"answer {index}" for index in range(12)}
    return adversarial, benign


def refusal_share(dataset) -> float:
    answers = [row["messages"][1]["content"] for row in dataset]
    return sum(answer in cat_real.REFUSALS for answer in answers) / len(answers)


def test_control_rows_mix_is_the_data_the_first_record_trained_on(rows):
    adversarial, benign = rows
    control = cat_real.training_data("control", "control-rows", adversarial, benign, seed=0)["rows"]
    cat = cat_real.training_data("cat", "control-rows", adversarial, benign, seed=0)
    assert len(control) == 52 and refusal_share(control) == pytest.approx(40 / 52)
    assert cat["adversarial_fraction"] == 0.5 and sorted(map(str, cat["utility"])) == sorted(map(str, control))
    assert [row["prompt"] for row in cat["adversarial"]] == [row["prompt"] for row in adversarial]
    pairs = cat_real.training_data("capo", "control-rows", adversarial, benign, seed=0)["pairs"]
    assert len(pairs) == 40 and all(row["rejected"][0]["content"].startswith("Sure") for row in pairs)


def test_paper_mix_gives_control_and_cat_the_same_harmful_share_and_cat_benign_only_utility(rows):
    adversarial, benign = rows
    control = cat_real.training_data("control", "paper", adversarial, benign, seed=0)["rows"]
    cat = cat_real.training_data("cat", "paper", adversarial, benign, seed=0)
    assert cat["adversarial_fraction"] == 0.125 and refusal_share(cat["utility"]) == 0
    assert len(cat["utility"]) == len(benign)
    assert 0.05 < refusal_share(control) < 0.25  # about 0.125: rows drawn with those probabilities
    with pytest.raises(ValueError, match="`mix`"):
        cat_real.training_data("cat", "half", adversarial, benign, seed=0)


def test_paper_refusals_mix_gives_cat_the_controls_rows_as_utility(rows):
    adversarial, benign = rows
    control = cat_real.training_data("control", "paper-refusals", adversarial, benign, seed=0)["rows"]
    cat = cat_real.training_data("cat", "paper-refusals", adversarial, benign, seed=0)
    assert list(map(str, control)) == list(map(str, cat_real.training_data("control", "paper", adversarial, benign,
                                                                          seed=0)["rows"]))  # the paper's control
    assert cat["adversarial_fraction"] == 0.125 and sorted(map(str, cat["utility"])) == sorted(map(str, control))
    assert 0.05 < refusal_share(cat["utility"]) < 0.25  # the clean refusals the paper mix leaves out


def test_the_data_mix_option_reaches_the_record(tmp_path, stand_ins):
    cat_real.run(options(tmp_path, variants=["cat"], data_mix="paper-refusals"))
    record = recorded(tmp_path)
    assert record["data_mix"] == "paper-refusals" and stand_ins["mixes"] == ["paper-refusals"]
    assert "`--data-mix paper-refusals`" in (tmp_path / "results" / "cat_cpu.md").read_text()


def test_paper_quarter_mix_doubles_the_harmful_share_of_control_and_cat(rows):
    adversarial, benign = rows
    control = cat_real.training_data("control", "paper-quarter", adversarial, benign, seed=0)["rows"]
    paper = cat_real.training_data("control", "paper", adversarial, benign, seed=0)["rows"]
    cat = cat_real.training_data("cat", "paper-quarter", adversarial, benign, seed=0)
    assert cat["adversarial_fraction"] == 0.25 and refusal_share(cat["utility"]) == 0
    assert len(cat["utility"]) == len(benign)
    assert 0.15 < refusal_share(control) < 0.35 and refusal_share(control) > refusal_share(paper)


def test_the_quarter_mix_reaches_the_record_and_its_description(tmp_path, stand_ins):
    cat_real.run(options(tmp_path, variants=["control"], data_mix="paper-quarter"))
    assert recorded(tmp_path)["data_mix"] == "paper-quarter" and stand_ins["mixes"] == ["paper-quarter"]
    assert "probability 0.25" in (tmp_path / "results" / "cat_cpu.md").read_text()
