"""CAPOTrainer under 2-process DDP gives the 1-process result on the same global batch."""

from pathlib import Path

import pytest
import torch

from hf_robust.testing import run_distributed

SCRIPT = Path(__file__).parent / "scripts" / "capo_tiny.py"

pytestmark = pytest.mark.distributed


def test_capo_on_two_processes_matches_one_process():
    two_processes = run_distributed(SCRIPT, "2", num_processes=2)  # the harness checks that 2 ranks reported
    (one_process,) = run_distributed(SCRIPT, "4", num_processes=1)
    assert [result["world_size"] for result in two_processes] == [2, 2] and one_process["world_size"] == 1
    assert one_process["final"] and len(one_process["logs"]) == 2
    initial, final = one_process["initial"], one_process["final"]
    largest_change = max((final[name] - initial[name]).abs().max() for name in final)
    assert largest_change > 1e-3, "training did not move the adapter, so the comparison below would prove nothing"
    for rank, result in enumerate(two_processes):
        assert result["final"].keys() == one_process["final"].keys()
        for name, parameter in one_process["final"].items():
            # Float noise from another summation order, amplified by the attack, is ~3e-7; a wrong shard, batch size
            # or gradient average is of the order of the change itself.
            torch.testing.assert_close(
                result["final"][name], parameter, rtol=0, atol=2e-6, msg=lambda text: f"rank {rank}, {name}: {text}"
            )
        # The attack metrics are gathered over both processes: every rank logs the 1-process values.
        for step, (logged, expected) in enumerate(zip(result["logs"], one_process["logs"], strict=True)):
            for key in ("attack_loss", "attack_success", "attack_delta_norm"):
                assert logged[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), f"rank {rank}, {step}, {key}"
