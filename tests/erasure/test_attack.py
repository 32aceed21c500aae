"""Soft-prompt attack: only the soft tokens move, the loss goes down on a fixed x_t, bound, resampling, bad input."""

import pytest
import torch

from hf_robust.erasure.attack import (
    AttackTarget,
    SoftPromptAttackConfig,
    random_token_embeddings,
    soft_prompt_attack,
)
from hf_robust.erasure.conditioning import diffusion_components, encode_prompts, predict_noise, tokenize_prompts
from hf_robust.erasure.esd import partial_ddim_sample
from hf_robust.testing import tiny_sd_components

PROMPTS = ["a photo of a church", "nudity"]


def setting(xl=False):
    """Attacked components (seed 0) and a target from a different 'original' text encoder (seed 1)."""
    components = diffusion_components(tiny_sd_components(xl=xl, seed=0))
    original = tiny_sd_components(xl=xl, seed=1)
    original_encoders = [original["text_encoder"]] + ([original["text_encoder_2"]] if xl else [])
    ids = tokenize_prompts(components, PROMPTS)
    kwargs = {"xl": xl, "image_size": components.image_size}
    with torch.no_grad():
        cond = encode_prompts(original_encoders, ids, **kwargs)
        uncond = encode_prompts(original_encoders, tokenize_prompts(components, [""] * 2), **kwargs)
        latents, timestep = partial_ddim_sample(components, cond, uncond, 2, 3.0, torch.Generator().manual_seed(0),
                                                ddim_steps=4)
        noise = predict_noise(components.unet, latents, timestep, cond)
    return components, ids, AttackTarget(latents, timestep, noise)


def snapshot(*modules):
    return [(parameter.detach().clone(), parameter.grad) for module in modules for parameter in module.parameters()]


def test_attack_changes_only_the_soft_tokens():
    components, ids, target = setting()
    encoder, unet = components.text_encoders[0], components.unet
    encoder.train()
    unet.requires_grad_(False)
    before = snapshot(encoder, unet)
    for mode in ("adam", "sign"):
        config = SoftPromptAttackConfig(attack_steps=3, attack_lr=0.05, attack_mode=mode, seed=0)
        result = soft_prompt_attack(components, ids, target, config)
        start = random_token_embeddings(components, 2, 1, torch.Generator().manual_seed(0))
        assert not torch.equal(result.soft_tokens.embeddings[0], start[0])  # the soft tokens moved
    after = snapshot(encoder, unet)
    assert all(torch.equal(value, again) for (value, _), (again, _) in zip(before, after))
    assert all(grad is None for _, grad in after)  # no .grad on the encoder (trainable) nor on the UNet
    assert encoder.training and not unet.training  # train/eval flags restored


@pytest.mark.parametrize("mode", ["adam", "sign"])
def test_attack_lowers_its_loss_on_a_fixed_x_t(mode):
    components, ids, target = setting()
    config = SoftPromptAttackConfig(attack_steps=8, attack_lr=0.05, attack_mode=mode, seed=0)
    result = soft_prompt_attack(components, ids, target, config)
    assert len(result.losses) == 9 and result.final_loss.shape == (2,)
    assert result.losses[-1] < result.losses[0]
    # The returned adversarial prompt reproduces the reported loss.
    with torch.no_grad():
        conditioning = encode_prompts(components.text_encoders, result.input_ids, result.soft_tokens)
        prediction = predict_noise(components.unet, target.latents, target.timestep, conditioning)
    loss = (prediction - target.noise).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(loss, result.final_loss, rtol=1e-5, atol=1e-7)


def test_zero_steps_is_the_start_and_the_bound_holds():
    components, ids, target = setting()
    start = random_token_embeddings(components, 2, 2, torch.Generator().manual_seed(4))
    result = soft_prompt_attack(components, ids, target, SoftPromptAttackConfig(num_adv_tokens=2, attack_steps=0),
                                initial_embeddings=start)
    assert torch.equal(result.soft_tokens.embeddings[0], start[0]) and len(result.losses) == 1
    config = SoftPromptAttackConfig(num_adv_tokens=2, attack_steps=5, attack_lr=0.5, attack_l2_bound=0.1)
    bounded = soft_prompt_attack(components, ids, target, config, initial_embeddings=start)
    norms = (bounded.soft_tokens.embeddings[0] - start[0]).norm(dim=-1)
    assert (norms <= 0.1 * (1 + 1e-5)).all() and norms.max() > 0.09
    unbounded = soft_prompt_attack(components, ids, target, SoftPromptAttackConfig(
        num_adv_tokens=2, attack_steps=5, attack_lr=0.5), initial_embeddings=start)
    assert (unbounded.soft_tokens.embeddings[0] - start[0]).norm(dim=-1).max() > 0.5


def test_a_callable_target_is_drawn_at_every_evaluation():
    components, ids, target = setting()
    calls = []

    def resample():
        calls.append(1)
        noise = torch.randn(target.latents.shape, generator=torch.Generator().manual_seed(len(calls)))
        return AttackTarget(target.latents + 0.1 * noise, target.timestep, target.noise)

    result = soft_prompt_attack(components, ids, resample, SoftPromptAttackConfig(attack_steps=3, seed=0))
    assert len(calls) == 4 and len(result.losses) == 4


def test_sdxl_attack_moves_both_encoders_soft_tokens():
    components, ids, target = setting(xl=True)
    config = SoftPromptAttackConfig(attack_steps=4, attack_lr=0.05, seed=0)
    result = soft_prompt_attack(components, ids, target, config)
    start = random_token_embeddings(components, 2, 1, torch.Generator().manual_seed(0))
    assert len(result.soft_tokens.embeddings) == 2 and len(result.input_ids) == 2
    for moved, initial in zip(result.soft_tokens.embeddings, start):
        assert moved.shape == initial.shape and not torch.equal(moved, initial)
    assert result.losses[-1] < result.losses[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [("num_adv_tokens", 0), ("num_adv_tokens", 1.0), ("adv_position", "middle"), ("attack_steps", -1),
     ("attack_lr", 0.0), ("attack_lr", float("nan")), ("attack_mode", "pgd"), ("attack_l2_bound", 0.0),
     ("attack_l2_bound", float("inf")), ("seed", -1)],
)
def test_config_rejects_bad_values(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        SoftPromptAttackConfig(**{name: value})


def test_soft_prompt_attack_bad_inputs():
    components, ids, target = setting()
    with pytest.raises(TypeError, match="`config`"):
        soft_prompt_attack(components, ids, target, {"attack_steps": 1})
    with pytest.raises(ValueError, match="`prompt_ids`"):
        soft_prompt_attack(components, ids * 2, target)
    with pytest.raises(ValueError, match="`initial_embeddings`"):
        soft_prompt_attack(components, ids, target, initial_embeddings=[torch.zeros(2, 3, 32)])
    with pytest.raises(ValueError, match="`num_adv_tokens`"):
        soft_prompt_attack(components, tokenize_prompts(components, ["cat", "dog"]), target,
                           SoftPromptAttackConfig(num_adv_tokens=4, adv_position="replace"))
    with pytest.raises(ValueError, match="`generator`"):
        random_token_embeddings(components, 2, 1, [torch.Generator()])
