"""UnlearnTrainer (NPO + SAM) under 2-process DDP gives the 1-process result on the same global batch."""

from pathlib import Path

import pytest
import torch

from hf_robust.testing import run_distributed

SCRIPT = Path(__file__).parent / "scripts" / "unlearn_tiny.py"

pytestmark = pytest.mark.distributed


def test_npo_sam_on_two_processes_matches_one_process_with_accumulation():
    two_processes = run_distributed(SCRIPT, "2", "1", num_processes=2)
    (one_process,) = run_distributed(SCRIPT, "2", "2", num_processes=1)
    assert [result["num_processes"] for result in two_processes] == [2, 2] and one_process["num_processes"] == 1
    initial, final = one_process["initial"], one_process["final"]
    assert max((final[name] - initial[name]).abs().max() for name in final) > 1e-3  # training moved the weights
    logs = one_process["logs"]
    assert len(logs) == 2
    for rank, result in enumerate(two_processes):
        # Logged terms are averaged over processes: every rank logs the 1-process values.
        for entry, expected in zip(result["logs"], logs):
            for key in ("loss", "forget_loss", "forget_loss_perturbed", "retain_loss", "sam_grad_norm", "grad_norm"):
                assert entry[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-5), (rank, key)
        for name, parameter in final.items():
            torch.testing.assert_close(result["final"][name], parameter, rtol=0, atol=1e-5,
                                       msg=lambda text: f"rank {rank}, {name}: {text}")
