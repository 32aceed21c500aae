"""craft_poison_passages on 2 processes (one cluster each, results gathered) equals 1 process with the same seed."""

from pathlib import Path

import pytest
import torch

from hf_robust.testing import run_distributed

SCRIPT = Path(__file__).parent / "scripts" / "gaslite_clusters.py"

pytestmark = pytest.mark.distributed


def test_two_processes_craft_the_one_process_passages():
    two_processes = run_distributed(SCRIPT, num_processes=2)
    (one_process,) = run_distributed(SCRIPT, num_processes=1)
    assert [result["num_processes"] for result in two_processes] == [2, 2] and one_process["num_processes"] == 1
    # Cluster i (seed 3 + i) runs on process i % 2; one process runs both.
    assert [result["attack_seeds"] for result in two_processes] == [[3], [4]]
    assert one_process["attack_seeds"] == [3, 4]
    assert len(one_process["passages"]) == 2
    assert sorted(sum(one_process["query_indices"], [])) == list(range(6))
    for rank, result in enumerate(two_processes):
        assert result["passages"] == one_process["passages"], rank
        assert result["query_indices"] == one_process["query_indices"], rank
        assert all(torch.equal(a, b) for a, b in zip(result["trigger_ids"], one_process["trigger_ids"])), rank
        assert result["objectives"] == pytest.approx(one_process["objectives"], abs=1e-6), rank
