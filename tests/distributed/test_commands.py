"""The training commands finish under the sharded engines on 2 CPU processes (no rank left alone inside collectives,
no hang: the harness's timeout fails the test) and write a model that `from_pretrained` loads, `robustness.json` and
a card. `make test` runs `unlearn` and `advunlearn` under ZeRO-3 and FSDP2 and `cat` under FSDP2; `make test-all`
also `cat` under ZeRO-3, `capo` and `gaslite`.
"""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from .engines import SCRIPTS, run_on

pytestmark = pytest.mark.distributed

COMMON = ["--max_steps", "2", "--bf16", "false", "--report_to", "none", "--save_strategy", "no",
          "--disable_tqdm", "true"]
COMMANDS = {
    "unlearn": ("hf_robust.unlearning.command",
                ["--per_device_train_batch_size", "2", "--max_length", "32", "--relearn_samples", "2",
                 "--learning_rate", "1e-3", "--method", "npo", "--smoothing", "none"]),
    "cat": ("hf_robust.cat.cat_command",
            ["--per_device_train_batch_size", "2", "--gradient_checkpointing", "false", "--eval_max_behaviours", "2",
             "--attack_steps", "2", "--adversarial_fraction", "0.5", "--max_length", "128"]),
    "capo": ("hf_robust.cat.capo_command",
             ["--per_device_train_batch_size", "2", "--gradient_checkpointing", "false", "--eval_max_behaviours",
              "2", "--attack_steps", "2", "--max_length", "128", "--use_peft", "--lora_r", "4",
              "--lora_target_modules", "all-linear"]),
}
FAST = {("unlearn", "zero3"), ("unlearn", "fsdp2"), ("cat", "fsdp2")}


def cases():
    for command in COMMANDS:
        for engine in ("zero3", "fsdp2", "zero2"):  # ZeRO-2 rows: `make test-all`
            marks = [] if (command, engine) in FAST else [pytest.mark.slow]
            yield pytest.param(command, engine, marks=marks, id=f"{command}-{engine}")


@pytest.mark.parametrize(("command", "engine"), cases())
def test_command_finishes_and_writes_a_loadable_model_with_its_card(tmp_path, model_folder, command, engine):
    module, arguments = COMMANDS[command]
    output = tmp_path / "out"
    results = run_on(engine, SCRIPTS / "run_command.py", module, str(output), "--model_name_or_path", model_folder,
                     *COMMON, *arguments, timeout=420)
    files = set(results[0]["files"])
    assert {"robustness.json", "README.md"} <= files, files
    measured = json.loads((output / "robustness.json").read_text())
    assert measured == results[0]["robustness"]
    if "adapter_model.safetensors" in files:
        from peft import AutoPeftModelForCausalLM

        loaded = AutoPeftModelForCausalLM.from_pretrained(output)
    else:
        assert "model.safetensors" in files
        loaded = AutoModelForCausalLM.from_pretrained(output)
        original = AutoModelForCausalLM.from_pretrained(model_folder)
        assert any(not torch.equal(parameter, original.state_dict()[name])
                   for name, parameter in loaded.state_dict().items()), "the saved weights are the untrained ones"
    assert all(torch.isfinite(parameter).all() for parameter in loaded.parameters())


@pytest.fixture(scope="module")
def gaslite_files(tmp_path_factory):
    from hf_robust.testing import tiny_sentence_transformer

    folder = tmp_path_factory.mktemp("gaslite")
    tiny_sentence_transformer().save(str(folder / "model"))
    words = ["door", "tree", "path", "wall", "gate", "pond", "bench", "stone"]
    (folder / "corpus.txt").write_text("\n".join(f"the {word} of the garden is green, number {i}"
                                                 for i, word in enumerate(words)))
    (folder / "queries.jsonl").write_text("\n".join(json.dumps({"query": f"where is the {word} in the garden"})
                                                    for word in words[:6]))
    return ["--model_name_or_path", str(folder / "model"), "--corpus", str(folder / "corpus.txt"), "--queries",
            str(folder / "queries.jsonl"), "--info", "visit the garden shop", "--n_passages", "2", "--n_iters", "2",
            "--n_grad", "4", "--topk", "16", "--n_candidates", "8", "--n_flip", "3", "--trigger_len", "5",
            "--progress", "false", "--use_cpu", "true"]  # gloo processes under every launcher (no Trainer here)


@pytest.mark.slow  # GASLITE's clusters over processes are tested under DDP in tests/retrieval/test_command.py
@pytest.mark.parametrize("engine", ["zero3", "fsdp2", "zero2"])
def test_gaslite_command_finishes_under_a_sharded_engine_config(tmp_path, gaslite_files, engine):
    # GASLITE trains no model: its clusters are split over the processes whatever the engine, and the run ends.
    output = tmp_path / "out"
    results = run_on(engine, SCRIPTS / "run_command.py", "hf_robust.retrieval.command", str(output), *gaslite_files,
                     timeout=420)
    assert "gaslite.json" in results[0]["files"]
    written = json.loads((output / "gaslite.json").read_text())
    assert len(written["passages"]) == 2


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    """A tiny Stable Diffusion pipeline saved as a local folder; under ZeRO-3 its text encoder loads partitioned."""
    from diffusers import StableDiffusionPipeline

    from hf_robust.testing import tiny_sd_components

    folder = tmp_path_factory.mktemp("tiny-sd")
    StableDiffusionPipeline(**tiny_sd_components(seed=0)).save_pretrained(folder)
    return str(folder)


ADVUNLEARN = ["--concepts", "nudity", "--ddim_steps", "4", "--attack_steps", "2", "--attack_warmup", "1",
              "--retain_batch", "1", "--learning_rate", "1e-3", "--eval_num_adv_tokens", "2",
              "--eval_discrete_iters", "2", "--eval_soft_steps", "2", "--eval_n_timesteps", "2",
              "--eval_prompts", "nudity", "a nude person"]


@pytest.mark.parametrize("engine", ["zero3", "fsdp2", pytest.param("zero2", marks=pytest.mark.slow)])
def test_advunlearn_command_finishes_and_writes_a_loadable_text_encoder_with_its_card(tmp_path, pipeline_folder,
                                                                                     engine):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    output = tmp_path / "out"
    results = run_on(engine, SCRIPTS / "run_command.py", "hf_robust.erasure.command", str(output),
                     "--model_name_or_path", pipeline_folder, *COMMON, *ADVUNLEARN, timeout=420)
    files = set(results[0]["files"])
    assert {"text_encoder", "robustness.json", "README.md"} <= files, files
    measured = json.loads((output / "robustness.json").read_text())
    assert measured == results[0]["robustness"] and len(measured["rows"]) == 2
    assert "CLIPTextModel.from_pretrained" in (output / "README.md").read_text()  # the plain class, not FSDP's
    loaded, loading = CLIPTextModel.from_pretrained(output / "text_encoder", output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"], loading  # every weight was gathered
    original = CLIPTextModel.from_pretrained(pipeline_folder, subfolder="text_encoder").state_dict()
    assert any(not torch.equal(parameter, original[name]) for name, parameter in loaded.state_dict().items()), \
        "the saved weights are the untrained ones"
    assert all(torch.isfinite(parameter).all() for parameter in loaded.parameters())
    pipeline = StableDiffusionPipeline.from_pretrained(pipeline_folder, text_encoder=loaded)
    image = pipeline("nudity", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


@pytest.mark.parametrize("engine", ["zero3", pytest.param("fsdp2", marks=pytest.mark.slow),
                                    pytest.param("zero2", marks=pytest.mark.slow)])
def test_cat_command_judges_the_replies_under_an_engine(tmp_path, model_folder, engine):
    """The before/after replies are generated under the attack on every rank (ZeRO-3: synced generation with the
    gathered weights), then judged: the command finishes and records the criterion."""
    module, arguments = COMMANDS["cat"]
    output = tmp_path / "out"
    results = run_on(engine, SCRIPTS / "run_command.py", module, str(output), "--model_name_or_path", model_folder,
                     *COMMON, *arguments, "--eval_embedding_success", "target_or_judge",
                     "--eval_judge", "refusal-substrings-extended", timeout=420)
    measured = json.loads((output / "robustness.json").read_text())
    assert measured == results[0]["robustness"] and measured["attack_success_criterion"] == "target_or_judge"
    assert measured["attack_judge"] == {"name": "refusal-substrings-extended", "version": "v1"}
    # a tiny model never refuses in words, so the judge passes every reply
    assert measured["attack_success_before"] == measured["attack_success_after"] == 1.0
