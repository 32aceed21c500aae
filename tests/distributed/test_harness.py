"""The 2-process `accelerate launch` harness, and the Trainer's 2-process == 1-process equivalence it relies on."""

from pathlib import Path

import pytest
import torch

from hf_robust.testing import finish_distributed, run_distributed, save_rank_result

SCRIPTS = Path(__file__).parent / "scripts"

pytestmark = pytest.mark.distributed


def test_two_processes_see_a_world_of_two():
    results = run_distributed(SCRIPTS / "report_world.py", num_processes=2)
    assert results == [{"process_index": 0, "num_processes": 2}, {"process_index": 1, "num_processes": 2}]


def test_trainer_on_two_processes_matches_one_process_on_the_same_global_batch():
    two_processes = run_distributed(SCRIPTS / "train_tiny_llama.py", "2", num_processes=2)
    one_process = run_distributed(SCRIPTS / "train_tiny_llama.py", "4", num_processes=1)

    initial, final = one_process[0]["initial"], one_process[0]["final"]
    largest_change = max((final[name] - initial[name]).abs().max() for name in initial)
    assert largest_change > 1e-3, "training did not move the parameters, so the comparison below would prove nothing"
    for rank, result in enumerate(two_processes):
        assert result["final"].keys() == final.keys()
        for name in final:
            torch.testing.assert_close(result["initial"][name], initial[name], rtol=0, atol=0)
            # Float noise from another summation order is ~1e-8; a wrong shard or batch size is ~5e-3.
            torch.testing.assert_close(
                result["final"][name], final[name], rtol=0, atol=1e-6, msg=lambda text: f"rank {rank}, {name}: {text}"
            )
    for name, parameter in two_processes[0]["final"].items():
        torch.testing.assert_close(two_processes[1]["final"][name], parameter, rtol=0, atol=0)


def test_script_error_is_raised_with_its_message():
    with pytest.raises(RuntimeError, match="deliberate failure from raise_error.py") as raised:
        run_distributed(SCRIPTS / "raise_error.py", num_processes=2)
    assert "accelerate.commands.launch" in str(raised.value)


def test_missing_rank_is_reported():
    with pytest.raises(RuntimeError, match=r"expected results from ranks \[0, 1\], got \[0\]"):
        run_distributed(SCRIPTS / "save_on_rank_zero.py", num_processes=2)


def _is_running(process_id: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{process_id}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status


def test_rank_that_accelerate_thinks_is_alone_is_refused():
    refusal = r"accelerate sees process 0 of 1 but torch.distributed sees rank [01] of 2"
    with pytest.raises(RuntimeError, match=refusal):
        run_distributed(SCRIPTS / "forget_cpu.py", num_processes=2)


def test_timeout_stops_the_launcher_and_its_workers(tmp_path):
    with pytest.raises(RuntimeError, match="timed out after 10 s"):
        run_distributed(SCRIPTS / "sleep_forever.py", num_processes=2, timeout=10, env={"PID_DIR": str(tmp_path)})
    process_ids = [int(path.read_text()) for path in sorted(tmp_path.glob("rank*.pid"))]
    assert len(process_ids) == 2, "the workers did not start within the timeout"
    assert not any(_is_running(process_id) for process_id in process_ids)


@pytest.mark.parametrize("num_processes", [0, -1, 1.5, "2", True])
def test_bad_num_processes_is_rejected(num_processes):
    with pytest.raises(ValueError, match="num_processes"):
        run_distributed(SCRIPTS / "report_world.py", num_processes=num_processes)


@pytest.mark.parametrize("timeout", [0, -5, "60"])
def test_bad_timeout_is_rejected(timeout):
    with pytest.raises(ValueError, match="timeout"):
        run_distributed(SCRIPTS / "report_world.py", timeout=timeout)


def test_missing_script_is_rejected():
    with pytest.raises(FileNotFoundError, match="script"):
        run_distributed(SCRIPTS / "no_such_script.py")


def test_save_rank_result_outside_a_launched_run_is_rejected(monkeypatch):
    monkeypatch.delenv("HF_ROBUST_RESULT_DIR", raising=False)
    with pytest.raises(RuntimeError, match="HF_ROBUST_RESULT_DIR"):
        save_rank_result({"value": 1})


def test_finish_distributed_outside_a_launched_run_does_nothing(monkeypatch):
    monkeypatch.delenv("HF_ROBUST_RESULT_DIR", raising=False)
    finish_distributed()


def test_bad_engine_is_rejected():
    with pytest.raises(ValueError, match=r"engine must be one of \['ddp', 'fsdp2', 'zero2', 'zero3'\]"):
        run_distributed(SCRIPTS / "report_world.py", engine="fsdp")


def test_fsdp2_that_silently_runs_ddp_fails_the_run():
    # Without the test shim, accelerate 1.15/1.16 runs an FSDP config on CPU as DDP: the harness must say so.
    with pytest.raises(RuntimeError, match=r"ran accelerate's MULTI_GPU, not the FSDP that engine='fsdp2' asks for"):
        run_distributed(SCRIPTS / "train_tiny_llama.py", "2", engine="fsdp2")
