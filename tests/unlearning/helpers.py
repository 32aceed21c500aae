"""Shared by the UnlearnTrainer tests: tiny trainers on random token rows, parameter snapshots, a micro-batch
recorder, and an independent NPO + SAM computation (torch.func only) to compare the trainer with."""

import torch
import torch.nn.functional as F
from datasets import Dataset
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
