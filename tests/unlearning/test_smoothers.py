"""SAM through UnlearnTrainer (hf_robust.unlearning.smoothers): rho 0 is the base method, the update is the forget
gradient at theta + eps and the retain gradient at theta, the weights come back exactly, one optimizer step per
global step, gradient accumulation, forward passes counted, logs, bf16 autocast."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_robust.testing import tiny_causal_lm
from hf_robust.unlearning import UnlearnTrainer

from .helpers import (
    config, expected_sam_gradient, make_trainer, npo_forget, parameters_of, record_batches, retain_nll, token_rows,
)


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
