"""Every trainer and the callback under the sharded engines (FSDP2, DeepSpeed ZeRO-2/3) on 2 CPU processes give the
1-process result on the same global batch, and the engine really engaged (no silent DDP).

`make test` runs each trainer under one sharded engine and each engine with at least one trainer (`FAST`: CAT under
FSDP2 and, with LoRA, ZeRO-3; CAPO under FSDP2; the callback under ZeRO-3; NPO+SAM under FSDP2; NPO under ZeRO-3;
RMU under ZeRO-2; AdvUnlearn with its ConceptLeakageCallback under FSDP2 and ZeRO-3, and SDXL's under FSDP2);
`make test-all` (`slow`) runs the whole matrix. The 1-process reference is plain
(no engine), run once per script. The shipped configs' bf16 runs in `make test` too: CAT under FSDP2 and ZeRO-3
(`BF16_FAST`); CAT under ZeRO-2 and NPO+SAM under FSDP2 in bf16 under `make test-all` (`BF16_ROWS`, about 25 s each).
Resuming from a checkpoint equals the uninterrupted run: AdvUnlearn under FSDP2 and ZeRO-3, NPO+SAM under FSDP2 and
NPO under ZeRO-3 in `make test`, NPO under ZeRO-2 in `make test-all`.
"""

import functools
import re

import pytest
import torch

from .engines import SCRIPTS, SHARDED_ENGINES, run_on

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


# The shipped configs' bf16 on CPU: FSDP2's MixedPrecisionPolicy (bf16 all-gathers and compute, bf16 gradient
# reduction, fp32 sharded master weights) and DeepSpeed's bf16 mode (a bf16 copy of the model, fp32 master partitions).
# The 1-process reference computes the same way: bf16 autocast on fp32 weights (the recipes' unsharded run) for FSDP2,
# DeepSpeed itself for ZeRO, which rounds the loaded fp32 weights to bf16 once when it builds its engine (the master
# partitions start from them, so a plain run's updates differ by up to 150% on the tiny q/k updates).
BF16_REFERENCE_ENGINE = {"fsdp2": "ddp", "zero2": "zero2", "zero3": "zero3"}
# CAT under every engine; NPO+SAM, whose ascent perturbs the fp32 master shards, under FSDP2 (ZeRO refuses SAM).
BF16_ROWS = [*(("cat", engine) for engine in SHARDED_ENGINES), ("npo_sam", "fsdp2")]
BF16_FAST = {("cat", "fsdp2"), ("cat", "zero3")}  # FSDP2's and DeepSpeed's bf16 in `make test`; the rest: test-all
# Per tensor, |2-process update - 1-process update| / |1-process update|: measured <= 2% (bf16 rounding in another
# summation order); a rank's rows lost or counted twice give 30-100%.
BF16_TOLERANCE = 0.05


@functools.cache
def one_process_bf16(name: str, engine: str) -> dict:
    script, _, arguments, _ = TRAINERS[name]
    (result,) = run_on(engine, SCRIPTS / script, *arguments, num_processes=1, mixed_precision="bf16")
    return result


@pytest.mark.parametrize(("name", "engine"), [
    pytest.param(name, engine, id=f"{name}-{engine}", marks=[] if (name, engine) in BF16_FAST else [pytest.mark.slow])
    for name, engine in BF16_ROWS])
def test_bf16_matches_one_process_and_keeps_fp32_master_weights(name, engine):
    script, arguments, _, attack_metric = TRAINERS[name]
    two_processes = run_on(engine, SCRIPTS / script, *arguments, mixed_precision="bf16")  # world size, engine checked
    reference = one_process_bf16(name, BF16_REFERENCE_ENGINE[engine])
    for result in [*two_processes, reference]:
        assert result["compute_dtypes"] == {"torch.bfloat16"}, "the Linear layers did not compute in bf16"
        assert result["master_dtypes"] == {"torch.float32"}, "the optimizer did not step fp32 master weights"
    for result in two_processes:
        assert result["engine"] == engine
        if engine in ("fsdp2", "zero3"):
            assert result["sharded"], f"{engine} did not shard the weights"
        # FSDP2 all-gathers the weights in bf16 (its param_dtype; autocast alone computes with fp32 weights);
        # DeepSpeed computes with its bf16 model copy.
        assert result["weight_dtypes"] == {"torch.bfloat16"}

    master, expected = two_processes[0]["master"], reference["master"]
    assert master.keys() == expected.keys() and master
    moved = []
    for parameter_name, expected_weight in expected.items():
        start = reference["initial"][parameter_name]
        if engine.startswith("zero"):
            start = start.bfloat16().float()  # where DeepSpeed's fp32 masters start
        weight = master[parameter_name]
        assert weight.dtype == torch.float32
        update, expected_update = weight - start, expected_weight - start
        error = float((update - expected_update).norm() / expected_update.norm())
        assert error <= BF16_TOLERANCE, f"{name} in bf16 under {engine}, {parameter_name}: update off by {error:.1%}"
        moved.append(weight[weight != start])
    # Most updates are far below bf16's resolution, yet they moved the fp32 masters: were the masters bf16, every
    # moved weight would be a bf16 number; in fp32 about 1 in 2^16 is by chance.
    moved = torch.cat(moved)
    representable = float((moved == moved.bfloat16().float()).float().mean())
    assert moved.numel() > 1000 and representable < 0.01, f"{representable:.0%} of the moved weights are bf16 numbers"
    attacked = [entry[attack_metric] for entry in two_processes[0]["logs"] if attack_metric in entry]
    assert attacked and all(norm > 0 for norm in attacked), "no step was attacked or perturbed, or it did not move"


def test_bad_mixed_precision_is_rejected():
    with pytest.raises(ValueError, match=r"mixed_precision must be one of \('no', 'bf16'\), got 'fp16'"):
        run_on("fsdp2", SCRIPTS / "cat_tiny.py", "2", mixed_precision="fp16")


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


# How each engine must hold the trained token embedding: FSDP2 a DTensor shard (with the harness's check that
# accelerate ran FSDP, no silent DDP), ZeRO-3 a partition, ZeRO-2 the whole matrix.
EMBEDDING_UNDER = {"fsdp2": "dtensor", "zero3": "zero3", "zero2": "whole"}
ADVUNLEARN_TOLERANCE = 1e-6  # measured 3e-8 (SD) and 6e-8 (SDXL); the 2 steps move the weights by 3e-3 and 1e-2


@functools.cache
def advunlearn_one_process(model: str) -> dict:
    (result,) = run_on("ddp", SCRIPTS / "advunlearn_tiny.py", "2", "0", "callback", model, num_processes=1)
    return result


# SDXL under FSDP2 is the case where the root module is the pair of encoders: the attack must run through it.
@pytest.mark.parametrize(("engine", "model"), [
    ("fsdp2", "sd"), ("zero3", "sd"), ("fsdp2", "xl"),
    pytest.param("zero2", "sd", marks=pytest.mark.slow), pytest.param("zero3", "xl", marks=pytest.mark.slow),
])
def test_advunlearn_and_its_leakage_callback_match_one_process(engine, model):
    # 2 processes x 1 concept row against 1 process x 2 rows; step 0 is warm-up, step 1 attacked; then
    # ConceptLeakageCallback attacks 2 prompts when training ends.
    two_processes = run_on(engine, SCRIPTS / "advunlearn_tiny.py", "1", "0", "callback", model)
    reference = advunlearn_one_process(model)
    for result in two_processes:
        assert (result["engine"], result["num_processes"]) == (engine, 2)
        assert result["embedding"] == EMBEDDING_UNDER[engine], f"{engine} held the embedding {result['embedding']}"
    initial, expected = reference["initial"], reference["final"]
    assert max(float((expected[name] - initial[name]).abs().max()) for name in expected) > 1e-3
    final = two_processes[0]["final"]  # gathered whole (on rank 0 under FSDP2 / ZeRO-3)
    assert final.keys() == expected.keys()
    for name, parameter in expected.items():
        torch.testing.assert_close(final[name], parameter, rtol=0, atol=ADVUNLEARN_TOLERANCE,
                                   msg=lambda text: f"{model} under {engine}, {name}: {text}")
    logs = two_processes[0]["logs"]
    assert len(logs) == 2 and "attack_delta_norm" not in logs[0]
    assert logs[1]["attack_delta_norm"] > 1e-3, "step 1 was not attacked, or its soft tokens did not move"
    for entry, expected_entry in zip(logs, reference["logs"]):
        for key in ("loss", "unlearn_loss", "retain_loss", "attack_loss", "attack_delta_norm"):
            if key in expected_entry:
                assert entry[key] == pytest.approx(expected_entry[key], rel=1e-3, abs=1e-9), key
    (expected_leakage,) = reference["leakage"]
    assert expected_leakage["leakage/mean_before"] > 0
    for result in two_processes:  # each rank attacked its share of the prompts on a gathered copy; all log all rows
        (leakage,) = result["leakage"]
        assert leakage == pytest.approx(expected_leakage, rel=1e-4)


def assert_resuming_retraces_the_uninterrupted_run(engine: str, script: str, tmp_path, *arguments: str) -> None:
    """A launched resume script: a 3-step run saving every step, then a new launch resuming from its step 1."""
    uninterrupted = run_on(engine, SCRIPTS / script, str(tmp_path / "run"), *arguments)
    resumed = run_on(engine, SCRIPTS / script, str(tmp_path / "resumed"), *arguments,
                     str(tmp_path / "run" / "checkpoint-1"))
    for first, second in zip(uninterrupted, resumed):
        assert first["engine"] == second["engine"] == engine
        assert first["steps"] == [0, 1, 2] and second["steps"] == [1, 2]  # the resumed launch took steps 2 and 3
    expected, final = uninterrupted[0]["final"], resumed[0]["final"]  # gathered on rank 0
    assert expected.keys() == final.keys() and expected
    for name, parameter in expected.items():
        torch.testing.assert_close(final[name], parameter, rtol=0, atol=1e-7, msg=lambda text: f"{name}: {text}")


@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_advunlearn_resumed_from_a_checkpoint_retraces_the_uninterrupted_run(engine, tmp_path):
    # FSDP2 loads the saved full encoder into its DTensor shards; ZeRO-3 resumes from DeepSpeed's checkpoint, and its
    # first attack of the resumed run must not read CLIP's position table while a prefetch is in flight.
    assert_resuming_retraces_the_uninterrupted_run(engine, "advunlearn_resume.py", tmp_path)


@pytest.mark.parametrize(("engine", "smoothing"), [
    ("fsdp2", "sam"), ("zero3", "none"), pytest.param("zero2", "none", marks=pytest.mark.slow),
])
def test_unlearning_resumed_from_a_checkpoint_retraces_the_uninterrupted_run(engine, smoothing, tmp_path):
    # Weights, AdamW state and data position come back from the engine's checkpoint (FSDP2 with SAM perturbing the
    # shards); the NPO reference is the user's initial model in both runs.
    assert_resuming_retraces_the_uninterrupted_run(engine, "unlearn_resume.py", tmp_path, smoothing)
