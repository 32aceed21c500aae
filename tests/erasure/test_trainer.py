"""AdvUnlearnTrainer on tiny SD / SDXL components: initial loss identity, what trains, warmup, saving, bad input."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from transformers import CLIPTextModel, CLIPTextModelWithProjection

import hf_robust.erasure.trainer as trainer_module
from hf_robust.erasure.config import AdvUnlearnConfig
from hf_robust.erasure.esd import row_mse
from hf_robust.erasure.trainer import AdvUnlearnTrainer
from hf_robust.testing import tiny_sd_components

FAST = dict(use_cpu=True, report_to="none", save_strategy="no", bf16=False, disable_tqdm=True, ddim_steps=4,
            attack_steps=2, attack_lr=0.01, retain_batch=2, max_steps=2, learning_rate=1e-3, logging_steps=1, seed=0)


def config(tmp_path, **overrides):
    return AdvUnlearnConfig(output_dir=str(tmp_path), **{**FAST, **overrides})


def snapshot(module):
    return {name: parameter.detach().clone() for name, parameter in module.named_parameters()}


def changed(module, before):
    return {name for name, parameter in module.named_parameters() if not torch.equal(parameter, before[name])}


def test_initial_unlearning_loss_identity_and_zero_retain_loss(tmp_path):
    components = tiny_sd_components(seed=0)
    eta = 0.5
    trainer = AdvUnlearnTrainer(components, config(tmp_path, eta=eta, attack_warmup=10), concepts=["nudity"])
    trainer.model.train()
    inputs = {"concept_index": torch.tensor([0])}
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(trainer.model, inputs, return_outputs=True)
    e_0, e_c = outputs["e_0"].float(), outputs["e_c"].float()
    unlearn, retain = (trainer._log_values[name][-1] for name in ("unlearn_loss", "retain_loss"))
    expected = (1 + eta) ** 2 * row_mse(e_c, e_0).mean()
    assert expected > 0
    torch.testing.assert_close(unlearn, expected, rtol=1e-5, atol=0)
    assert retain.item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(loss, unlearn + 0.5 * retain)


@pytest.mark.parametrize("train_layers", ["all", 1])
def test_a_training_step_changes_only_the_chosen_encoder_parameters(tmp_path, train_layers):
    components = tiny_sd_components(seed=0)
    encoder, unet, vae = components["text_encoder"], components["unet"], components["vae"]
    before = {name: snapshot(module) for name, module in (("encoder", encoder), ("unet", unet), ("vae", vae))}
    trainer = AdvUnlearnTrainer(components, config(tmp_path, attack_warmup=1, train_layers=train_layers),
                                concepts=["nudity"])
    original = snapshot(trainer.original_text_encoders[0])
    trainer.train()
    assert trainer.model is encoder
    assert not changed(unet, before["unet"]) and not changed(vae, before["vae"])
    assert not changed(trainer.original_text_encoders[0], original)
    assert all(parameter.grad is None for parameter in unet.parameters())
    moved = changed(encoder, before["encoder"])
    if train_layers == "all":
        expected = {name for name in before["encoder"] if "encoder.layers." in name or "final_layer_norm" in name}
    else:
        expected = {name for name in before["encoder"] if "encoder.layers.0." in name}
    assert moved == expected
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert "attack_loss" not in logs[0] and "attack_loss" in logs[1]  # warmup 1: the second step is attacked
    assert all(np.isfinite(entry[key]) for entry in logs for key in ("unlearn_loss", "retain_loss"))


def test_warmup_never_attacks_and_every_later_step_does(tmp_path, monkeypatch):
    components = tiny_sd_components(seed=0)
    attacked_steps = []
    original_attack = trainer_module.soft_prompt_attack

    def counting(*args, **kwargs):
        attacked_steps.append(trainer.state.global_step)
        return original_attack(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "soft_prompt_attack", counting)
    trainer = AdvUnlearnTrainer(components, config(tmp_path, attack_warmup=2, max_steps=4, retain_weight=0.0),
                                concepts=["nudity"])
    trainer.train()
    assert attacked_steps == [2, 3]


def test_resampled_attack_and_multi_concept_batches(tmp_path, monkeypatch):
    components = tiny_sd_components(seed=0)
    seen = []
    original_compute = AdvUnlearnTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        seen.extend(inputs["concept_index"].tolist())
        return original_compute(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(AdvUnlearnTrainer, "compute_loss", recording)
    concepts = ["nudity", "a church", "van gogh style"]
    args = config(tmp_path, attack_warmup=0, share_xt=False, per_device_train_batch_size=2, max_steps=3,
                  adv_position="suffix", num_adv_tokens=2, attack_mode="sign")
    trainer = AdvUnlearnTrainer(components, args, concepts=concepts, retain_prompts=["a photo of a cat",
                                                                                      "a photo of a dog"])
    trainer.train()
    assert len(seen) == 6 and set(seen) == {0, 1, 2}
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3 and all(np.isfinite(entry["attack_loss"]) for entry in logs)


def test_bf16_step_runs(tmp_path):
    components = tiny_sd_components(seed=0)
    before = snapshot(components["text_encoder"])
    trainer = AdvUnlearnTrainer(components, config(tmp_path, bf16=True, attack_warmup=0, max_steps=1),
                                concepts=["nudity"])
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert np.isfinite(logs[0]["loss"]) and np.isfinite(logs[0]["attack_loss"])
    assert changed(components["text_encoder"], before)


def test_save_round_trips_and_runs_in_a_stock_pipeline(tmp_path):
    components = tiny_sd_components(seed=0)
    trainer = AdvUnlearnTrainer(components, config(tmp_path, attack_warmup=0, max_steps=1), concepts=["nudity"])
    trainer.train()
    trainer.save_model(str(tmp_path / "erased"))
    assert (tmp_path / "erased" / "text_encoder" / "model.safetensors").is_file()
    loaded = CLIPTextModel.from_pretrained(str(tmp_path / "erased"), subfolder="text_encoder")
    trained = components["text_encoder"].state_dict()
    assert loaded.state_dict().keys() == trained.keys()
    assert all(torch.equal(value, trained[name]) for name, value in loaded.state_dict().items())
    pipeline = StableDiffusionPipeline(**{**tiny_sd_components(seed=0), "text_encoder": loaded})
    image = pipeline("nudity", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert image.images.shape == (1, 32, 32, 3)


def test_sdxl_erases_through_both_encoders_and_saves_both(tmp_path):
    components = tiny_sd_components(xl=True, seed=0)
    before = [snapshot(components[name]) for name in ("text_encoder", "text_encoder_2")]
    trainer = AdvUnlearnTrainer(components, config(tmp_path, attack_warmup=0, max_steps=1), concepts=["nudity"])
    trainer.train()
    first, second = (changed(components[name], snapshot_) for name, snapshot_ in
                     zip(("text_encoder", "text_encoder_2"), before))
    # SDXL reads the penultimate layer of the first encoder: its last layer and final norm are unused and frozen.
    assert first == {name for name in before[0] if "encoder.layers.0." in name}
    assert second == {name for name in before[1] if "encoder.layers." in name or "final_layer_norm" in name}
    trainer.save_model(str(tmp_path / "erased"))
    loaded = {"text_encoder": CLIPTextModel.from_pretrained(str(tmp_path / "erased"), subfolder="text_encoder"),
              "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(str(tmp_path / "erased"),
                                                                            subfolder="text_encoder_2")}
    for name, model in loaded.items():
        assert all(torch.equal(value, components[name].state_dict()[key]) for key, value in model.state_dict().items())
    pipeline = StableDiffusionXLPipeline(**{**tiny_sd_components(xl=True, seed=0), **loaded})
    image = pipeline("nudity", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert image.images.shape == (1, 32, 32, 3)


def test_bad_inputs(tmp_path):
    components = tiny_sd_components(seed=0)
    args = config(tmp_path)
    with pytest.raises(ValueError, match="`concepts`"):
        AdvUnlearnTrainer(components, args, concepts=[])
    with pytest.raises(ValueError, match="`concepts`"):
        AdvUnlearnTrainer(components, args, concepts=None)
    with pytest.raises(ValueError, match="`retain_prompts`"):
        AdvUnlearnTrainer(components, args, concepts=["nudity"], retain_prompts=[])
    with pytest.raises(ValueError, match="`retain_batch`"):
        AdvUnlearnTrainer(components, config(tmp_path, retain_batch=3), concepts=["x"], retain_prompts=["a", "b"])
    with pytest.raises(ValueError, match="`text_encoder` must be a CLIP text encoder"):
        AdvUnlearnTrainer({**components, "text_encoder": torch.nn.Linear(2, 2)}, args, concepts=["nudity"])
    with pytest.raises(ValueError, match="`train_layers`"):
        AdvUnlearnTrainer(components, config(tmp_path, train_layers=3), concepts=["nudity"])
    with pytest.raises(ValueError, match="`train_dataset`"):
        AdvUnlearnTrainer(components, args, concepts=["nudity"], train_dataset=[1])
    with pytest.raises(TypeError, match="`args`"):
        AdvUnlearnTrainer(components, object(), concepts=["nudity"])
    with pytest.raises(ValueError, match="`concept_type`"):
        config(tmp_path, concept_type="weapons")
    with pytest.raises(ValueError, match="`num_adv_tokens`"):
        config(tmp_path, num_adv_tokens=0)


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_run(tmp_path):
    # The randomness of an iteration is keyed on the step, so a resumed run retraces the uninterrupted one.
    args = config(tmp_path, attack_warmup=1, max_steps=3, save_strategy="steps", save_steps=1, save_only_model=False)
    components = tiny_sd_components(seed=0)
    AdvUnlearnTrainer(components, args, concepts=["nudity"]).train()
    assert (tmp_path / "checkpoint-1" / "text_encoder" / "model.safetensors").is_file()
    resumed = tiny_sd_components(seed=0)
    AdvUnlearnTrainer(resumed, args, concepts=["nudity"]).train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    expected = components["text_encoder"].state_dict()
    for name, value in resumed["text_encoder"].state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-7, msg=name)
    assert changed(components["text_encoder"], snapshot(tiny_sd_components(seed=0)["text_encoder"]))


def test_fsdp1_is_refused_before_any_work(tmp_path, monkeypatch):
    # FSDP2 and ZeRO-3 run (tests/distributed/test_engines.py); FSDP1's root wrapper is stripped by unwrap_model.
    monkeypatch.setattr(trainer_module, "engine_of", lambda accelerator: "fsdp1")
    components = tiny_sd_components(seed=0)
    before = snapshot(components["text_encoder"])
    with pytest.raises(ValueError, match=r"AdvUnlearnTrainer under FSDP1 is not supported: .* Use FSDP2"):
        AdvUnlearnTrainer(components, config(tmp_path), concepts=["nudity"])
    assert not changed(components["text_encoder"], before)
