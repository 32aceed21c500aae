"""Invariants of the causal-LM embedding attack: budget, masks, exact equivalences, untouched model state, dtypes.
The PGD loop itself is tested in test_pgd.py, the chat masks in test_chat_masks.py."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import HfArgumentParser

from hf_robust.attacks import (
    EmbeddingAttackConfig,
    PGDConfig,
    embedding_attack,
    perturbation_radius,
    user_turn_mask,
)
from hf_robust.testing import tiny_causal_lm

CONVERSATIONS = [
    [{"role": "user", "content": "Tell me a story about a dragon."}, {"role": "assistant", "content": "Sure, once"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is two plus two, exactly?"},
        {"role": "assistant", "content": "Four"},
    ],
]
TARGET_LENGTH = 3


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def lm(request):
    model, tokenizer = tiny_causal_lm(request.param, seed=0)
    return model.eval(), tokenizer


def make_batch(tokenizer, padding_side):
    """Chat batch whose last TARGET_LENGTH attended tokens are the target; row 0's target contains token id 0."""
    tokenizer = copy.copy(tokenizer)
    tokenizer.padding_side = padding_side
    batch = user_turn_mask(tokenizer, CONVERSATIONS)
    input_ids, attention_mask = batch["input_ids"].clone(), batch["attention_mask"]
    labels = torch.full_like(input_ids, -100)
    for row in range(input_ids.shape[0]):
        positions = attention_mask[row].nonzero().flatten()[-TARGET_LENGTH:]
        if row == 0:
            input_ids[row, positions[1]] = 0  # token id 0 is a real token and must count as a target
        labels[row, positions] = input_ids[row, positions]
    assert (labels == 0).any() and (attention_mask == 0).any()
    return input_ids, attention_mask, labels, batch["user_turn_mask"]


def clean_row_losses(model, input_ids, attention_mask, labels):
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    token_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
    return token_loss.sum(1) / (labels[:, 1:] != -100).sum(1)


def snapshot(model):
    return {
        name: (param.detach().clone(), param.requires_grad, None if param.grad is None else param.grad.clone())
        for name, param in model.named_parameters()
    }


def assert_unchanged(model, before):
    for name, param in model.named_parameters():
        value, requires_grad, grad = before[name]
        assert torch.equal(param, value), name
        assert param.requires_grad == requires_grad, name
        if grad is None:
            assert param.grad is None, name
        else:
            assert torch.equal(param.grad, grad), name


# --- config ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("eps", -0.1), ("eps", float("nan")), ("eps", "0.1"), ("eps_mode", "rel"), ("steps", -1), ("steps", 2.5),
        ("step_size", 0.0), ("step_size", float("inf")), ("step_mode", "abs"), ("optimizer", "sgd"),
        ("init", "gaussian"), ("targeted", 1), ("perturb", "assistant"), ("seed", -3), ("seed", 1.5),
    ],
)
def test_config_rejects_bad_values(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        EmbeddingAttackConfig(**{name: value})


def test_config_defaults_and_argument_parser():
    config = EmbeddingAttackConfig()
    assert (config.eps, config.eps_mode, config.steps, config.step_size) == (0.05, "relative", 10, 1e-4)
    assert (config.step_mode, config.optimizer, config.init, config.targeted, config.perturb, config.seed) == (
        "absolute", "sign", "zero", True, "prompt", None,
    )
    (parsed,) = HfArgumentParser(EmbeddingAttackConfig).parse_args_into_dataclasses(
        ["--eps", "0.1", "--optimizer", "adam", "--targeted", "false", "--seed", "3"]
    )
    assert (parsed.eps, parsed.optimizer, parsed.targeted, parsed.seed) == (0.1, "adam", False, 3)


# --- bad inputs --------------------------------------------------------------------------------------------------


def test_embedding_attack_bad_inputs(lm):
    model, tokenizer = lm
    input_ids, attention_mask, labels, user_mask = make_batch(tokenizer, "right")
    call = lambda **kw: embedding_attack(  # noqa: E731
        model, kw.get("ids", input_ids), kw.get("mask", attention_mask), kw.get("labels", labels),
        kw.get("config", EmbeddingAttackConfig(steps=1)), perturb_mask=kw.get("perturb_mask"),
    )
    with pytest.raises(TypeError, match="`config`"):
        call(config=PGDConfig())
    with pytest.raises(TypeError, match="`input_ids`"):
        call(ids=input_ids.tolist())
    with pytest.raises(ValueError, match="`input_ids`"):
        call(ids=input_ids.float())
    with pytest.raises(ValueError, match="`input_ids`"):
        call(ids=input_ids[0])
    with pytest.raises(ValueError, match="`attention_mask`"):
        call(mask=attention_mask[:, 1:])
    with pytest.raises(ValueError, match="`attention_mask`"):
        call(mask=attention_mask * 2)
    with pytest.raises(ValueError, match="`labels`"):
        call(labels=labels[:, :-1])
    with pytest.raises(ValueError, match="`labels`"):
        call(labels=labels.float())
    with pytest.raises(ValueError, match="`labels`"):
        call(labels=labels.masked_fill(labels == -100, -1))
    no_target = labels.clone()
    no_target[1] = -100
    with pytest.raises(ValueError, match="`labels`.*rows without one: \\[1\\]"):
        call(labels=no_target)
    on_padding = labels.clone()
    on_padding[attention_mask == 0] = 5
    with pytest.raises(ValueError, match="`labels`"):
        call(labels=on_padding)
    with pytest.raises(ValueError, match="`perturb_mask`"):
        call(config=EmbeddingAttackConfig(steps=1, perturb="user_turn"))
    with pytest.raises(ValueError, match="`perturb_mask`"):
        call(perturb_mask=user_mask)
    with pytest.raises(ValueError, match="`perturb_mask`"):
        call(config=EmbeddingAttackConfig(steps=1, perturb="user_turn"), perturb_mask=user_mask[:, 1:])
    # Untargeted attacks may have rows without labels: their objective is 0 and nothing moves there.
    result = call(labels=no_target, config=EmbeddingAttackConfig(steps=1, targeted=False, eps=1.0, step_size=1.0))
    assert torch.count_nonzero(result.delta[1]) == 0


# --- budget and masks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_norm_bound_and_zero_outside_mask(lm, padding_side):
    model, tokenizer = lm
    input_ids, attention_mask, labels, _ = make_batch(tokenizer, padding_side)
    frozen = (attention_mask == 0) | (labels != -100)
    for optimizer in ("sign", "l2", "adam"):
        for init in ("zero", "uniform"):
            # A step as large as the ball forces the projection to bind.
            config = EmbeddingAttackConfig(
                eps=0.2, steps=2, step_size=1.0, step_mode="relative", optimizer=optimizer, init=init, seed=0
            )
            result = embedding_attack(model, input_ids, attention_mask, labels, config)
            norms = result.delta.norm(dim=-1)
            assert result.delta.dtype == torch.float32
            assert result.delta.shape == (*input_ids.shape, model.get_input_embeddings().embedding_dim)
            assert (norms <= result.radius * (1 + 1e-5)).all(), (optimizer, init)
            assert torch.count_nonzero(result.delta[frozen]) == 0, (optimizer, init)
            assert torch.count_nonzero(result.delta[labels == 0]) == 0  # a target token with id 0 stays put
            assert torch.allclose(norms[~frozen], torch.full_like(norms[~frozen], result.radius), rtol=1e-4)
            assert len(result.losses) == config.steps + 1 and result.final_loss.shape == (input_ids.shape[0],)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_user_turn_restricts_to_user_content(lm, padding_side):
    model, tokenizer = lm
    input_ids, attention_mask, labels, user_mask = make_batch(tokenizer, padding_side)
    for row, conversation in enumerate(CONVERSATIONS):
        user_text = next(message["content"] for message in conversation if message["role"] == "user")
        assert tokenizer.decode(input_ids[row][user_mask[row]]).strip() == user_text
    config = EmbeddingAttackConfig(eps=0.2, steps=2, step_size=1.0, step_mode="relative", perturb="user_turn")
    result = embedding_attack(model, input_ids, attention_mask, labels, config, perturb_mask=user_mask)
    assert torch.count_nonzero(result.delta[~user_mask]) == 0
    assert (result.delta[user_mask].norm(dim=-1) > 0).all()


def test_radius_relative_and_absolute(lm):
    model, tokenizer = lm
    weight = model.get_input_embeddings().weight
    expected = 0.05 * weight.float().norm(dim=-1).mean().item()
    assert perturbation_radius(weight, 0.05) == pytest.approx(expected, rel=1e-6)
    assert perturbation_radius(weight, 0.3, "absolute") == 0.3
    input_ids, attention_mask, labels, _ = make_batch(tokenizer, "right")
    result = embedding_attack(model, input_ids, attention_mask, labels, EmbeddingAttackConfig(steps=0))
    assert result.radius == pytest.approx(expected, rel=1e-6)
    config = EmbeddingAttackConfig(steps=1, eps=0.3, eps_mode="absolute")
    assert embedding_attack(model, input_ids, attention_mask, labels, config).radius == 0.3


# --- objective ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_zero_budget_or_zero_steps_is_the_clean_loss(lm, padding_side):
    model, tokenizer = lm
    input_ids, attention_mask, labels, _ = make_batch(tokenizer, padding_side)
    with torch.no_grad():
        clean_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        clean = clean_row_losses(model, input_ids, attention_mask, labels)
    seen_logits = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, output: seen_logits.append(output))
    try:
        for config in (EmbeddingAttackConfig(eps=0.0, steps=3, step_size=1.0), EmbeddingAttackConfig(steps=0)):
            seen_logits.clear()
            result = embedding_attack(model, input_ids, attention_mask, labels, config)
            assert torch.count_nonzero(result.delta) == 0
            # Every forward of the attack is the clean forward on input_ids, with the LM head run only at the
            # positions that predict a target token.
            assert len(seen_logits) == config.steps + 1
            positions = (labels[:, 1:] != -100).any(dim=0).nonzero().flatten()
            assert positions.numel() < labels.shape[1] - 1
            for logits in seen_logits:
                torch.testing.assert_close(logits, clean_logits[:, positions], rtol=1e-6, atol=1e-6)
            assert len(set(result.losses)) == 1 and len(result.losses) == config.steps + 1
            torch.testing.assert_close(result.final_loss, clean, rtol=1e-6, atol=0)  # up to the summation order
    finally:
        handle.remove()


def test_attack_lowers_the_targeted_objective(lm):
    model, tokenizer = lm
    initial, final = [], []
    for padding_side in ("right", "left"):
        input_ids, attention_mask, labels, _ = make_batch(tokenizer, padding_side)
        for optimizer in ("sign", "l2", "adam"):
            config = EmbeddingAttackConfig(eps=1.0, steps=5, step_size=0.2, step_mode="relative", optimizer=optimizer)
            result = embedding_attack(model, input_ids, attention_mask, labels, config)
            initial.append(result.losses[0])
            final.append(result.losses[-1])
            assert result.final_loss.mean().item() == pytest.approx(result.losses[-1], rel=1e-5)
            # The per-row record: one row per iterate, whose batch mean is `losses`, ending at `success`.
            assert result.row_losses.shape == result.success_history.shape == (6, input_ids.shape[0])
            assert result.row_losses.mean(dim=1).tolist() == pytest.approx(result.losses, rel=1e-5)
            torch.testing.assert_close(result.row_losses[-1], result.final_loss)
            assert torch.equal(result.success_history[-1], result.success)
    assert sum(final) / len(final) < sum(initial) / len(initial)


def test_untargeted_attack_raises_the_label_loss(lm):
    model, tokenizer = lm
    input_ids, attention_mask, labels, _ = make_batch(tokenizer, "left")
    with torch.no_grad():
        clean = clean_row_losses(model, input_ids, attention_mask, labels)
    config = EmbeddingAttackConfig(eps=1.0, steps=5, step_size=0.2, step_mode="relative", targeted=False)
    result = embedding_attack(model, input_ids, attention_mask, labels, config)
    assert result.losses[0] == pytest.approx(-clean.mean().item(), rel=1e-6)  # the objective is the negated loss
    embeds = model.get_input_embeddings()(input_ids) + result.delta
    perturbed = model(inputs_embeds=embeds, attention_mask=attention_mask)
    logits = perturbed.logits[:, :-1].transpose(1, 2)
    label_loss = F.cross_entropy(logits, labels[:, 1:], reduction="none").sum(1) / (labels[:, 1:] != -100).sum(1)
    torch.testing.assert_close(-label_loss, result.final_loss)
    assert label_loss.mean() > clean.mean()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_success_is_the_argmax_match(lm, padding_side):
    model, tokenizer = lm
    input_ids, attention_mask, labels, _ = make_batch(tokenizer, padding_side)
    with torch.no_grad():
        greedy = model(input_ids=input_ids, attention_mask=attention_mask).logits.argmax(-1)
    target = labels != -100
    greedy_labels = labels.clone()
    greedy_labels[:, 1:][target[:, 1:]] = greedy[:, :-1][target[:, 1:]]  # the model's own next-token prediction
    wrong_labels = greedy_labels.clone()
    wrong_labels[target] = (greedy_labels[target] + 1) % model.config.vocab_size
    for targeted in (True, False):
        config = EmbeddingAttackConfig(steps=0, targeted=targeted)
        matched = embedding_attack(model, input_ids, attention_mask, greedy_labels, config).success
        unmatched = embedding_attack(model, input_ids, attention_mask, wrong_labels, config).success
        assert matched.dtype == torch.bool and matched.shape == (input_ids.shape[0],)
        assert matched.all() == targeted and (~unmatched).all() == targeted
        history = embedding_attack(model, input_ids, attention_mask, greedy_labels, config).success_history
        assert history.shape == (1, input_ids.shape[0]) and torch.equal(history[0], matched)


# --- model state -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_model_state_untouched(training):
    model, tokenizer = tiny_causal_lm("llama", seed=0)
    model.train(training)
    model.model.layers[0].train(not training)  # a mixed state must come back module by module
    model.lm_head.weight.grad = torch.randn_like(model.lm_head.weight)
    model.model.norm.weight.requires_grad_(False)
    modes = {name: module.training for name, module in model.named_modules()}
    before = snapshot(model)
    input_ids, attention_mask, labels, _ = make_batch(tokenizer, "right")
    for optimizer in ("sign", "adam"):
        config = EmbeddingAttackConfig(eps=0.5, steps=2, step_size=0.5, step_mode="relative", optimizer=optimizer)
        embedding_attack(model, input_ids, attention_mask, labels, config)
    assert_unchanged(model, before)
    assert {name: module.training for name, module in model.named_modules()} == modes

    calls = []

    def fail_on_second_forward(module, args, output):
        calls.append(module.training)
        if len(calls) == 2:
            raise RuntimeError("forward failed mid-attack")

    handle = model.model.layers[-1].register_forward_hook(fail_on_second_forward)
    try:
        with pytest.raises(RuntimeError, match="mid-attack"):
            embedding_attack(model, input_ids, attention_mask, labels, EmbeddingAttackConfig(steps=5))
    finally:
        handle.remove()
    assert calls == [False, False]  # the attack ran in eval mode
    assert_unchanged(model, before)
    assert {name: module.training for name, module in model.named_modules()} == modes


def test_dropout_is_off_and_global_rng_untouched():
    model, tokenizer = tiny_causal_lm("llama", seed=0, attention_dropout=0.5)
    model.train()
    input_ids, attention_mask, labels, _ = make_batch(tokenizer, "left")
    config = EmbeddingAttackConfig(eps=0.5, steps=3, step_size=0.1, step_mode="relative", init="uniform", seed=7)
    rng = torch.get_rng_state()
    first = embedding_attack(model, input_ids, attention_mask, labels, config)
    second = embedding_attack(model, input_ids, attention_mask, labels, config)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(first.delta, second.delta) and first.losses == second.losses
    assert model.training
    configs = [EmbeddingAttackConfig(eps=0.5, init="uniform", steps=0, seed=seed) for seed in (7, 8)]
    starts = [embedding_attack(model, input_ids, attention_mask, labels, config) for config in configs]
    assert not torch.equal(starts[0].delta, starts[1].delta)


def test_bf16_autocast_and_bf16_model(lm):
    model, tokenizer = lm
    input_ids, attention_mask, labels, _ = make_batch(tokenizer, "right")
    config = EmbeddingAttackConfig(eps=0.5, steps=2, step_size=0.1, step_mode="relative")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = embedding_attack(model, input_ids, attention_mask, labels, config)
    assert result.delta.dtype == torch.float32 and result.final_loss.dtype == torch.float32
    assert all(torch.isfinite(torch.tensor(result.losses))) and result.delta.abs().sum() > 0

    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    before = snapshot(bf16_model)
    result = embedding_attack(bf16_model, input_ids, attention_mask, labels, config)
    assert result.delta.dtype == torch.float32 and all(torch.isfinite(torch.tensor(result.losses)))
    assert (result.delta.norm(dim=-1) <= result.radius * (1 + 1e-5)).all()
    assert_unchanged(bf16_model, before)


def test_peft_lora_model():
    peft = pytest.importorskip("peft")
    model, tokenizer = tiny_causal_lm("qwen2", seed=0)
    lora_config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.5)
    lora_model = peft.get_peft_model(model, lora_config)
    lora_model.train()
    before = snapshot(lora_model)
    input_ids, attention_mask, labels, _ = make_batch(tokenizer, "left")
    config = EmbeddingAttackConfig(eps=0.5, steps=3, step_size=0.1, step_mode="relative", optimizer="adam")
    result = embedding_attack(lora_model, input_ids, attention_mask, labels, config)
    assert result.delta.abs().sum() > 0 and result.losses[-1] < result.losses[0]
    assert any(requires_grad for _, requires_grad, _ in before.values())  # LoRA weights are trainable
    assert_unchanged(lora_model, before)
    assert lora_model.training
