"""Every trainer and the callback under the sharded engines (FSDP2, DeepSpeed ZeRO-2/3) on 2 CPU processes give the
1-process result on the same global batch, and the engine really engaged (no silent DDP).

`make test` runs each trainer under one sharded engine and each engine with at least one trainer (`FAST`: CAT under
FSDP2 and, with LoRA, ZeRO-3; CAPO under FSDP2; the callback under ZeRO-3; NPO+SAM under FSDP2; NPO under ZeRO-3;
RMU and AdvUnlearn under ZeRO-2); `make test-all` (`slow`) runs the whole matrix. The 1-process reference is plain
(no engine), run once per script.
"""

import functools
import re

import pytest
import torch

from .engines import SCRIPTS, run_on

pytestmark = pytest.mark.distributed

# name -> (script, 2-process arguments, 1-process arguments, attack metric that must be logged and > 0)
TRAINERS = {
    "trainer": ("train_tiny_llama.py", ["2"], ["4"], None),
    "cat": ("cat_tiny.py", ["2"], ["4"], "attack_delta_norm"),
    "cat_lora": ("cat_tiny.py", ["2", "lora"], ["4", "lora"], "attack_delta_norm"),
    "capo_lora": ("capo_tiny.py", ["2"], ["4"], "attack_delta_norm"),
    "capo": ("capo_tiny.py", ["2", "full"], ["4", "full"], "attack_delta_norm"),
    "sft_callback": ("sft_embedding_adversary.py", ["2"], ["4"], None),
    "sft_callback_lora": ("sft_embedding_adversary.py", ["2", "lora"], ["4", "lora"], None),
    # FSDP2 synchronises SAM's first backward: its ascent follows all ranks' rows, as 1 process x 4 rows does.
    "npo_sam": ("unlearn_tiny.py", ["2", "1", "npo", "sam"], ["4", "1", "npo", "sam"], "sam_grad_norm"),
    "npo": ("unlearn_tiny.py", ["2", "1", "npo", "none"], ["4", "1", "npo", "none"], None),
    # RS with zero noise runs its passes on the shards (restore, re-perturb) and must give plain NPO's update.
    "npo_rs0": ("unlearn_tiny.py", ["2", "1", "npo", "rs0"], ["4", "1", "npo", "none"], None),
    "npo_lora": ("unlearn_tiny.py", ["2", "1", "npo", "none", "lora"], ["4", "1", "npo", "none", "lora"], None),
    "rmu": ("unlearn_tiny.py", ["2", "1", "rmu", "none"], ["4", "1", "rmu", "none"], None),
}
# Combinations refused before any work (tests below); the rest of the matrix runs.
REFUSED = {("npo_sam", "zero2"), ("npo_sam", "zero3"), ("npo_rs0", "zero2"), ("npo_rs0", "zero3")}
# In `make test`: every trainer under one sharded engine, every engine at least once.
FAST = {("cat", "fsdp2"), ("cat_lora", "zero3"), ("capo_lora", "fsdp2"), ("sft_callback", "zero3"),
        ("npo_sam", "fsdp2"), ("npo", "zero3"), ("rmu", "zero2")}
TOLERANCE = 2e-5  # float noise of another summation order, amplified by the attack; a wrong shard is ~1e-3


@functools.cache
def one_process(name: str) -> dict:
    script, _, arguments, _ = TRAINERS[name]
    (result,) = run_on("ddp", SCRIPTS / script, *arguments, num_processes=1)
    return result


def matrix():
    for name in TRAINERS:
        for engine in ("fsdp2", "zero2", "zero3"):
            if (name, engine) in REFUSED:
                continue
            marks = [] if (name, engine) in FAST else [pytest.mark.slow]
            yield pytest.param(name, engine, marks=marks, id=f"{name}-{engine}")


@pytest.mark.parametrize(("name", "engine"), matrix())
def test_two_sharded_processes_match_one_process(name, engine):
    script, arguments, _, attack_metric = TRAINERS[name]
    two_processes = run_on(engine, SCRIPTS / script, *arguments)  # the harness asserts world size and engine
    reference = one_process(name)
    for result in two_processes:
        assert result["engine"] == engine
        if engine in ("fsdp2", "zero3"):
            assert result["sharded"], f"{engine} did not shard the weights"
    final = two_processes[0]["final"]
    assert final.keys() == reference["final"].keys() and final
    for parameter_name, expected in reference["final"].items():
        torch.testing.assert_close(final[parameter_name].float(), expected.float(), rtol=0, atol=TOLERANCE,
                                   msg=lambda text: f"{name} under {engine}, {parameter_name}: {text}")
    if attack_metric is not None:
        # CAT logs attack metrics in the steps that held adversarial rows (a mix); CAPO attacks every step.
        attacked = [entry[attack_metric] for entry in two_processes[0]["logs"] if attack_metric in entry]
        assert attacked and all(norm > 0 for norm in attacked), "no step was attacked, or an attack did not move"
    if "attacked" in reference:
        assert all(result["attacked"] for result in two_processes)


def test_sam_ascent_on_fsdp2_shards_equals_the_unsharded_ascent_and_restores_exactly():
    results = run_on("ddp", SCRIPTS / "sam_fsdp2.py")  # plain `fully_shard` over the gloo group
    for result in results:
        assert result["dtensor"], "the parameters were not sharded"
        assert result["norm"] == pytest.approx(result["expected_norm"], rel=1e-5)  # the all-reduced global norm
        assert result["eps_size"] > 1e-3 and result["eps_error"] < 1e-6
        assert result["restored_exactly"]
        # The restore copy holds this rank's shard only: about half the weights on 2 ranks.
        assert result["buffer_elements"] == result["local_elements"] < 0.6 * result["full_elements"]


@pytest.mark.parametrize(("engine", "smoothing", "message"), [
    ("zero2", "sam", r"smoothing='sam' under DeepSpeed ZeRO-2 is not supported: .* Use FSDP2"),
    pytest.param("zero3", "rs", r"smoothing='rs' under DeepSpeed ZeRO-3 is not supported: .* Use FSDP2",
                 marks=pytest.mark.slow),
    pytest.param("fsdp2", "gp", r"smoothing='gp' under FSDP2 is not supported: .* Use smoothing='sam'",
                 marks=pytest.mark.slow),
])
def test_unsupported_smoothing_is_refused_on_every_rank_before_any_work(engine, smoothing, message):
    for result in run_on(engine, SCRIPTS / "unlearn_refused.py", smoothing):
        assert result["message"] is not None and re.search(message, result["message"]), result["message"]
        assert result["untouched"]


@pytest.mark.parametrize("engine", ["fsdp2", pytest.param("zero3", marks=pytest.mark.slow)])
def test_evaluation_callbacks_under_sharded_weights_measure_what_one_process_does(engine):
    two_processes = run_on(engine, SCRIPTS / "eval_callbacks.py", "2")
    (one_process,) = run_on("ddp", SCRIPTS / "eval_callbacks.py", "4", num_processes=1)
    assert one_process["rates"] and one_process["forget_nll"][0] > 0
    for result in two_processes:  # every rank gets the main process's measurement
        assert result["rates"] == pytest.approx(one_process["rates"], abs=1e-6)
        assert result["forget_nll"] == pytest.approx(one_process["forget_nll"], rel=1e-4)


def test_advunlearn_under_zero2_matches_one_process():
    two_processes = run_on("zero2", SCRIPTS / "advunlearn_tiny.py", "1", "0")
    (one_process,) = run_on("ddp", SCRIPTS / "advunlearn_tiny.py", "2", "0", num_processes=1)
    assert [result["engine"] for result in two_processes] == ["zero2", "zero2"]
    initial, final = one_process["initial"], one_process["final"]
    assert max(float((final[name] - initial[name]).abs().max()) for name in final) > 1e-3
    assert "attack_loss" in two_processes[0]["logs"][-1]  # step 1 (after the warm-up) was attacked
    for name, parameter in final.items():
        torch.testing.assert_close(two_processes[0]["final"][name], parameter, rtol=0, atol=1e-5)


@pytest.mark.slow  # the refusal itself is unit-tested in tests/erasure/test_trainer.py
@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_advunlearn_is_refused_before_any_work_under_sharded_weights(engine):
    for result in run_on(engine, SCRIPTS / "advunlearn_refused.py"):
        assert re.search(r"AdvUnlearnTrainer under (FSDP2|DeepSpeed ZeRO-3) is not supported: .* Use DDP",
                         result["message"] or ""), result["message"]
        assert result["untouched"]
