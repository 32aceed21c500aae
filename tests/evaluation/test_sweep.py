import dataclasses

import pytest
import torch

from hf_robust.attacks.continuous import EmbeddingAttackConfig
from hf_robust.cat.toy import toy_behaviours
from hf_robust.evaluation import attack_budget_sweep, get_preset, plot_budget_sweep
from hf_robust.evaluation.behaviour_attacks import embedding_attack_success_rate
from hf_robust.testing import tiny_causal_lm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A one-token target that a few steps can reach on the random tiny model, and a full one they cannot.
BEHAVIOURS = [{"prompt": toy_behaviours("test")[0]["prompt"], "target": "Sure"}, toy_behaviours("test")[1]]


def test_one_row_per_budget_each_the_rate_of_the_base_attack_at_that_budget():
    model, tokenizer = tiny_causal_lm("llama")
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    rows = attack_budget_sweep(model, tokenizer, BEHAVIOURS, eps_values=[0.0, 2.0], step_values=[0, 3, 6])
    assert [(row["eps"], row["steps"]) for row in rows] == [(0.0, 0), (0.0, 3), (0.0, 6), (2.0, 0), (2.0, 3), (2.0, 6)]
    assert all(0.0 <= row["asr"] <= 1.0 for row in rows)
    # eps 0 is the clean model whatever the steps; 0 steps is the clean model whatever the eps.
    clean = rows[0]["asr"]
    assert [row["asr"] for row in rows if row["eps"] == 0.0 or row["steps"] == 0] == [clean] * 4
    assert max(row["asr"] for row in rows) > clean  # the budget matters: the curve is not flat
    strong = get_preset("strong").config
    direct = embedding_attack_success_rate(model, tokenizer, BEHAVIOURS, dataclasses.replace(strong, eps=2.0, steps=6))
    assert rows[-1]["asr"] == direct
    assert all(torch.equal(parameter, before[name]) for name, parameter in model.named_parameters())


def test_the_base_may_be_a_preset_or_a_config():
    model, tokenizer = tiny_causal_lm("llama")
    config = EmbeddingAttackConfig(eps=0.5, steps=2, step_size=0.3, step_mode="relative")
    rows = attack_budget_sweep(model, tokenizer, BEHAVIOURS[:1], [1.0], [2], base=config)
    assert rows == [{"eps": 1.0, "steps": 2, "asr": embedding_attack_success_rate(
        model, tokenizer, BEHAVIOURS[:1], dataclasses.replace(config, eps=1.0))}]
    assert len(attack_budget_sweep(model, tokenizer, BEHAVIOURS[:1], [0.05], [1], base=get_preset("train"))) == 1


def test_sweep_rejects_bad_input_before_any_attack():
    model, tokenizer = tiny_causal_lm("llama")
    cases = [
        ({"eps_values": []}, ValueError, "eps_values"),
        ({"eps_values": 0.1}, ValueError, "eps_values"),
        ({"eps_values": [0.1, -1.0]}, ValueError, r"eps_values\[1\]"),
        ({"eps_values": [float("nan")]}, ValueError, r"eps_values\[0\]"),
        ({"eps_values": [True]}, ValueError, r"eps_values\[0\]"),
        ({"step_values": []}, ValueError, "step_values"),
        ({"step_values": [1.5]}, ValueError, r"step_values\[0\]"),
        ({"step_values": [-1]}, ValueError, r"step_values\[0\]"),
        ({"base": "gcg"}, ValueError, "base"),
        ({"base": {"eps": 1.0}}, TypeError, "base"),
        ({"base": EmbeddingAttackConfig(targeted=False)}, ValueError, "targeted"),
        ({"behaviours": []}, ValueError, "behaviours"),
        ({"behaviours": [{"prompt": "hi"}]}, ValueError, r"behaviours\[0\]"),
    ]
    for changes, error, name in cases:
        arguments = {"behaviours": BEHAVIOURS, "eps_values": [1.0], "step_values": [1], **changes}
        with pytest.raises(error, match=name):
            attack_budget_sweep(model, tokenizer, **arguments)


def test_the_plot_is_a_png_with_one_line_per_eps(tmp_path):
    rows = [{"eps": eps, "steps": steps, "asr": min(1.0, eps * steps / 10)}
            for eps in (0.5, 1.0) for steps in (0, 5, 10)]
    path = plot_budget_sweep(rows, tmp_path / "figures" / "sweep.png", title="tiny llama")
    assert path == tmp_path / "figures" / "sweep.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (400, 600)  # 6 x 4 inches at 100 dpi


def test_plot_rejects_bad_input(tmp_path):
    good = [{"eps": 1.0, "steps": 1, "asr": 0.5}]
    with pytest.raises(ValueError, match="`rows`"):
        plot_budget_sweep([], tmp_path / "a.png")
    with pytest.raises(ValueError, match="`rows`"):
        plot_budget_sweep(good[0], tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"`rows\[1\]`"):
        plot_budget_sweep([*good, {"eps": 1.0, "steps": 2}], tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"`rows\[0\]`"):
        plot_budget_sweep([{"eps": 1.0, "steps": 2, "asr": float("nan")}], tmp_path / "a.png")
    with pytest.raises(TypeError, match="`path`"):
        plot_budget_sweep(good, 3)
    with pytest.raises(TypeError, match="`title`"):
        plot_budget_sweep(good, tmp_path / "a.png", title=3)
    assert not (tmp_path / "a.png").exists()
