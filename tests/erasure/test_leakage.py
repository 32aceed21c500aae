"""Tests for hf_robust.erasure.leakage: the evaluation points and the leakage distance's fixed points."""

import torch

from hf_robust.erasure.conditioning import diffusion_components, tokenize_prompts
from hf_robust.erasure.leakage import encode, evaluation_points, leakage_distances, prompt_seed
from hf_robust.erasure.prompt_attack_config import PromptAttackConfig
from hf_robust.testing import tiny_sd_components

CONFIG = PromptAttackConfig(ddim_steps=4, n_timesteps=2)
PROMPT = "a photo of a church"


def test_points_are_seeded_by_seed_prompt_and_index_and_leave_the_scheduler_alone():
    components = tiny_sd_components(seed=0)
    scheduler_state = dict(components["scheduler"].config)
    points = evaluation_points(components, PROMPT, CONFIG)
    assert len(points) == 2 and points.timesteps.shape == (2,) and points.scale > 0
    assert points.latents.shape == points.concept_noise.shape and points.concept_noise.dtype == torch.float32
    again = evaluation_points(components, PROMPT, CONFIG)
    assert torch.equal(points.latents, again.latents) and torch.equal(points.concept_noise, again.concept_noise)
    other_seed = evaluation_points(components, PROMPT, PromptAttackConfig(ddim_steps=4, n_timesteps=2, seed=1))
    assert not torch.equal(points.latents, other_seed.latents)
    assert dict(components["scheduler"].config) == scheduler_state
    assert len({prompt_seed(0, PROMPT, index) for index in range(-3, 3)}) == 6
    assert prompt_seed(0, PROMPT, 0) != prompt_seed(0, "nudity", 0) != prompt_seed(1, "nudity", 0)


def test_the_concept_prompt_is_at_distance_0_and_the_empty_prompt_at_1():
    components = tiny_sd_components(seed=0)
    points = evaluation_points(components, PROMPT, CONFIG)
    parts = diffusion_components(components)
    with torch.no_grad():
        conditioning = encode(parts, tokenize_prompts(parts, [PROMPT, ""]))
        distances = leakage_distances(parts.unet, points, conditioning)
    assert distances.shape == (2,)
    torch.testing.assert_close(distances, torch.tensor([0.0, 1.0]), atol=1e-5, rtol=0)
