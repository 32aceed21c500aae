"""The erasure demo section and its experiment, on a tiny budget."""

import math

import pytest

from hf_robust.erasure.demo import (
    COMPARED, METHODS, TOY_ERASURE, erasure_demo_section, toy_erasure_config, toy_erasure_experiment,
)

TINY_ERASURE = {"steps": 2, "attack_steps": 2, "ddim_steps": 4}
TINY_ATTACK = {"discrete_iters": 1, "soft_steps": 1, "n_timesteps": 2, "ddim_steps": 4, "n_candidates": 8,
               "batch_size": 8}


def test_demo_section_prints_and_returns_the_comparison(capsys):
    means = erasure_demo_section(seeds=(0,), erasure=TINY_ERASURE, attack=TINY_ATTACK)
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("original", *METHODS, "matched pair", "tuned"))
    assert means["original"]["leakage"]["none"] < 1e-6  # the original reproduces its own concept prediction
    for method in COMPARED:
        leakage = means[method]["leakage"]
        assert set(leakage) == {"none", "discrete", "soft"} and all(math.isfinite(value) for value in leakage.values())
        assert leakage["none"] > means["original"]["leakage"]["none"]  # erasure moved the concept prediction
        assert means[method]["retain_error"] >= 0


def test_experiment_reads_esd_at_the_same_steps_and_at_advunlearns_retain_error():
    run = toy_erasure_experiment(1, TINY_ERASURE, TINY_ATTACK, match_factor=3.0)
    assert run["esd"]["steps"] == run["advunlearn"]["steps"] == TINY_ERASURE["steps"]
    match, trajectory = run["esd_matched"]["match"], dict(run["esd_trajectory"])
    assert trajectory[TINY_ERASURE["steps"]] == pytest.approx(run["esd"]["retain_error"], rel=1e-6)
    if match["how"] == "esd_iterations":
        assert match["target"] == run["advunlearn"]["retain_error"] and run["esd_matched"]["steps"] == match["step"]
        assert match["retain_error"] == pytest.approx(run["esd_matched"]["retain_error"], rel=1e-6)
        assert run["advunlearn_matched"]["retain_error"] == run["advunlearn"]["retain_error"]
        nearest = min(trajectory.values(), key=lambda error: abs(error - match["target"]))
        if float(match["step"]).is_integer():  # a recorded point: the nearest one
            assert match["retain_error"] == nearest == trajectory[match["step"]]
        else:  # landed between two recorded points, closer than any of them
            assert match["matched"] and abs(match["relative_gap"]) < abs(nearest / match["target"] - 1)
    else:  # ESD never reached AdvUnlearn's retain error: AdvUnlearn's retain weight was tuned to ESD's
        assert max(trajectory.values()) < run["advunlearn"]["retain_error"] * 0.9
        assert match["target"] == run["esd"]["retain_error"] == run["esd_matched"]["retain_error"]
        assert match["retain_error"] == pytest.approx(run["advunlearn_matched"]["retain_error"], rel=1e-6)
        assert run["advunlearn_matched"]["retain_weight"] > TINY_ERASURE.get("retain_weight", 0.5)
    with pytest.raises(ValueError, match="match_factor"):
        toy_erasure_experiment(0, TINY_ERASURE, TINY_ATTACK, match_factor=0.5)


def test_retain_weight_is_tuned_where_esd_never_reaches_advunlearns_retain_error(monkeypatch):
    """Force the fallback: a trajectory that peaks below the target; AdvUnlearn's retain error falls with its
    retain weight, so the tuned weight lands within the tolerance of ESD's."""
    import hf_robust.erasure.demo as demo

    monkeypatch.setattr(demo, "restore_matching", lambda trainer, trajectory, target: demo.MatchedPoint(
        0, 0.0, target, -1.0, False))
    run = toy_erasure_experiment(1, TINY_ERASURE, TINY_ATTACK)
    match = run["esd_matched"]["match"]
    assert match["how"] == "advunlearn_retain_weight" and match["target"] == run["esd"]["retain_error"]
    assert run["advunlearn_matched"]["retain_weight"] != TINY_ERASURE.get("retain_weight", 0.5)
    assert match["retain_error"] == pytest.approx(run["advunlearn_matched"]["retain_error"], rel=1e-6)
    assert match["matched"] == (abs(match["relative_gap"]) <= 0.1)


def test_toy_config_disables_the_attack_for_esd_only(tmp_path):
    esd, advunlearn = (toy_erasure_config(str(tmp_path), method, seed=3) for method in METHODS)
    assert esd.attack_warmup >= esd.max_steps == TOY_ERASURE["steps"] and advunlearn.attack_warmup == 0
    shared = ("max_steps", "learning_rate", "retain_weight", "ddim_steps", "attack_steps", "seed", "retain_batch")
    assert all(getattr(esd, name) == getattr(advunlearn, name) for name in shared)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="method"):
        toy_erasure_config(str(tmp_path), "sld")
    with pytest.raises(ValueError, match="unknown setting"):
        toy_erasure_config(str(tmp_path), "esd", rho=0.1)
