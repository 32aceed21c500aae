"""Tests for hf_robust.hub.results: a RobustnessResult checks its fields and reads back from a card."""

import numpy
import pytest
import torch
from huggingface_hub import ModelCard

from hf_robust.hub import RobustnessResult, build_robustness_card, robustness_results_from_card

from .common import make_results


def test_card_keeps_the_attack_apart_from_other_eval_results():
    card = build_robustness_card(make_results()[:1], method="cat", model_name="m")
    plain = RobustnessResult("x", "accuracy", 0.9, "beans").to_eval_result()
    plain.metric_config = None
    card.data.eval_results.append(plain)
    assert robustness_results_from_card(ModelCard(str(card))) == make_results()[:1]


def test_reading_results_rejects_bad_input():
    with pytest.raises(TypeError, match="`card`"):
        robustness_results_from_card(3)
    plain = RobustnessResult("x", "accuracy", 0.9, "beans").to_eval_result()
    plain.metric_config = None
    with pytest.raises(ValueError, match="`eval_result`"):
        RobustnessResult.from_eval_result(plain)


def test_robustness_result_normalizes_values():
    settings = {"sizes": (1, numpy.int64(2)), "rate": numpy.float32(0.5), "inner": {"steps": numpy.int32(3)},
                "seed": None}
    result = RobustnessResult("gcg", "asr", numpy.float64(1), "AdvBench", attack_config=settings)
    assert type(result.value) is float and result.value == 1.0
    assert result.dataset_type == "AdvBench"
    assert result.attack_config == {"sizes": [1, 2], "rate": 0.5, "inner": {"steps": 3}}  # None: not on a card
    assert type(result.attack_config["sizes"][1]) is int and type(result.attack_config["rate"]) is float
    card = build_robustness_card([result], method="cat", model_name="m")
    assert robustness_results_from_card(str(card)) == [result]  # yaml.safe_load would refuse numpy objects


@pytest.mark.parametrize(
    ("changes", "error", "field_name"),
    [
        ({"attack": ""}, ValueError, "attack"),
        ({"attack": 3}, TypeError, "attack"),
        ({"metric": "  "}, ValueError, "metric"),
        ({"dataset": None}, TypeError, "dataset"),
        ({"dataset_type": ""}, ValueError, "dataset_type"),
        ({"task": ""}, ValueError, "task"),
        ({"split": 0}, TypeError, "split"),
        ({"value": float("nan")}, ValueError, "value"),
        ({"value": float("inf")}, ValueError, "value"),
        ({"value": "0.5"}, TypeError, "value"),
        ({"value": True}, TypeError, "value"),
        ({"attack_config": [("steps", 1)]}, TypeError, "attack_config"),
        ({"attack_config": {1: "a"}}, TypeError, "attack_config"),
        ({"attack_config": {"device": torch.device("cpu")}}, TypeError, "attack_config"),
        ({"attack_config": {"preset": "strong"}}, ValueError, "attack_config"),
        ({"attack_preset": ""}, ValueError, "attack_preset"),
        ({"attack_preset": 3}, TypeError, "attack_preset"),
    ],
)
def test_robustness_result_rejects_bad_fields(changes, error, field_name):
    arguments = {"attack": "gcg", "metric": "asr", "value": 0.5, "dataset": "AdvBench", **changes}
    with pytest.raises(error, match=f"`{field_name}"):
        RobustnessResult(**arguments)
