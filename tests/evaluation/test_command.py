"""`hf-robust eval`: a saved model or adapter in, robustness.json + report.md + PNGs + a round-tripping card out."""

import json

import pytest
from huggingface_hub import ModelCard

from hf_robust.cli import main as cli_main
from hf_robust.evaluation import presets
from hf_robust.evaluation.command import EvalArguments, main
from hf_robust.evaluation.presets import AttackPreset
from hf_robust.hub import RobustnessResult, build_robustness_card, robustness_results_from_card

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_GCG = AttackPreset("gcg-test", "gcg", {"n_iters": 2, "search_width": 16, "topk": 16, "suffix_init": "! !"},
                        "A two-iteration GCG for tests.")


@pytest.fixture(autouse=True)
def small_gcg(monkeypatch):
    monkeypatch.setattr(presets, "EVALUATION_PRESETS", {**presets.EVALUATION_PRESETS, "gcg-test": TINY_GCG})


def run(tmp_path, model, *extra, attacks="clean,train,gcg-test,universal-gcg-test"):
    output = tmp_path / "eval"
    main(EvalArguments(**{"model_name_or_path": str(model), "max_behaviours": 2, "attacks": attacks,
                          "max_new_tokens": 4, "output_dir": str(output), **dict(extra)}))
    return output


def check_outputs(output, attacks, count=2):
    summary = json.loads((output / "robustness.json").read_text())
    assert list(summary["attacks"]) == attacks
    assert summary["behaviours"] == {"dataset": "AdvBench", "split": "test", "count": count}
    for name, attack in summary["attacks"].items():
        assert len(attack["rows"]) == count and attack["settings"]["name"] in (name, name.removeprefix("universal-"))
    report = (output / "report.md").read_text()
    assert all(f"## {name}" in report for name in attacks)
    for figure in ("asr_vs_budget.png", "loss_curves.png"):
        data = (output / figure).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    card = ModelCard((output / "README.md").read_text())
    results = robustness_results_from_card(card)
    by_preset = {result.attack_preset: result for result in results if result.attack_preset}
    for name in attacks[1:]:
        assert by_preset[name.removeprefix("universal-")].value == pytest.approx(
            summary["attacks"][name]["success_rate"])
    refusal = [result for result in results if result.metric == "refusal_rate"]
    assert refusal[0].value == pytest.approx(1 - summary["attacks"]["clean"]["success_rate"])
    return summary, results


def test_tiny_model_folder(tmp_path, model_folder):
    output = run(tmp_path, model_folder)
    check_outputs(output, ["clean", "train", "gcg-test", "universal-gcg-test"])


@pytest.mark.parametrize("judge", [None, "refusal-substrings-extended"])
def test_embedding_judged_by_its_reply_is_recorded_in_the_json_report_and_card(tmp_path, model_folder, judge):
    chosen = (("judge", judge),) if judge else ()
    output = run(tmp_path, model_folder, ("embedding_success", "target_or_judge"), *chosen, attacks="clean,train")
    summary, results = check_outputs(output, ["clean", "train"])
    train = summary["attacks"]["train"]
    judge = judge or "refusal-substrings-gcg"  # the default
    assert train["settings"]["success"] == "target_or_judge"
    assert train["settings"]["judge"]["name"] == summary["attacks"]["clean"]["settings"]["judge"]["name"] == judge
    assert all(isinstance(row["response"], str) and "target_success" in row for row in train["rows"])
    assert "reply under the last iterate" in (output / "report.md").read_text()
    card = next(result for result in results if result.attack_preset == "train")
    assert card.attack_config["success"] == "target_or_judge"
    assert card.attack_config["judge"] == {"name": judge, "version": "v1"}


def test_adapter_folder_and_an_existing_card_is_updated(tmp_path, model_folder):
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(model_folder)
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(model_folder).save_pretrained(adapter)
    old = RobustnessResult(attack="embedding_attack", metric="attack_success_rate", value=0.9, dataset="AdvBench",
                           split="test", attack_preset="train")
    kept = RobustnessResult(attack="gcg", metric="attack_success_rate", value=0.5, dataset="Other")
    original = build_robustness_card([old, kept], method="cat", model_name="me/adapter")
    original.save(adapter / "README.md")
    output = run(tmp_path, adapter, attacks="clean,train")
    summary, results = check_outputs(output, ["clean", "train"])
    assert kept in results  # another dataset's result stays
    train = [result for result in results if result.attack_preset == "train"]
    assert len(train) == 1 and train[0].value == pytest.approx(summary["attacks"]["train"]["success_rate"])
    updated = ModelCard((output / "README.md").read_text())
    assert updated.text == original.text and "cat" in updated.data.tags  # the card's prose and tags are kept


def test_push_uploads_the_card(tmp_path, model_folder, monkeypatch):
    pushed = []
    monkeypatch.setattr(ModelCard, "push_to_hub", lambda card, repo_id, **kwargs: pushed.append((repo_id, card)))
    run(tmp_path, model_folder, ("push_to_hub", True), ("hub_model_id", "me/tiny"), attacks="clean")
    assert pushed[0][0] == "me/tiny"
    assert robustness_results_from_card(pushed[0][1])[0].metric == "refusal_rate"


@pytest.mark.real
def test_smollm2_small_budget(tmp_path):
    output = run(tmp_path, "smollm2", ("max_behaviours", 1), attacks="clean,strong,gcg-test")
    summary, _ = check_outputs(output, ["clean", "strong", "gcg-test"], count=1)
    # The strong preset fills its ball on a real model: the largest per-token norm reaches the radius.
    assert max(row["delta_norm_fraction"] for row in summary["attacks"]["strong"]["rows"]) >= 0.9


@pytest.mark.parametrize(("field", "value"), [
    ("attacks", "clean,nonsense"), ("behaviours_split", "validation"), ("max_behaviours", 0), ("dtype", "int8"),
    ("batch_size", 0), ("max_new_tokens", 0), ("seed", -1), ("model_name_or_path", ""),
    ("embedding_success", "judge"), ("judge", "keyword"),
])
def test_bad_arguments_fail_before_any_work(field, value):
    name = "max_behaviours" if field == "max_behaviours" else field
    with pytest.raises(ValueError, match=name):
        EvalArguments(**{"model_name_or_path": "smollm2", field: value})


def test_push_needs_a_repo_for_a_local_folder(model_folder):
    with pytest.raises(ValueError, match="hub_model_id"):
        EvalArguments(model_name_or_path=model_folder, push_to_hub=True)


def test_cli_lists_the_command(capsys):
    with pytest.raises(SystemExit):
        cli_main(["eval", "--help"])
    assert "--attacks" in capsys.readouterr().out
