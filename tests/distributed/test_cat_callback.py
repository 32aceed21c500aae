"""EmbeddingAdversaryCallback under 2-process DDP gives the 1-process result on the same global batch."""

from pathlib import Path

import pytest
import torch

from hf_robust.testing import run_distributed

SCRIPT = Path(__file__).parent / "scripts" / "sft_embedding_adversary.py"

pytestmark = pytest.mark.distributed


def test_embedding_adversary_on_two_processes_matches_one_process():
    two_processes = run_distributed(SCRIPT, "2", num_processes=2)
    (one_process,) = run_distributed(SCRIPT, "4", num_processes=1)
    assert all(result["attacked"] for result in two_processes) and one_process["attacked"]
    for rank, result in enumerate(two_processes):
        for name, parameter in one_process["final"].items():
            torch.testing.assert_close(
                result["final"][name], parameter, rtol=0, atol=1e-5, msg=lambda text: f"rank {rank}, {name}: {text}"
            )
