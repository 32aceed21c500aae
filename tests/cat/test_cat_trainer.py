import warnings

import pytest
import torch
import torch.nn.functional as F

import hf_robust.cat.cat_trainer as cat_trainer_module
from hf_robust.attacks.continuous import IGNORE_INDEX, perturbation_radius
from hf_robust.cat.cat_trainer import CATTrainer, away_term, toward_term
from hf_robust.testing import tiny_causal_lm
from hf_robust.testing.chat_rows import adversarial_dataset, utility_dataset

from .cat_rows import config, make_trainer


def collate(trainer, adversarial_rows, utility_rows):
    rows = [row for row in trainer.train_dataset if row["adversarial"]][:adversarial_rows]
    rows += [row for row in trainer.train_dataset if not row["adversarial"]][:utility_rows]
    return trainer.data_collator(rows)


def record_attacks(monkeypatch):
    results = []
    original = cat_trainer_module.embedding_attack

    def recording(*args, **kwargs):
        results.append(original(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(cat_trainer_module, "embedding_attack", recording)
    return results


def row_cross_entropy(model, ids, labels, delta):
    """Token-mean CE of one unpadded row on ids' embeddings + delta."""
    embeds = model.get_input_embeddings()(ids[None]) + delta[None].to(model.dtype)
    logits = model(inputs_embeds=embeds).logits[0, :-1]
    return F.cross_entropy(logits.float(), labels[1:], ignore_index=IGNORE_INDEX)


def manual_loss(trainer, model, batch, delta):
    """The CAT loss written out row by row, without padding, from the away rows' delta."""
    args = trainer.args
    away_terms, toward_terms, utility_sum, utility_tokens = [], [], 0.0, 0
    adversarial_index = 0
    for row in range(batch["input_ids"].shape[0]):
        length = int(batch["attention_mask"][row].sum())
        ids, labels = batch["input_ids"][row, :length], batch["labels"][row, :length]
        if batch["adversarial"][row]:
            away_delta = delta[adversarial_index, :length]
            away_terms.append(away_term(row_cross_entropy(model, ids, labels, away_delta), args.away_cutoff))
            refusal_length = int(batch["refusal_attention_mask"][row].sum())
            refusal_ids = batch["refusal_input_ids"][row, :refusal_length]
            refusal_labels = batch["refusal_labels"][row, :refusal_length]
            # The refusal shares the prompt tokens, hence the prompt positions, of the away row.
            prompt_length = int((refusal_labels == IGNORE_INDEX).sum())
            toward_delta = torch.zeros(refusal_length, delta.shape[-1])
            toward_delta[:prompt_length] = delta[adversarial_index, :prompt_length]
            toward_terms.append(
                toward_term(row_cross_entropy(model, refusal_ids, refusal_labels, toward_delta), args.toward_cutoff)
            )
            adversarial_index += 1
        else:
            count = int((labels[1:] != IGNORE_INDEX).sum())
            utility_sum = utility_sum + row_cross_entropy(
                model, ids, labels, torch.zeros(length, delta.shape[-1])
            ) * count
            utility_tokens += count
    loss = args.utility_weight * utility_sum / max(utility_tokens, 1)
    if away_terms:
        loss = (loss + args.away_weight * torch.stack(away_terms).mean()
                + args.toward_weight * torch.stack(toward_terms).mean())
    return loss


def gradients(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None}


# ---------------------------------------------------------------- loss


def test_cutoff_algebra():
    cross_entropy = torch.tensor([1.0, 4.0, 6.0, 9.0, 0.2, 0.6], requires_grad=True)
    away = away_term(cross_entropy[:4], 5.0)
    torch.testing.assert_close(away, torch.tensor([-1.0, -4.0, -5.006, -5.009]))
    toward = toward_term(cross_entropy[4:], 0.5)
    torch.testing.assert_close(toward, torch.tensor([0.5002, 0.6]))
    (away.sum() + toward.sum()).backward()
    torch.testing.assert_close(cross_entropy.grad, torch.tensor([-1.0, -1.0, -1e-3, -1e-3, 1e-3, 1.0]))


@pytest.mark.parametrize("arch, peft, padding_side", [("llama", False, "right"), ("qwen2", True, "left"),
                                                      ("llama", True, "left"), ("qwen2", False, "right")])
def test_loss_and_gradients_equal_the_row_by_row_loss_on_the_attack_delta(
        tmp_path, monkeypatch, arch, peft, padding_side):
    """The trainer's one padded forward equals the loss written out per row, unpadded; attack gradients never leak."""
    model, tokenizer = tiny_causal_lm(arch)
    tokenizer.padding_side = padding_side  # the collator pads right itself; the tokenizer's side must not matter
    trainer = make_trainer(tmp_path, model=(model, tokenizer), peft=peft, adversarial_fraction=0.5)
    batch = collate(trainer, 3, 2)
    attacks = record_attacks(monkeypatch)
    model = trainer.model
    model.train()
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.full_like(parameter, 7.0)  # gradients already accumulated must stay untouched
    loss = trainer.compute_loss(model, batch)
    (result,) = attacks
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters() if p.requires_grad)
    assert result.delta.abs().sum() > 0
    trained = gradients(model, loss)
    expected_loss = manual_loss(trainer, model, batch, result.delta)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    expected = gradients(model, expected_loss)
    assert trained.keys() == expected.keys() and trained
    for name in expected:
        torch.testing.assert_close(trained[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("budget", [dict(attack_eps=0.0), dict(attack_steps=0)])
def test_zero_budget_is_the_clean_weighted_loss(tmp_path, monkeypatch, budget):
    trainer = make_trainer(tmp_path, adversarial_fraction=0.5, **budget)
    batch = collate(trainer, 2, 2)
    attacks = record_attacks(monkeypatch)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    assert torch.count_nonzero(attacks[0].delta) == 0
    clean = manual_loss(trainer, trainer.model, batch, torch.zeros_like(attacks[0].delta))
    torch.testing.assert_close(loss, clean, rtol=1e-5, atol=1e-6)
    trained, expected = gradients(trainer.model, loss), gradients(trainer.model, clean)
    for name in expected:
        torch.testing.assert_close(trained[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_perturbation_stays_in_the_ball_on_prompt_positions_only(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, adversarial_fraction=1.0, attack_steps=5, attack_step_size=0.5)
    batch = collate(trainer, 4, 0)
    attacks = record_attacks(monkeypatch)
    trainer.compute_loss(trainer.model, batch)
    delta = attacks[0].delta
    radius = perturbation_radius(trainer.model.get_input_embeddings().weight, 0.5)
    assert float(delta.norm(dim=-1).max()) <= radius * (1 + 1e-5)
    outside = (batch["attention_mask"] == 0) | (batch["labels"] != IGNORE_INDEX)
    assert torch.count_nonzero(delta[outside]) == 0
    assert torch.count_nonzero(delta[~outside].norm(dim=-1)) == int((~outside).sum())
    assert attacks[0].losses[-1] < attacks[0].losses[0]


def test_a_uniform_start_is_drawn_afresh_every_step_inside_the_ball(tmp_path, monkeypatch):
    # attack_steps=0: the returned delta is the start itself (Madry et al.'s random start, one draw per step)
    trainer = make_trainer(tmp_path, adversarial_fraction=1.0, attack_steps=0, attack_init="uniform")
    batch = collate(trainer, 2, 0)
    attacks = record_attacks(monkeypatch)
    trainer.compute_loss(trainer.model, batch)
    trainer.compute_loss(trainer.model, batch)
    radius = perturbation_radius(trainer.model.get_input_embeddings().weight, 0.5)
    prompt = (batch["attention_mask"] == 1) & (batch["labels"] == IGNORE_INDEX)
    for attack in attacks:
        assert float(attack.delta.norm(dim=-1).max()) <= radius * (1 + 1e-5)
        assert torch.count_nonzero(attack.delta[prompt].norm(dim=-1)) == int(prompt.sum())
    assert not torch.equal(attacks[0].delta, attacks[1].delta)
    # seeded from TrainingArguments.seed: a second trainer with the same seed draws the same starts
    again = make_trainer(tmp_path, adversarial_fraction=1.0, attack_steps=0, attack_init="uniform")
    again.compute_loss(again.model, batch)
    again.compute_loss(again.model, batch)
    assert all(torch.equal(first.delta, second.delta) for first, second in zip(attacks[:2], attacks[2:]))


def test_a_batch_without_adversarial_rows_is_the_utility_loss_without_attack(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, adversarial_fraction=0.5)
    batch = collate(trainer, 0, 3)

    def no_attack(*args, **kwargs):
        raise AssertionError("the attack must not run on a batch without adversarial rows")

    monkeypatch.setattr(cat_trainer_module, "embedding_attack", no_attack)
    loss = trainer.compute_loss(trainer.model, batch)
    outputs = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            labels=batch["labels"])
    torch.testing.assert_close(loss, outputs.loss, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- training


def final_parameters(trainer):
    trainer.train()
    return {name: parameter.detach().clone() for name, parameter in trainer.model.named_parameters()}


def test_gradient_accumulation_one_by_eight_equals_eight_by_one(tmp_path):
    common = dict(adversarial_fraction=0.5, mixing_stopping_strategy="all_exhausted", optim="sgd", learning_rate=0.5,
                  max_steps=1, attack_optimizer="l2")  # l2 steps: float noise cannot flip a sign step
    one = final_parameters(
        make_trainer(tmp_path / "one", per_device_train_batch_size=8, gradient_accumulation_steps=1, **common)
    )
    eight = final_parameters(
        make_trainer(tmp_path / "eight", per_device_train_batch_size=1, gradient_accumulation_steps=8, **common)
    )
    initial = dict(tiny_causal_lm("llama")[0].named_parameters())
    assert max(float((one[name] - initial[name]).abs().max()) for name in one) > 1e-3  # the step moved parameters
    for name in one:
        torch.testing.assert_close(eight[name], one[name], rtol=0, atol=2e-6, msg=name)


@pytest.mark.parametrize("arch, peft", [("llama", True), ("qwen2", False)])
def test_training_logs_every_term_and_moves_the_trainable_parameters(tmp_path, arch, peft):
    trainer = make_trainer(tmp_path, arch=arch, peft=peft, adversarial_fraction=0.5, max_steps=2,
                           mixing_stopping_strategy="all_exhausted", learning_rate=1e-2)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    keys = {"away_loss", "toward_loss", "utility_loss", "attack_loss", "attack_delta_norm", "attack_success"}
    assert any(keys <= entry.keys() for entry in logs)
    for entry in logs:
        assert all(torch.isfinite(torch.tensor(value)) for key, value in entry.items() if isinstance(value, float))
        if "attack_success" in entry:
            assert 0.0 <= entry["attack_success"] <= 1.0 and entry["attack_delta_norm"] > 0
    moved = [name for name, p in trainer.model.named_parameters()
             if name in before and not torch.equal(p, before[name])]
    assert moved and (not peft or all("lora_" in name for name in moved))


def test_lora_with_gradient_checkpointing_trains(tmp_path):
    trainer = make_trainer(tmp_path, peft=True, gradient_checkpointing=True, adversarial_fraction=1.0,
                           learning_rate=1e-2)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_B" in name}
    trainer.train()
    assert any(not torch.equal(p, before[name]) for name, p in trainer.model.named_parameters() if name in before)


def test_bf16_autocast_trains_with_finite_losses(tmp_path):
    trainer = make_trainer(tmp_path, bf16=True, adversarial_fraction=0.5, max_steps=2,
                           mixing_stopping_strategy="all_exhausted")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logs)
    assert any(entry.get("attack_delta_norm", 0) > 0 for entry in logs)  # delta's gradient did not underflow


def test_evaluation_uses_the_clean_utility_loss(tmp_path):
    model, tokenizer = tiny_causal_lm("llama")
    trainer = CATTrainer(model=model, args=config(tmp_path, adversarial_fraction=0.5, eval_strategy="no"),
                         adversarial_dataset=adversarial_dataset(), utility_dataset=utility_dataset(),
                         eval_dataset=utility_dataset(conversational=False), processing_class=tokenizer)
    metrics = trainer.evaluate()
    assert torch.isfinite(torch.tensor(metrics["eval_loss"])) and "eval_utility_loss" in metrics


@pytest.mark.parametrize(("engine", "window_adversarial", "attacks"), [
    ("fsdp2", 3, 1),  # another rank attacks in this window: a placeholder attack keeps the collectives in step
    ("zero3", 3, 1),
    ("ddp", 3, 0),    # DDP's attack forwards are local: nothing to keep in step
    ("fsdp2", 0, 0),  # no rank has adversarial rows: no rank attacks
])
def test_a_rank_without_adversarial_rows_attacks_a_placeholder_under_sharded_weights(
        tmp_path, monkeypatch, engine, window_adversarial, attacks):
    trainer = make_trainer(tmp_path)
    results = record_attacks(monkeypatch)
    monkeypatch.setattr(cat_trainer_module, "engine_of", lambda accelerator: engine)
    batch = collate(trainer, 0, 2)
    trainer._window_counts = torch.tensor([window_adversarial, 40])
    trainer.model.train()
    clean = trainer.compute_loss(trainer.model, batch)
    assert len(results) == attacks
    trainer._window_counts, results[:] = None, []
    monkeypatch.setattr(cat_trainer_module, "engine_of", lambda accelerator: "single")
    torch.testing.assert_close(trainer.compute_loss(trainer.model, batch), clean * 40 / batch_utility_tokens(batch))


def batch_utility_tokens(batch):
    return float((batch["labels"][:, 1:] != -100).sum())
