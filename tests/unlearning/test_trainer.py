"""UnlearnTrainer: data pairing, refusals, each objective against its formula, LoRA and RMU, references."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import LoraConfig

from hf_robust.testing import tiny_causal_lm
from hf_robust.unlearning import UnlearnTrainer

from .helpers import (
    LENGTH, call, changed_parameters, config, make_trainer, parameters_of, retain_nll, summed_nll, token_rows,
)


# ------------------------------------------------------------ data


def test_text_is_tokenised_truncated_and_paired_with_seeded_retain_rows(tmp_path):
    model, tokenizer = tiny_causal_lm("llama")
    forget = Dataset.from_list([{"text": text} for text in ["The secret code is 1234 and more.", "Alice likes cats."]])
    retain = Dataset.from_list([{"text": f"{index} is a retain sentence."} for index in range(10)])
    trainer = UnlearnTrainer(model=model, args=config(tmp_path, max_length=6), forget_dataset=forget,
                             retain_dataset=retain, processing_class=tokenizer)
    rows = list(trainer.train_dataset)
    assert rows[0]["forget_input_ids"] == tokenizer("The secret code is 1234 and more.")["input_ids"][:6]
    assert all(row["forget_labels"] == row["forget_input_ids"] for row in rows)
    retain_ids = [tokenizer(f"{index} is a retain sentence.", truncation=True, max_length=6)["input_ids"]
                  for index in range(10)]
    assert all(row["retain_input_ids"] in retain_ids for row in rows)
    again = UnlearnTrainer(model=model, args=config(tmp_path, max_length=6), forget_dataset=forget,
                           retain_dataset=retain, processing_class=tokenizer)
    assert list(again.train_dataset) == rows
    other_seeds = [list(UnlearnTrainer(model=model, args=config(tmp_path, max_length=6, seed=seed),
                                       forget_dataset=forget, retain_dataset=retain,
                                       processing_class=tokenizer).train_dataset) for seed in (1, 2, 3)]
    assert any(other != rows for other in other_seeds)
    batch = trainer.data_collator(rows)
    assert batch["forget_input_ids"].shape == batch["forget_labels"].shape == batch["forget_attention_mask"].shape
    assert ((batch["forget_attention_mask"] == 0) == (batch["forget_labels"] == -100)).all()


def test_bad_inputs_raise_naming_the_argument(tmp_path):
    model, tokenizer = tiny_causal_lm("llama")
    args, forget, retain = config(tmp_path), token_rows(4, 1), token_rows(4, 2)
    cases = [
        (dict(forget_dataset=[{"text": "a"}]), TypeError, "forget_dataset"),
        (dict(forget_dataset=Dataset.from_list([{"prompt": "a"}])), ValueError, "forget_dataset"),
        (dict(forget_dataset=None), ValueError, "forget_dataset"),
        (dict(retain_dataset=None), ValueError, "retain_dataset"),
        (dict(retain_dataset=Dataset.from_list([{"text": "a b c"}]), processing_class=None), ValueError,
         "processing_class"),
        (dict(forget_dataset=Dataset.from_dict({"input_ids": [[5]]})), ValueError, "forget_dataset"),
    ]
    for overrides, error, message in cases:
        kwargs = dict(forget_dataset=forget, retain_dataset=retain, processing_class=tokenizer) | overrides
        with pytest.raises(error, match=message):
            UnlearnTrainer(model=model, args=args, **kwargs)
    with pytest.raises(TypeError, match="UnlearnConfig"):
        UnlearnTrainer(model=model, args=object(), forget_dataset=forget, retain_dataset=retain)
    with pytest.raises(ValueError, match="rmu_layer"):
        UnlearnTrainer(model=model, args=config(tmp_path, method="rmu", rmu_layer=5), forget_dataset=forget,
                       retain_dataset=retain)
    with pytest.raises(ValueError, match="rmu_param_regex"):
        UnlearnTrainer(model=model, args=config(tmp_path, method="rmu", rmu_layer=1, rmu_param_regex="nothing"),
                       forget_dataset=forget, retain_dataset=retain)
    # GA has no retain term: no retain dataset needed.
    UnlearnTrainer(model=model, args=config(tmp_path, method="ga"), forget_dataset=forget)


@pytest.mark.parametrize(("smoothing", "engine", "message"), [
    ("sam", "zero2", r"smoothing='sam' under DeepSpeed ZeRO-2 is not supported: .* Use FSDP2"),
    ("rs", "zero3", r"smoothing='rs' under DeepSpeed ZeRO-3 is not supported: .* Use FSDP2"),
    ("gp", "zero2", r"smoothing='gp' under DeepSpeed ZeRO-2 is not supported"),
    ("sam", "fsdp1", r"smoothing='sam' under FSDP1 is not supported: .* Use FSDP2"),
    ("gp", "fsdp2", r"smoothing='gp' under FSDP2 is not supported: .* double backward .* Use smoothing='sam'"),
    ("cr", "fsdp2", r"smoothing='cr' under FSDP2 is not supported"),
    ("wa", "zero3", r"smoothing='wa' under DeepSpeed ZeRO-3 is not supported: .* Use ZeRO-2, FSDP2 or DDP"),
])
def test_unsupported_engine_and_smoothing_is_refused_naming_both(tmp_path, monkeypatch, smoothing, engine, message):
    trainer = make_trainer(tmp_path, smoothing=smoothing)
    monkeypatch.setattr("hf_robust.unlearning.trainer.engine_of", lambda accelerator: engine)
    with pytest.raises(ValueError, match=message):
        trainer._check_parallelism()


@pytest.mark.parametrize(("smoothing", "engine"), [("sam", "fsdp2"), ("rs", "fsdp2"), ("wa", "zero2"),
                                                   ("none", "zero3"), ("gp", "ddp")])
def test_supported_engine_and_smoothing_pass_the_check(tmp_path, monkeypatch, smoothing, engine):
    trainer = make_trainer(tmp_path, smoothing=smoothing)
    monkeypatch.setattr("hf_robust.unlearning.trainer.engine_of", lambda accelerator: engine)
    trainer._check_parallelism()


# ------------------------------------------------------------ objectives through the trainer


def test_npo_at_the_reference_is_2_ln2_over_beta_and_its_gradient_is_the_ga_gradient(tmp_path):
    npo = make_trainer(tmp_path, method="npo", retain_weight=0.0, beta=0.5)
    ga = make_trainer(tmp_path, method="ga")
    batch = npo.data_collator(list(npo.train_dataset))
    reference = npo._reference_outputs(npo.model, batch)
    loss, _ = npo._forget_loss(npo.model, batch, reference)
    torch.testing.assert_close(loss, torch.tensor(2 / 0.5 * math.log(2)))
    npo_gradients = torch.autograd.grad(loss, list(npo.model.parameters()))
    ga_loss, _ = ga._forget_loss(ga.model, batch, {})
    ga_gradients = torch.autograd.grad(ga_loss, list(ga.model.parameters()))
    # NPO averages summed-token NLLs over sequences, GA averages over tokens: a factor of LENGTH - 1 tokens.
    for npo_gradient, ga_gradient in zip(npo_gradients, ga_gradients):
        torch.testing.assert_close(npo_gradient, (LENGTH - 1) * ga_gradient, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["graddiff", "simnpo", "simnpo-delta"])
@pytest.mark.parametrize("retain_loss", ["nll", "kl"])
def test_objective_matches_its_formula(tmp_path, method, retain_loss):
    delta = 0.7 if method == "simnpo-delta" else 0.0
    extra = {"simnpo_delta": delta} if delta else {}
    method = method.removesuffix("-delta")
    trainer = make_trainer(tmp_path, method=method, retain_loss=retain_loss, retain_weight=0.5, **extra)
    batch = trainer.data_collator(list(trainer.train_dataset))
    model = trainer.model
    theta = dict(model.named_parameters())
    forget_nll = summed_nll(call(model, theta, batch["forget_input_ids"]), batch["forget_input_ids"])
    if method == "graddiff":
        forget = -forget_nll.sum() / (forget_nll.numel() * (LENGTH - 1))
    else:
        forget = (-(2 / 4.5) * F.logsigmoid(4.5 * (forget_nll / (LENGTH - 1) - delta))).mean()
    # At initialisation the reference is the model: KL is 0.
    retain = retain_nll(model, theta, batch) if retain_loss == "nll" else torch.tensor(0.0)
    torch.testing.assert_close(trainer.compute_loss(model, batch), forget + 0.5 * retain, rtol=1e-5, atol=1e-6)


def test_kl_retain_term_is_positive_once_the_model_moved(tmp_path):
    trainer = make_trainer(tmp_path, method="graddiff", retain_loss="kl", max_steps=2, learning_rate=1.0)
    trainer.train()
    batch = trainer.data_collator(list(trainer.train_dataset))
    reference = trainer._reference_outputs(trainer.model, batch)
    assert trainer._retain_loss(trainer.model, batch, reference)[0] > 1e-4


# ------------------------------------------------------------ LoRA, RMU


def test_lora_uses_the_adapter_free_base_as_reference_and_trains_only_adapters(tmp_path):
    model, tokenizer = tiny_causal_lm("llama")
    trainer = UnlearnTrainer(model=model, args=config(tmp_path, smoothing="sam", rho=0.1, learning_rate=0.5,
                                                      max_steps=2, per_device_train_batch_size=2),
                             forget_dataset=token_rows(4, 1), retain_dataset=token_rows(4, 2),
                             processing_class=tokenizer,
                             peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    assert trainer.ref_model is None and trainer.reference_is_base
    before = parameters_of(trainer.model)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[0]["forget_loss"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)  # LoRA B = 0: policy = base
    assert logs[1]["forget_loss"] != pytest.approx(logs[0]["forget_loss"], rel=1e-4)
    changed = changed_parameters(trainer.model, before)
    assert changed and all("lora_" in name for name in changed)


def test_rmu_trains_only_the_matched_parameters_and_lowers_its_loss(tmp_path):
    trainer = make_trainer(tmp_path, method="rmu", rmu_layer=1, rmu_steering_coeff=4.0, rmu_alpha=10.0,
                           max_steps=8, per_device_train_batch_size=2, optim="adamw_torch", learning_rate=1e-2)
    before = parameters_of(trainer.model)
    trainable = {name for name, parameter in trainer.model.named_parameters() if parameter.requires_grad}
    assert trainable == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    batch = trainer.data_collator(list(trainer.train_dataset))
    reference = trainer._reference_outputs(trainer.model, batch)
    start = trainer.compute_loss(trainer.model, batch).item()
    trainer.train()
    changed = changed_parameters(trainer.model, before)
    assert changed == trainable
    assert trainer.compute_loss(trainer.model, batch).item() < 0.9 * start
    torch.testing.assert_close(trainer.steering.norm(), torch.tensor(4.0))
    assert torch.equal(trainer._reference_outputs(trainer.model, batch)["retain_activations"],
                       reference["retain_activations"])  # the frozen copy never moves


def test_rmu_with_lora_steers_through_the_adapters_against_the_base(tmp_path):
    model, tokenizer = tiny_causal_lm("llama")
    trainer = UnlearnTrainer(model=model, args=config(tmp_path, method="rmu", rmu_layer=1, rmu_param_regex=r"lora_B",
                                                      rmu_alpha=1.0, max_steps=2, optim="adamw_torch",
                                                      learning_rate=1e-2, per_device_train_batch_size=2),
                             forget_dataset=token_rows(4, 1), retain_dataset=token_rows(4, 2),
                             processing_class=tokenizer,
                             peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["down_proj"]))
    assert trainer.ref_model is None and trainer.reference_is_base
    before = parameters_of(trainer.model)
    trainer.train()
    changed = changed_parameters(trainer.model, before)
    assert changed and all("lora_B" in name for name in changed)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[0]["retain_loss"] == 0.0 and logs[1]["retain_loss"] > 0  # policy = base until the adapters move


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_other_architectures_train_with_sam(tmp_path, arch):
    trainer = make_trainer(tmp_path, model=tiny_causal_lm(arch), smoothing="sam", method="simnpo", beta=0.5,
                           max_steps=2, per_device_train_batch_size=2)
    before = parameters_of(trainer.model)
    trainer.train()
    assert any(not torch.equal(parameter, before[name]) for name, parameter in trainer.model.named_parameters())
    assert all(math.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)


def test_full_fine_tuning_reference_is_a_frozen_copy(tmp_path):
    trainer = make_trainer(tmp_path)
    assert trainer.ref_model is not trainer.model and not trainer.reference_is_base
    assert not any(parameter.requires_grad for parameter in trainer.ref_model.parameters())
    for (name, parameter), reference in zip(trainer.model.named_parameters(), trainer.ref_model.parameters()):
        assert torch.equal(parameter, reference), name
    assert make_trainer(tmp_path, method="ga").ref_model is None
    given = copy.deepcopy(trainer.model)
    model, tokenizer = tiny_causal_lm("llama")
    assert UnlearnTrainer(model=model, args=config(tmp_path), forget_dataset=token_rows(4, 1),
                          retain_dataset=token_rows(4, 2), processing_class=tokenizer,
                          ref_model=given).ref_model is given
