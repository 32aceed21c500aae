import copy
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import LoraConfig
from torch.func import functional_call

from hf_robust.testing import tiny_causal_lm
from hf_robust.unlearning import UnlearnConfig, UnlearnTrainer

REQUIRED = dict(use_cpu=True, report_to="none", save_strategy="no", bf16=False, disable_tqdm=True)
LENGTH = 8  # every row has this many tokens: window-, micro-batch- and sequence-means then coincide


def token_rows(count, seed, vocab=64):
    generator = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({"input_ids": torch.randint(3, vocab, (count, LENGTH), generator=generator).tolist()})


def config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), seed=0, per_device_train_batch_size=4, max_steps=1, optim="sgd",
                  learning_rate=0.1, max_grad_norm=0.0, logging_steps=1, lr_scheduler_type="constant", **REQUIRED)
    return UnlearnConfig(**{**values, **overrides})


def make_trainer(tmp_path, model=None, forget_rows=4, retain_rows=4, **overrides):
    model, tokenizer = model or tiny_causal_lm("llama")
    return UnlearnTrainer(model=model, args=config(tmp_path, **overrides), forget_dataset=token_rows(forget_rows, 1),
                          retain_dataset=token_rows(retain_rows, 2), processing_class=tokenizer)


def parameters_of(model):
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def changed_parameters(model, before):
    return {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}


def record_batches(trainer):
    """Keep every micro-batch `training_step` sees."""
    batches, original = [], trainer.training_step

    def recording(model, inputs, *args, **kwargs):
        batches.append({key: value.clone() for key, value in inputs.items()})
        return original(model, inputs, *args, **kwargs)

    trainer.training_step = recording
    return batches


# ------------------------------------------------------------ an independent NPO + SAM computation


def call(model, parameters, ids):
    return functional_call(model, parameters, (ids,), {"attention_mask": torch.ones_like(ids)}).logits


def summed_nll(logits, ids):
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").sum(dim=1)


def npo_forget(model, parameters, reference, batch, beta):
    ids = batch["forget_input_ids"]
    with torch.no_grad():
        reference_nll = summed_nll(call(model, reference, ids), ids)
    return (-(2 / beta) * F.logsigmoid(beta * (summed_nll(call(model, parameters, ids), ids) - reference_nll))).mean()


def retain_nll(model, parameters, batch):
    ids = batch["retain_input_ids"]
    return summed_nll(call(model, parameters, ids), ids).sum() / ids[:, 1:].numel()


def expected_sam_gradient(model, theta, batch, rho, gamma, beta=0.1):
    """grad L_f(theta + eps) + gamma grad L_r(theta), eps = rho g/||g||, g = grad L_f(theta): torch.func only.

    `theta` ({name: tensor}) is also the reference (the weights before unlearning)."""
    reference = theta
    theta = {name: value.detach().clone().requires_grad_() for name, value in theta.items()}
    names = list(theta)
    gradient = torch.autograd.grad(npo_forget(model, theta, reference, batch, beta), list(theta.values()))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in gradient))
    shifted = {name: (theta[name] + rho * g / (norm + 1e-12)).detach().requires_grad_()
               for name, g in zip(names, gradient)}
    forget = torch.autograd.grad(npo_forget(model, shifted, reference, batch, beta), list(shifted.values()))
    retain = torch.autograd.grad(retain_nll(model, theta, batch), list(theta.values()))
    return {name: f + gamma * r for name, f, r in zip(names, forget, retain)}


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


# ------------------------------------------------------------ SAM invariants


@pytest.mark.parametrize("optim", ["sgd", "adamw_torch"])
def test_sam_with_zero_radius_equals_the_base_method(tmp_path, optim):
    results = []
    for smoothing in ("none", "sam"):
        trainer = make_trainer(tmp_path, smoothing=smoothing, rho=0.0, optim=optim, max_steps=2,
                               per_device_train_batch_size=2, learning_rate=1e-2)
        trainer.train()
        results.append(parameters_of(trainer.model))
    for name, parameter in results[0].items():
        torch.testing.assert_close(results[1][name], parameter, rtol=0, atol=1e-6, msg=name)


def test_sgd_update_is_the_forget_gradient_at_theta_plus_eps_and_the_retain_gradient_at_theta(tmp_path):
    rho, gamma, rate = 2.0, 0.7, 0.1
    trainer = make_trainer(tmp_path, smoothing="sam", rho=rho, retain_weight=gamma, learning_rate=rate)
    before = parameters_of(trainer.model)
    batches = record_batches(trainer)
    trainer.train()
    model = trainer.model
    expected = expected_sam_gradient(model, before, batches[0], rho, gamma)
    without_sam = expected_sam_gradient(model, before, batches[0], 0.0, gamma)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.detach(), before[name] - rate * expected[name], rtol=0, atol=1e-6,
                                   msg=name)
    # The radius is large enough that the perturbation matters.
    assert max((expected[name] - without_sam[name]).abs().max() for name in expected) > 1e-3


def test_sam_target_all_perturbs_along_the_whole_objective(tmp_path):
    rho, gamma, rate = 2.0, 0.7, 0.1
    trainer = make_trainer(tmp_path, smoothing="sam", sam_target="all", rho=rho, retain_weight=gamma,
                           learning_rate=rate)
    before = parameters_of(trainer.model)
    batches = record_batches(trainer)
    trainer.train()
    model, batch = trainer.model, batches[0]
    theta = {name: value.clone().requires_grad_() for name, value in before.items()}

    def whole(parameters):
        return npo_forget(model, parameters, before, batch, 0.1) + gamma * retain_nll(model, parameters, batch)

    gradient = torch.autograd.grad(whole(theta), list(theta.values()))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in gradient))
    shifted = {name: (theta[name] + rho * g / norm).detach().requires_grad_() for name, g in zip(theta, gradient)}
    expected = torch.autograd.grad(whole(shifted), list(shifted.values()))
    for (name, parameter), grad in zip(model.named_parameters(), expected):
        torch.testing.assert_close(parameter.detach(), before[name] - rate * grad, rtol=0, atol=1e-6, msg=name)


def test_second_pass_sees_theta_plus_eps_of_norm_rho_parallel_to_the_forget_gradient(tmp_path):
    rho = 0.3
    trainer = make_trainer(tmp_path, smoothing="sam", rho=rho, retain_weight=0.0)
    model = trainer.model
    batch = trainer.data_collator(list(trainer.train_dataset))
    before = parameters_of(model)
    forget, _ = trainer._forget_loss(model, batch, trainer._reference_outputs(model, batch))
    gradient = dict(zip(before, torch.autograd.grad(forget, list(model.parameters()))))
    seen = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(parameters_of(module)))
    try:
        trainer.training_step(model, batch)
    finally:
        handle.remove()
    assert len(seen) == 2  # forget at theta, forget at theta + eps (no retain term)
    epsilon = {name: seen[1][name] - before[name] for name in before}
    assert all(torch.equal(seen[0][name], before[name]) for name in before)
    norm = torch.sqrt(sum(value.pow(2).sum() for value in epsilon.values()))
    torch.testing.assert_close(norm, torch.tensor(rho), rtol=1e-4, atol=0)
    flat_epsilon = torch.cat([epsilon[name].flatten() for name in before])
    flat_gradient = torch.cat([gradient[name].flatten() for name in before])
    assert F.cosine_similarity(flat_epsilon, flat_gradient, dim=0) > 1 - 1e-4
    for name in before:  # every trainable tensor moves, along its own gradient
        torch.testing.assert_close(epsilon[name], rho * gradient[name] / flat_gradient.norm(), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_parameters_are_restored_exactly_after_the_step_and_after_an_exception(tmp_path, dtype):
    model, tokenizer = tiny_causal_lm("llama")
    model.to(dtype)
    trainer = make_trainer(tmp_path, model=(model, tokenizer), smoothing="sam", rho=0.5)
    batch = trainer.data_collator(list(trainer.train_dataset))
    before = parameters_of(model)
    trainer.training_step(model, batch)
    assert all(torch.equal(parameter, before[name]) for name, parameter in model.named_parameters())
    assert all(parameter.grad is not None and torch.isfinite(parameter.grad).all() for parameter in model.parameters())

    calls = []

    def fail_on_second_pass(module, args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")

    handle = model.register_forward_pre_hook(fail_on_second_pass)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            trainer.training_step(model, batch)
    finally:
        handle.remove()
    assert all(torch.equal(parameter, before[name]) for name, parameter in model.named_parameters())


def test_one_optimizer_and_one_scheduler_step_per_global_step(tmp_path):
    model, tokenizer = tiny_causal_lm("llama")
    counts = {"optimizer": 0, "scheduler": 0}

    class CountedSGD(torch.optim.SGD):
        def step(self, *args, **kwargs):
            counts["optimizer"] += 1
            return super().step(*args, **kwargs)

    class CountedSchedule(torch.optim.lr_scheduler.LambdaLR):
        def step(self, *args, **kwargs):
            counts["scheduler"] += 1
            return super().step(*args, **kwargs)

    optimizer = CountedSGD(model.parameters(), lr=0.01)
    scheduler = CountedSchedule(optimizer, lambda step: 1.0)
    counts["scheduler"] = 0  # the scheduler steps once when built
    args = config(tmp_path, smoothing="sam", max_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=1)
    trainer = UnlearnTrainer(model=model, args=args,
                             forget_dataset=token_rows(6, 1), retain_dataset=token_rows(4, 2),
                             processing_class=tokenizer, optimizers=(optimizer, scheduler))
    trainer.train()
    assert trainer.state.global_step == 3 and counts == {"optimizer": 3, "scheduler": 3}


def test_gradient_accumulation_averages_the_per_micro_batch_sam_gradients(tmp_path):
    rho, rate = 1.0, 0.1
    trainer = make_trainer(tmp_path, smoothing="sam", rho=rho, per_device_train_batch_size=2,
                           gradient_accumulation_steps=2, learning_rate=rate)
    before = parameters_of(trainer.model)
    batches = record_batches(trainer)
    trainer.train()
    assert len(batches) == 2
    # Each micro-batch's SAM gradient on its own (a fresh trainer, each call normalised by its own batch).
    fresh = make_trainer(tmp_path, smoothing="sam", rho=rho)
    model = fresh.model
    per_batch = []
    for batch in batches:
        model.zero_grad(set_to_none=True)
        fresh.training_step(model, batch)
        per_batch.append({name: parameter.grad.clone() for name, parameter in model.named_parameters()})
    # Calling the step twice without zeroing keeps the first micro-batch's gradient: the sum of both.
    model.zero_grad(set_to_none=True)
    for batch in batches:
        fresh.training_step(model, batch)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, per_batch[0][name] + per_batch[1][name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            dict(trainer.model.named_parameters())[name].detach(),
            before[name] - rate * (per_batch[0][name] + per_batch[1][name]) / 2, rtol=0, atol=1e-6, msg=name)
    # And each equals the independent computation.
    expected = expected_sam_gradient(model, before, batches[0], rho, 1.0)
    for name in expected:
        torch.testing.assert_close(per_batch[0][name], expected[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("smoothing, retain_loss, policy", [("none", "nll", 2), ("sam", "nll", 3), ("sam", "kl", 3)])
def test_forward_passes_per_micro_step(tmp_path, smoothing, retain_loss, policy):
    """No wasted forward: ONE reference forward per micro-batch (forget NLL, and with KL the retain logits, in one
    call; never again in SAM's second pass); SAM = 2 forget + 1 retain policy forwards."""
    trainer = make_trainer(tmp_path, smoothing=smoothing, retain_loss=retain_loss, max_steps=2,
                           per_device_train_batch_size=2, gradient_accumulation_steps=2)
    forget_ids = {tuple(row["forget_input_ids"]) for row in trainer.train_dataset}
    counts = {"forget": 0, "retain": 0, "reference": 0}

    def policy_hook(module, args, kwargs):
        counts["forget" if tuple(kwargs["input_ids"][0].tolist()) in forget_ids else "retain"] += 1

    handles = [trainer.model.register_forward_pre_hook(policy_hook, with_kwargs=True),
               trainer.ref_model.register_forward_pre_hook(lambda *_: counts.__setitem__(
                   "reference", counts["reference"] + 1))]
    try:
        trainer.train()
    finally:
        for handle in handles:
            handle.remove()
    micro_steps = 4
    assert counts == {"forget": (policy - 1) * micro_steps, "retain": micro_steps, "reference": micro_steps}


def test_training_logs_the_terms(tmp_path):
    trainer = make_trainer(tmp_path, smoothing="sam", max_steps=2, per_device_train_batch_size=2)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert {"forget_loss", "retain_loss", "forget_loss_perturbed", "sam_grad_norm"} <= set(entry)
        assert entry["loss"] == pytest.approx(entry["forget_loss_perturbed"] + entry["retain_loss"], rel=1e-5)
    assert logs[0]["forget_loss"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)
    # Logging every 2 steps gives the mean of the two per-step values.
    trainer = make_trainer(tmp_path, smoothing="sam", max_steps=2, per_device_train_batch_size=2, logging_steps=2)
    trainer.train()
    (entry,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    for key in ("loss", "forget_loss", "retain_loss", "forget_loss_perturbed", "sam_grad_norm"):
        assert entry[key] == pytest.approx((logs[0][key] + logs[1][key]) / 2, rel=1e-5), key


def test_bf16_autocast_trains_with_finite_losses(tmp_path):
    trainer = make_trainer(tmp_path, smoothing="sam", bf16=True, max_steps=2, per_device_train_batch_size=2)
    before = parameters_of(trainer.model)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    keys = ("loss", "forget_loss_perturbed", "sam_grad_norm")
    assert all(math.isfinite(entry[key]) for entry in logs for key in keys)
    assert any(not torch.equal(parameter, before[name]) for name, parameter in trainer.model.named_parameters())


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
