"""CATTrainer under 2-process DDP gives the 1-process result on the same global batch."""

from pathlib import Path

import pytest
import torch

from hf_robust.testing import run_distributed

SCRIPT = Path(__file__).parent / "scripts" / "cat_tiny.py"

pytestmark = pytest.mark.distributed


def test_cat_trainer_on_two_processes_matches_one_process():
    two_processes = run_distributed(SCRIPT, "2", num_processes=2)
    (one_process,) = run_distributed(SCRIPT, "4", num_processes=1)
    logs = two_processes[0]["logs"]
    assert len(logs) == 2 and any("attack_loss" in entry for entry in logs)
    for rank, result in enumerate(two_processes):
        # Logged terms are gathered over processes: every rank logs the 1-process values.
        for entry, expected in zip(result["logs"], one_process["logs"]):
            for key in ("loss", "away_loss", "toward_loss", "utility_loss", "attack_loss"):
                if key in expected:
                    assert entry[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-5), (rank, key)
        for name, parameter in one_process["final"].items():
            torch.testing.assert_close(
                result["final"][name], parameter, rtol=0, atol=1e-5, msg=lambda text: f"rank {rank}, {name}: {text}"
            )
