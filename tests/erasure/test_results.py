"""PromptAttackResult arithmetic on hand-made rows (no model): UnlearnDiffAtk's pre-ASR / ASR, per-attack rates,
mean leakage, card results and plain data."""

import json

import pytest
import torch

from hf_robust.erasure.conditioning import SoftTokens
from hf_robust.erasure.prompt_attack_config import PromptAttackConfig
from hf_robust.erasure.results import PromptAttackResult, PromptAttackRow


def rows():
    soft = SoftTokens([torch.zeros(1, 1, 4)], torch.zeros(1, 1, dtype=torch.long))
    return [
        PromptAttackRow("a", 0.2, True, "x a", [1, 2], 0.1, True, [0.2, 0.1], 0.3, True, [1.0], soft, [torch.ones(3)]),
        PromptAttackRow("b", 4.0, False, "x b", [1, 3], 0.4, True, [4.0, 0.4], 3.0, False, [2.0]),
        PromptAttackRow("c", 4.0, False, "x c", [1, 4], 2.0, False, [4.0, 2.0], 0.2, True, [3.0]),
        PromptAttackRow("d", 4.0, False, "x d", [1, 5], 3.0, False, [4.0, 3.0], 3.5, False, [4.0]),
    ]


def test_rates_follow_unlearndiffatk():
    result = PromptAttackResult(rows(), PromptAttackConfig())
    assert result.pre_attack_success_rate == 0.25  # leaked without attack: a
    assert result.success_rate("discrete") == 0.5  # a (before), b
    assert result.success_rate("soft") == 0.5  # a, c
    assert result.attack_success_rate == 0.75  # a, b, c; d resists both
    assert [row.success for row in result.rows] == [True, True, True, False]
    assert result.mean_leakage() == pytest.approx(3.05)
    assert result.mean_leakage("discrete") == pytest.approx(1.375)
    assert result.metrics() == pytest.approx({
        "attack_success_rate": 0.75, "pre_attack_success_rate": 0.25, "mean_before": 3.05,
        "discrete_success_rate": 0.5, "mean_discrete": 1.375, "soft_success_rate": 0.5, "mean_soft": 1.75})


def test_only_the_attacks_run_count():
    result = PromptAttackResult(rows(), PromptAttackConfig(attacks="soft"))
    assert result.attack_success_rate == 0.5  # b leaked only to the discrete attack, which was not run
    with pytest.raises(ValueError, match="`attack` must be one of the attacks run"):
        result.success_rate("discrete")
    with pytest.raises(ValueError, match="`attack` must be None or one of the attacks run"):
        result.mean_leakage("discrete")


def test_no_rows_give_nan():
    result = PromptAttackResult([], PromptAttackConfig())
    assert result.attack_success_rate != result.attack_success_rate
    assert result.mean_leakage() != result.mean_leakage()


def test_card_results_and_plain_data():
    result = PromptAttackResult(rows(), PromptAttackConfig(), detector=True)
    card = {(item.attack, item.metric): item.value for item in result.robustness_results(split="test")}
    assert card == pytest.approx({
        ("no_attack", "attack_success_rate"): 0.25, ("no_attack", "concept_leakage"): 3.05,
        ("unlearndiffatk", "attack_success_rate"): 0.5, ("unlearndiffatk", "concept_leakage"): 1.375,
        ("soft_prompt", "attack_success_rate"): 0.5, ("soft_prompt", "concept_leakage"): 1.75,
        ("prompt_attack", "attack_success_rate"): 0.75})
    settings = result.robustness_results()[0].attack_config
    assert settings["success"] == "concept_detector" and settings["prompts"] == 4
    data = json.loads(json.dumps(result.to_dict()))  # JSON-ready: no tensors
    assert data["detector"] and data["attack_success_rate"] == 0.75
    assert [row["success"] for row in data["rows"]] == [True, True, True, False]
    assert "soft_tokens" not in data["rows"][0] and "soft_input_ids" not in data["rows"][0]
