"""`benchmarks/trainer_steps.py` (the GPU check's every-trainer row) and `benchmarks/distributed_speed.py` run here
on CPU, so the prepared GPU script is not first tried on a lent GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_benchmark(script: str, *arguments: str, timeout: float) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *arguments], capture_output=True, text=True,
                          timeout=timeout, env=environment)


def test_trainer_steps_trains_each_trainer_in_bf16_autocast_and_reports_its_attack(tmp_path):
    output = tmp_path / "steps.json"
    result = run_benchmark("trainer_steps.py", "--trainers", "npo_sam", "advunlearn", "--bf16", "--steps", "1",
                           "--warmup", "1", "--threads", "1", "--output", str(output), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = {record["trainer"]: record for record in json.loads(output.read_text())}
    assert set(records) == {"npo_sam", "advunlearn"}
    for record in records.values():
        assert record["steps"] == 2 and record["finite"] and record["weights_dtype"] == "float32"
    assert records["advunlearn"]["attack_delta_norm"] > 0  # every step attacked (no warm-up)
    assert records["npo_sam"]["sam_restore_mib"] > 0  # SAM perturbed (it copied the weights to restore them)
    assert "| advunlearn |" in result.stdout


def test_the_gpu_check_runs_every_trainer_in_bf16():
    command = next(line for line in (BENCHMARKS / "gpu_check.sh").read_text().splitlines()
                   if "benchmarks/trainer_steps.py" in line and line.startswith("run "))
    assert "--device cuda --bf16" in command and "--trainers" not in command  # the default: every trainer
    result = run_benchmark("trainer_steps.py", "--help", timeout=120)
    listed = result.stdout.split("--trainers {", 1)[1].split("}", 1)[0].split(",")
    assert set(listed) == {"sft", "cat", "capo", "npo", "npo_sam", "rmu", "advunlearn"}


@pytest.mark.slow
def test_distributed_speed_measures_a_new_row_under_ddp_and_fsdp2(tmp_path):
    output = tmp_path / "speed.json"
    result = run_benchmark("distributed_speed.py", "--trainers", "capo", "--engines", "ddp", "fsdp2", "--steps", "1",
                           "--warmup", "1", "--output", str(output), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads(output.read_text())
    assert [(record["trainer"], record["engine"]) for record in records] == [("capo", "ddp"), ("capo", "fsdp2")]
    fsdp2 = records[1]["ranks"]
    assert len(fsdp2) == 2 and all(rank["engine"] == "fsdp2" for rank in fsdp2)
    assert fsdp2[0]["local_weights_mib"] < fsdp2[0]["weights_mib"]  # the weights really were sharded
