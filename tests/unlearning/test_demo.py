"""The unlearning demo section: recorded multi-seed results beside the live run, and the noise sentence."""

import json
from types import SimpleNamespace

import pytest

from hf_robust.unlearning import demo


def tiny_record(recoveries):
    return {"settings": {"methods": {"npo": {}, "npo+sam": {}}, "machine": "cpu, 2 cores", "date": "2026-12-04"},
            "seeds": [{"seed": seed, "npo": {"recovery": npo}, "npo+sam": {"recovery": sam}}
                      for seed, (npo, sam) in enumerate(recoveries)]}


def test_recorded_comparison_pairs_seeds_of_both_record_kinds(tmp_path):
    assert demo.recorded_comparison(tmp_path / "absent.json") is None
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_record([(1.0, 0.5), (2.0, 2.5), (3.0, 2.0)])))
    recorded = demo.recorded_comparison(path)
    assert recorded["seeds"] == 3 and recorded["methods"]["npo"] == pytest.approx((2.0, 1.0))
    (difference, spread), fewer = recorded["methods"]["npo+sam"][2:]
    assert difference == pytest.approx(-1 / 3) and spread == pytest.approx(0.7637626) and fewer == 2

    # SmolLM2 records: a recovery curve per method (its last point counts); an unfinished seed is left out.
    smollm2 = {"settings": {"methods": {"npo": {}, "npo+sam ρ=0.1": {}}, "curve": [0, 10]},
               "seeds": [{"methods": {"npo": {"recovery": [0.0, 1.0]}, "npo+sam ρ=0.1": {"recovery": [0.0, 0.4]}}},
                         {"methods": {"npo": {"recovery": [0.0, 2.0]}}}]}
    path.write_text(json.dumps(smollm2))
    recorded = demo.recorded_comparison(path)
    assert recorded["seeds"] == 1 and recorded["methods"]["npo+sam ρ=0.1"][2] == pytest.approx((-0.6, 0.0))


def test_a_method_that_missed_the_forgetting_target_on_some_seeds_says_so(tmp_path, capsys):
    entry = lambda recovery, matched: {"recovery": [0.0, recovery], "matched": matched}  # noqa: E731
    record = {"settings": {"methods": {"npo": {}, "npo+sam ρ=0.05": {}}, "curve": [0, 20]},
              "seeds": [{"methods": {"npo": entry(3.0, True), "npo+sam ρ=0.05": entry(3.1, True)}},
                        {"methods": {"npo": entry(3.0, True), "npo+sam ρ=0.05": entry(3.2, False)}}]}
    path = tmp_path / "results" / "benchmarks" / "smollm2.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    recorded = demo.recorded_comparison(path)
    assert recorded["matched"] == {"npo": 2, "npo+sam ρ=0.05": 1}
    demo._print_recorded(recorded, "SmolLM2")
    lines = capsys.readouterr().out.splitlines()
    assert "matched in 1/2 seeds only" in lines[2] and "matched" not in lines[1]


def test_live_verdict_says_when_a_live_difference_is_noise():
    assert "within noise" in demo.live_verdict(-0.2, 2, -0.4, 0.5)  # 2 * 0.5 / sqrt(2) = 0.71 > 0.2
    assert "agrees" in demo.live_verdict(-0.9, 2, -0.4, 0.5)
    assert "disagrees" in demo.live_verdict(0.9, 2, -0.4, 0.5)


def test_section_prints_the_recorded_result_and_the_verdict(tmp_path, monkeypatch, capsys):
    metrics = SimpleNamespace(forget_nll=3.0, forget_exact_match=0.0, retain_nll=0.1)

    def fake_experiment(seed):
        run = {"seconds": {"memorise": 1.0}, "memorised": metrics}
        for name, recovery in (("npo", 1.0), ("npo+sam", 0.9 + 0.05 * seed)):
            run[name] = {"before": metrics, "after": metrics, "recovery": recovery, "seconds": {"unlearn": 1.0}}
        return run

    monkeypatch.setattr(demo, "toy_relearning_experiment", fake_experiment)
    demo.unlearning_demo_section(seeds=(0, 1), results=tmp_path)
    assert "no recorded multi-seed result" in capsys.readouterr().out
    (tmp_path / demo.RECORDED_TINY).write_text(json.dumps(tiny_record([(1.0, 0.5), (2.0, 1.0), (1.5, 1.2)])))
    out = demo.unlearning_demo_section(seeds=(0, 1), results=tmp_path)
    printed = capsys.readouterr().out
    assert out["live"] == pytest.approx([-0.1, -0.05]) and out["recorded"]["seeds"] == 3
    assert "recorded, not re-run here" in printed and "less recovery in 3/3 seeds" in printed
    assert "within noise" in printed and "2026-12-04" in printed
