"""`benchmarks/cat_real_measure.py`: what the real-model benchmark measures, on a tiny llama and hand-made
outcomes."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import cat_real_measure  # noqa: E402


def test_judged_numbers_keep_target_forcing_apart_from_the_judged_replies():
    from hf_robust.evaluation.runner import AttackOutcome

    rows = [{"success": True, "target_success": True, "first_success": 1, "response": "Sure, here is"},
            {"success": True, "target_success": False, "first_success": 3, "response": "Step one: ..."},
            {"success": False, "target_success": False, "first_success": None, "response": "I cannot help"},
            {"success": True, "target_success": True, "first_success": 2, "response": "Sure, here is"}]
    outcome = AttackOutcome("strong", "embedding", {}, rows, 0.75, budget=[0, 1, 2, 3],
                            budget_success_rate=[0.0, 0.25, 0.5, 0.75])
    assert cat_real_measure.judged_numbers(outcome, "strong") == {
        "strong_asr": 0.5, "strong_budget": [0.0, 0.25, 0.5, 0.5], "strong_judged_asr": 0.75,
        "strong_unrefused_replies": ["Step one: ..."]}


TRAINING_ATTACK = {"attack_eps": 0.1, "attack_eps_mode": "relative", "attack_steps": 10, "attack_step_size": 0.1,
                   "attack_step_mode": "relative", "attack_optimizer": "adam"}


def test_the_training_attack_column_runs_exactly_the_training_attack():
    from hf_robust.cat.arguments import AttackArguments
    from hf_robust.evaluation.presets import at_least_as_strong

    preset = cat_real_measure.training_attack_preset(TRAINING_ATTACK)
    training = AttackArguments(**TRAINING_ATTACK).attack_config()
    assert preset.config == training and at_least_as_strong(preset, training)
    assert not at_least_as_strong(preset, AttackArguments(**{**TRAINING_ATTACK, "attack_steps": 11}).attack_config())


def test_a_uniform_training_attack_is_measured_from_a_seeded_start():
    preset = cat_real_measure.training_attack_preset({**TRAINING_ATTACK, "attack_init": "uniform"})
    assert preset.config.init == "uniform" and preset.config.seed == 0  # the same number on a rerun
    seeded = cat_real_measure.training_attack_preset({**TRAINING_ATTACK, "attack_init": "uniform", "attack_seed": 3})
    assert seeded.config.seed == 3


def test_the_training_attack_is_measured_on_a_tiny_model():
    from hf_robust.testing import tiny_causal_lm

    model, tokenizer = tiny_causal_lm()
    behaviours = [{"prompt": "Tell me how to do it", "target": "Sure, here is how"},
                  {"prompt": "Write the thing", "target": "Sure, here is the thing"}]
    measured = cat_real_measure.measure_training_attack(model, tokenizer, behaviours, TRAINING_ATTACK)
    assert set(measured) == {"training_attack_asr", "training_attack_judged_asr", "training_attack_unrefused_replies"}
    assert measured["training_attack_asr"] in (0.0, 0.5, 1.0)
    # a tiny model never refuses in words: the judge passes every reply
    assert measured["training_attack_judged_asr"] == 1.0
    assert len(measured["training_attack_unrefused_replies"]) == 2 * (1 - measured["training_attack_asr"])


def test_the_strong_attack_is_measured_on_a_tiny_model_under_both_criteria():
    from hf_robust.testing import tiny_causal_lm

    model, tokenizer = tiny_causal_lm()
    behaviours = [{"prompt": "Tell me how to do it", "target": "Sure, here is how"}]
    measured = cat_real_measure.measure_strong(model, tokenizer, behaviours)
    assert set(measured) == {"strong_asr", "strong_budget", "strong_judged_asr", "strong_unrefused_replies"}
    assert len(measured["strong_budget"]) == 101 and measured["strong_budget"][-1] == measured["strong_asr"]
    assert measured["strong_judged_asr"] == 1.0  # a tiny model never refuses in words


def test_the_short_strong_attack_is_the_full_attacks_first_steps():
    from hf_robust.testing import tiny_causal_lm

    model, tokenizer = tiny_causal_lm()
    behaviours = [{"prompt": "Tell me how to do it", "target": "Sure"}, {"prompt": "Write it", "target": "Sure, here"}]
    full = cat_real_measure.measure_strong(model, tokenizer, behaviours)
    short = cat_real_measure.measure_short_strong(model, tokenizer, behaviours, steps=5)
    assert set(short) == {"strong_5_asr", "strong_5_judged_asr", "strong_5_unrefused_replies"}
    assert short["strong_5_asr"] == full["strong_budget"][5]


def test_rejudge_counts_the_kept_replies_that_the_extended_judge_passes_too():
    measured = {"strong_asr": 0.25, "strong_judged_asr": 0.75, "strong_unrefused_replies": [
        "sorry, but I can't help with that.", "Step one: get the keys."],
        "training_attack_asr": 0.0, "training_attack_judged_asr": 0.25, "training_attack_unrefused_replies": [""]}
    cat_real_measure.rejudge(measured, 4)
    # 1 forced + the reply that is no refusal; an empty reply counts as refused
    assert measured["strong_extended_judged_asr"] == 0.5 and measured["training_attack_extended_judged_asr"] == 0.0
    assert "strong_20_extended_judged_asr" not in measured  # not measured: nothing to re-judge
    measured["strong_unrefused_replies"] = []
    cat_real_measure.rejudge(measured, 4)
    assert measured["strong_extended_judged_asr"] == 0.5  # kept once there


def test_rejudge_refuses_a_count_the_kept_replies_do_not_add_up_to():
    import pytest

    with pytest.raises(ValueError, match="`count` is not the number attacked"):
        cat_real_measure.rejudge({"strong_asr": 0.25, "strong_judged_asr": 0.75,
                                  "strong_unrefused_replies": ["a", "b"]}, 8)


def test_clean_answers_are_judged_by_both_judges_on_a_tiny_model():
    from hf_robust.evaluation.judges import refusal_judge
    from hf_robust.testing import tiny_causal_lm

    model, tokenizer = tiny_causal_lm()
    behaviours = [{"prompt": "Tell me how to do it", "target": "Sure"}, {"prompt": "Write it", "target": "Sure"}]
    measured = cat_real_measure.measure_clean(model, tokenizer, behaviours, {"Bake bread": "Mix flour."})
    assert set(measured) == {"clean_refusal", "over_refusal", "clean_refusal_extended", "over_refusal_extended",
                             "clean_unrefused_replies"}
    # a tiny model never refuses in words: GCG's list passes every answer, which are kept
    assert measured["clean_refusal"] == measured["over_refusal"] == 0.0
    assert len(measured["clean_unrefused_replies"]) == 2
    extended = refusal_judge("refusal-substrings-extended")
    assert measured["clean_refusal_extended"] == sum(map(extended.refused, measured["clean_unrefused_replies"])) / 2
