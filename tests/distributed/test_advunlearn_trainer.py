"""AdvUnlearnTrainer under 2-process DDP gives the 1-process result on the same global batch, also in bf16."""

import math
from pathlib import Path

import pytest
import torch

from hf_robust.testing import run_distributed

SCRIPT = Path(__file__).parent / "scripts" / "advunlearn_tiny.py"

pytestmark = pytest.mark.distributed


def test_two_processes_match_one_process_with_the_same_global_batch():
    two_processes = run_distributed(SCRIPT, "1", "0", num_processes=2)
    (one_process,) = run_distributed(SCRIPT, "2", "0", num_processes=1)
    assert [result["num_processes"] for result in two_processes] == [2, 2] and one_process["num_processes"] == 1
    initial, final = one_process["initial"], one_process["final"]
    assert max((final[name] - initial[name]).abs().max() for name in final) > 1e-3  # training moved the weights
    logs = one_process["logs"]
    assert len(logs) == 2 and "attack_loss" not in logs[0] and "attack_loss" in logs[1]
    for rank, result in enumerate(two_processes):
        # Logged terms are averaged over processes: every rank logs the 1-process values.
        for entry, expected in zip(result["logs"], logs):
            for key in ("loss", "unlearn_loss", "retain_loss", "attack_loss", "grad_norm"):
                if key in expected:
                    assert entry[key] == pytest.approx(expected[key], rel=1e-3, abs=1e-9), (rank, key)
        for name, parameter in final.items():
            torch.testing.assert_close(result["final"][name], parameter, rtol=0, atol=1e-5,
                                       msg=lambda text: f"rank {rank}, {name}: {text}")


def test_two_processes_in_bf16():
    results = run_distributed(SCRIPT, "1", "1", num_processes=2)
    assert [result["num_processes"] for result in results] == [2, 2]
    for result in results:
        assert all(math.isfinite(value) for entry in result["logs"] for key, value in entry.items()
                   if key.endswith("loss"))
        assert max((result["final"][name] - result["initial"][name]).abs().max() for name in result["final"]) > 0
    for name, parameter in results[0]["final"].items():  # DDP keeps the ranks' weights identical
        assert torch.equal(results[1]["final"][name], parameter), name
