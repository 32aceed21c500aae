import math
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

from hf_robust.cat.capo_command import make_parser
from hf_robust.cat.capo_config import CAPOConfig
from hf_robust.cat.capo_trainer import CAPOTrainer, shared_prompt_delta
from hf_robust.testing import tiny_causal_lm
from hf_robust.testing.chat_rows import PREFERENCE_ROWS, preference_dataset

# A budget large enough that delta visibly changes the policy log-probs; "l2" steps are continuous in the gradient.
STRONG_ATTACK = dict(attack_eps=1.0, attack_steps=3, attack_step_size=0.3, attack_step_mode="relative",
                     attack_optimizer="l2")
# What every trl config of these tests must set.
REQUIRED = dict(bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no")


def settings(tmp_path, config_class=CAPOConfig, **overrides):
    defaults = dict(output_dir=str(tmp_path), disable_tqdm=True, seed=0, max_length=64, per_device_train_batch_size=2,
                    learning_rate=1e-2, logging_steps=1)
    return config_class(**{**defaults, **REQUIRED, **overrides})


def make_trainer(tmp_path, trainer_class=CAPOTrainer, arch="llama", lora=True, lora_init=True, rows=PREFERENCE_ROWS,
                 conversational=True, **overrides):
    """A trainer on a tiny model: LoRA (reference = adapters disabled) or full FT (reference = a seed-1 copy)."""
    model, tokenizer = tiny_causal_lm(arch)
    if trainer_class is DPOTrainer:
        args = settings(tmp_path, DPOConfig, loss_type=["ipo"], beta=0.25, **overrides)
    else:
        args = settings(tmp_path, **overrides)
    keywords = {}
    if lora:
        keywords["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                             init_lora_weights=lora_init)
    elif not args.precompute_ref_log_probs:
        keywords["ref_model"] = tiny_causal_lm(arch, seed=1)[0]  # differs from the policy: a loss far from 1/(4β²)
    return trainer_class(model=model, args=args, train_dataset=preference_dataset(rows, conversational),
                         processing_class=tokenizer, **keywords)


def batch_of(trainer, indices=None) -> dict:
    dataset = trainer.train_dataset
    indices = range(len(dataset)) if indices is None else indices
    return trainer.data_collator([dataset[index] for index in indices])


def loss_and_gradients(trainer, batch):
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    gradients = {name: parameter.grad.clone() for name, parameter in trainer.model.named_parameters()
                 if parameter.requires_grad}
    return loss.detach(), gradients


def record_log_prob_forwards(module, records):
    """Record (grad enabled, per-row summed log-probs) of every fused-head forward of `module`."""

    def hook(module, args, kwargs, output):
        if kwargs.get("fused_lm_head"):
            records.append((torch.is_grad_enabled(), output.log_probs.detach().sum(dim=1)))

    return module.register_forward_hook(hook, with_kwargs=True)


def completion_log_probs(model, batch, delta=None) -> torch.Tensor:
    """Per-row sum of the completion tokens' log-probs on embeddings + delta (None: clean), from plain logits (no trl
    code). Shape (rows,)."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(batch["input_ids"])
        embeds = embeds if delta is None else embeds + delta
        logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    token = logits.log_softmax(dim=-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token * batch["completion_mask"][:, 1:]).sum(dim=1)


# 1. Config


def test_config_defaults_are_the_paper_ones(tmp_path):
    config = settings(tmp_path)
    assert config.loss_type == ["ipo"] and config.beta == 0.25
    assert (config.attack_eps, config.attack_eps_mode, config.attack_steps, config.attack_step_size,
            config.attack_optimizer, config.attack_init) == (0.05, "relative", 10, 1e-4, "sign", "zero")
    assert config.attack_config().targeted
    assert settings(tmp_path, loss_type="ipo").loss_type == ["ipo"]  # trl's string form still works


@pytest.mark.parametrize(
    "overrides, field_name",
    [({"attack_eps": -1}, "attack_eps"), ({"loss_type": ["sigmoid"]}, "loss_type"),
     ({"loss_type": ["ipo", "sft"], "loss_weights": [1.0, 1.0]}, "loss_type"),
     ({"attack_optimizer": "foo"}, "attack_optimizer"), ({"beta": 0.0}, "beta")],
)
def test_config_rejects_bad_values_naming_the_field(tmp_path, overrides, field_name):
    with pytest.raises(ValueError, match=f"`{field_name}`"):
        settings(tmp_path, **overrides)


def test_trainer_metadata_and_model_card(tmp_path):
    assert CAPOTrainer._tag_names == ["trl", "dpo", "hf-robust", "capo"] and CAPOTrainer._name == "CAPO"
    assert CAPOTrainer._paper["id"] == "2405.15589"
    trainer = make_trainer(tmp_path)
    trainer.create_model_card(model_name="tiny-capo")
    card = (tmp_path / "README.md").read_text()
    assert "capo" in card and "2405.15589" in card and "Efficient Adversarial Training in LLMs" in card
    with pytest.raises(TypeError, match="CAPOConfig"):
        CAPOTrainer(model=tiny_causal_lm("llama")[0], args=settings(tmp_path, DPOConfig),
                    train_dataset=preference_dataset(), processing_class=tiny_causal_lm("llama")[1])


def test_recipe_holds_the_paper_settings(tmp_path):
    recipe = Path(__file__).parents[2] / "recipes" / "capo.yaml"
    flags = ["--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing",
             "false", "--report_to", "none", "--save_strategy", "no"]
    script, evaluation, config, model = make_parser().parse_args_and_config(["--config", str(recipe), *flags])
    assert evaluation.eval_behaviours == "toy"
    assert script.dataset_name and model.model_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (model.use_peft, model.lora_r, model.lora_alpha, model.lora_dropout, model.lora_target_modules) == (
        True, 64, 16, 0.1, "all-linear")
    assert (config.loss_type, config.beta, config.learning_rate, config.max_length) == (["ipo"], 0.25, 2e-4, 128)
    assert (config.attack_eps, config.attack_eps_mode, config.attack_steps, config.attack_step_size,
            config.attack_optimizer) == (0.05, "relative", 10, 1e-4, "sign")
    batching = (config.per_device_train_batch_size, config.gradient_accumulation_steps, config.num_train_epochs)
    assert batching == (8, 8, 20)
    assert (config.weight_decay, config.max_grad_norm, config.lr_scheduler_type) == (0.001, 0.3, "cosine")
    assert yaml.safe_load(recipe.read_text())["bf16"] is True  # overridden above only because this is a CPU test


# 2-3. Without a budget CAPO is trl's IPO


@pytest.mark.parametrize("lora, no_budget", [(True, {"attack_eps": 0.0}), (False, {"attack_steps": 0})])
def test_zero_budget_equals_trl_ipo_loss_and_gradients(tmp_path, lora, no_budget):
    # Random LoRA B (init_lora_weights=False), or a reference of another seed: the policy differs from the reference.
    capo = make_trainer(tmp_path / "capo", lora=lora, lora_init=False, **no_budget)
    dpo = make_trainer(tmp_path / "dpo", DPOTrainer, lora=lora, lora_init=False)
    batch = batch_of(capo, range(4))
    capo_loss, capo_gradients = loss_and_gradients(capo, batch)
    dpo_loss, dpo_gradients = loss_and_gradients(dpo, batch)
    assert abs(capo_loss.item() - 4.0) > 1e-3  # not the trivial policy == reference value
    torch.testing.assert_close(capo_loss, dpo_loss, rtol=0, atol=1e-6)
    assert capo_gradients.keys() == dpo_gradients.keys() and capo_gradients
    for name, gradient in dpo_gradients.items():
        torch.testing.assert_close(capo_gradients[name], gradient, rtol=1e-5, atol=1e-7,
                                   msg=lambda text: f"{name}: {text}")
    assert "attack_loss" in capo._metrics["train"]  # the attack really ran, with no budget


def test_policy_equal_to_reference_gives_the_ipo_constant(tmp_path):
    trainer = make_trainer(tmp_path, attack_eps=0.0)  # fresh LoRA: B = 0, so policy == base == reference
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch_of(trainer))
    assert loss.item() == pytest.approx(1 / (4 * 0.25**2), abs=1e-6)  # ((0 - 0) - 1/(2β))² = 4


# 4-5. The reference is clean, frozen and per row


def test_reference_pass_is_clean_frozen_and_the_base_model(tmp_path):
    trainer = make_trainer(tmp_path, **STRONG_ATTACK)
    model, batch = trainer.model, batch_of(trainer, range(4))
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    records = []
    handle = record_log_prob_forwards(model, records)
    model.train()
    try:
        loss = trainer.compute_loss(model, batch)
    finally:
        handle.remove()

    # The attack and the reference forward leave no gradient and change nothing.
    assert all(parameter.grad is None for parameter in model.parameters())
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    (policy_grad, policy), (reference_grad, reference) = records  # one policy forward, one reference forward
    assert policy_grad and not reference_grad
    # The reference saw the clean batch: trl's own reference computation, and the base model from plain logits.
    torch.testing.assert_close(reference, torch.cat(trainer.compute_ref_log_probs(model, batch)), rtol=0, atol=1e-5)
    base_model = tiny_causal_lm("llama")[0]  # bit-identical to the model under the fresh (B = 0) adapter
    torch.testing.assert_close(reference, completion_log_probs(base_model, batch), rtol=0, atol=1e-4)
    # ...while the policy saw prompt + delta, the attack's delta (deterministic: zero init) on both halves.
    delta, _, _ = trainer.adversarial_delta(model, batch)
    assert (policy - reference).abs().max() > 1e-2
    torch.testing.assert_close(policy, completion_log_probs(base_model, batch, delta), rtol=0, atol=1e-4)

    loss.backward()
    trained = {name for name, parameter in model.named_parameters() if parameter.grad is not None}
    assert trained and all("lora_" in name for name in trained)
    # Evaluation is clean trl IPO: with policy == reference it is the constant 4.
    model.eval()
    with torch.no_grad():
        assert trainer.compute_loss(model, batch).item() == pytest.approx(4.0, abs=1e-6)


def test_full_fine_tuning_reference_model_gets_no_gradient(tmp_path):
    trainer = make_trainer(tmp_path, lora=False, **STRONG_ATTACK)
    reference_model, batch = trainer.ref_model, batch_of(trainer, range(4))
    before = {name: parameter.detach().clone() for name, parameter in reference_model.named_parameters()}
    records = []
    handle = record_log_prob_forwards(reference_model, records)
    try:
        loss_and_gradients(trainer, batch)
    finally:
        handle.remove()
    ((grad_enabled, reference),) = records
    assert not grad_enabled
    torch.testing.assert_close(reference, torch.cat(trainer.compute_ref_log_probs(reference_model, batch)),
                               rtol=0, atol=1e-5)
    for name, parameter in reference_model.named_parameters():
        assert parameter.grad is None and torch.equal(parameter, before[name]), name


def test_precomputed_reference_gives_the_same_loss(tmp_path):
    online = make_trainer(tmp_path / "online", **STRONG_ATTACK)
    precomputed = make_trainer(tmp_path / "precomputed", precompute_ref_log_probs=True, **STRONG_ATTACK)
    batch = batch_of(precomputed, range(4))
    assert "ref_chosen_logps" in batch
    online.model.train()
    precomputed.model.train()
    torch.testing.assert_close(precomputed.compute_loss(precomputed.model, batch),
                               online.compute_loss(online.model, batch), rtol=0, atol=1e-5)


def test_each_rows_reference_belongs_to_that_row(tmp_path):
    trainer = make_trainer(tmp_path, **STRONG_ATTACK)
    model, indices = trainer.model, [0, 4, 7]  # different prompts, refusals and targets: every row pads differently
    batch = batch_of(trainer, indices)
    records = []
    handle = record_log_prob_forwards(model, records)
    model.train()
    try:
        trainer.compute_loss(model, batch)
    finally:
        handle.remove()
    reference = records[1][1]
    chosen, rejected = reference.chunk(2)
    for row, index in enumerate(indices):
        alone_chosen, alone_rejected = trainer.compute_ref_log_probs(model, batch_of(trainer, [index]))
        for half, value, alone in (("chosen", chosen, alone_chosen), ("rejected", rejected, alone_rejected)):
            torch.testing.assert_close(value[row], alone[0], rtol=0, atol=1e-4,
                                       msg=lambda text: f"{half} row {row}: {text}")


# 6. Where delta goes


def test_delta_is_shared_on_the_prompt_and_zero_elsewhere(tmp_path):
    trainer = make_trainer(tmp_path, **STRONG_ATTACK)
    batch = batch_of(trainer, [0, 1, 2, 7])
    delta, result, mask = trainer.adversarial_delta(trainer.model, batch)
    rows = batch["input_ids"].shape[0] // 2
    assert delta.shape == (*batch["input_ids"].shape, trainer.model.config.hidden_size)
    prompt = (batch["attention_mask"] == 1) & (batch["completion_mask"] == 0)
    assert (delta[~prompt] == 0).all()  # completion and padding of both halves
    chosen_prompt, rejected_prompt = prompt.chunk(2)
    assert torch.equal(chosen_prompt, rejected_prompt) and torch.equal(rejected_prompt, mask)
    assert torch.equal(delta[:rows], delta[rows:])
    norms = delta.norm(dim=-1)
    assert norms[prompt].min() > 0 and norms.max() <= result.radius * (1 + 1e-5)
    assert delta.dtype == torch.float32


def test_shared_prompt_delta_aligns_prompts_cut_to_different_lengths():
    # keep_end truncation: the chosen row kept 2 prompt tokens, the rejected row 3 (its completion is shorter).
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    completion_mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])
    delta = torch.arange(1.0, 6.0).reshape(1, 5, 1) * torch.tensor([1, 1, 1, 0, 0.0]).reshape(1, 5, 1)
    shared = shared_prompt_delta(delta, completion_mask, attention_mask).squeeze(-1)
    assert shared.tolist() == [[2.0, 3.0, 0, 0, 0], [1.0, 2.0, 3.0, 0, 0]]  # the same last prompt tokens


# 7. Gradient accumulation


def test_one_batch_of_eight_equals_eight_accumulated_batches_of_one(tmp_path):
    attack = dict(STRONG_ATTACK, attack_init="zero")
    common = dict(max_steps=1, optim="sgd", learning_rate=1.0, lora_init=False, **attack)
    whole = make_trainer(tmp_path / "whole", per_device_train_batch_size=8, gradient_accumulation_steps=1, **common)
    pieces = make_trainer(tmp_path / "pieces", per_device_train_batch_size=1, gradient_accumulation_steps=8, **common)
    before = {name: parameter.detach().clone() for name, parameter in whole.model.named_parameters()}
    whole.train()
    pieces.train()
    trained = dict(pieces.model.named_parameters())
    moved = 0.0
    for name, parameter in whole.model.named_parameters():
        # Padding in the batch of 8 changes float rounding (~5e-8 on the step without attack); the attack's forwards
        # amplify it to ~5e-6. A wrong accumulation scale or a misplaced delta is of the order of the step (~0.1).
        torch.testing.assert_close(trained[name], parameter, rtol=0, atol=1e-5, msg=lambda text: f"{name}: {text}")
        moved = max(moved, (parameter - before[name]).abs().max().item())
    assert moved > 1e-3  # the step was not a no-op


# 8. Training runs


@pytest.mark.parametrize(
    "arch, lora, overrides",
    [("llama", True, {}), ("qwen2", True, {}), ("llama", False, {}), ("llama", True, {"bf16": True}),
     ("gpt2", True, {"conversational": False})],
    ids=["llama-lora", "qwen2-lora", "llama-full", "llama-lora-bf16", "gpt2-plain-text"],
)
def test_training_runs_and_logs_the_attack(tmp_path, arch, lora, overrides):
    overrides = dict(overrides)
    conversational = overrides.pop("conversational", True)
    trainer = make_trainer(tmp_path, arch=arch, lora=lora, conversational=conversational, max_steps=2,
                           attack_steps=2, **overrides)
    assert trainer.args.bf16 == overrides.get("bf16", False)
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == 2
    for entry in steps:
        assert math.isfinite(entry["loss"])
        assert entry["attack_delta_norm"] > 0 and math.isfinite(entry["attack_loss"])
        assert 0 <= entry["attack_success"] <= 1
    metrics = trainer.evaluate(preference_dataset(PREFERENCE_ROWS[:2], conversational))  # clean trl IPO, no attack
    assert math.isfinite(metrics["eval_loss"]) and not any("attack" in key for key in metrics)


# 10. Bad input


@pytest.mark.parametrize(
    "rows, missing",
    [([{"prompt": "Hi.", "chosen": " No."}], "`rejected`"),
     ([{"prompt": "Hi.", "completion": " No."}], "`chosen`, `rejected`"),
     ([{"chosen": "Hi. No.", "rejected": "Hi. Yes."}], "`prompt`"),
     ([{"text": "Hi."}], "`prompt`, `chosen`, `rejected`")],
)
def test_missing_columns_are_named(tmp_path, rows, missing):
    model, tokenizer = tiny_causal_lm("llama")
    with pytest.raises(ValueError, match=missing):
        CAPOTrainer(model=model, args=settings(tmp_path), train_dataset=Dataset.from_list(rows),
                    processing_class=tokenizer, peft_config=LoraConfig(r=4, target_modules="all-linear"))


def test_implicit_prompt_of_conversational_rows_is_accepted(tmp_path):
    conversations = [
        {"chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
         "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
        for p, c, r in PREFERENCE_ROWS[:2]
    ]
    model, tokenizer = tiny_causal_lm("llama")
    trainer = CAPOTrainer(model=model, args=settings(tmp_path), train_dataset=Dataset.from_list(conversations),
                          processing_class=tokenizer, peft_config=LoraConfig(r=4, target_modules="all-linear"))
    assert trainer.train_dataset[0]["prompt"] == [{"role": "user", "content": PREFERENCE_ROWS[0][0]}]
