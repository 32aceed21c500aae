"""ESD pieces: partial sampling equals the pipeline's own loop, the target formula, the retain prompts and sampler."""

import re

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from hf_robust.erasure.conditioning import diffusion_components, encode_prompts, tokenize_prompts
from hf_robust.erasure.esd import DEFAULT_RETAIN_PROMPTS, RetainPromptSampler, esd_target, partial_ddim_sample, row_mse
from hf_robust.testing import tiny_sd_components

PROMPTS = ["a photo of a church", "nudity"]
BODY_AND_CLOTHING = ("person", "man", "woman", "face", "hair", "leg", "arm", "hand", "foot", "feet", "body", "skin",
                     "tie", "glove", "shirt", "pants", "shorts", "dress", "underwear", "bikini", "sock", "hat", "shoe")


def conditionings(components, prompts):
    kwargs = {"xl": components.xl, "image_size": components.image_size}
    with torch.no_grad():
        cond = encode_prompts(components.text_encoders, tokenize_prompts(components, prompts), **kwargs)
        uncond = encode_prompts(components.text_encoders, tokenize_prompts(components, [""] * len(prompts)),
                                **kwargs)
    return cond, uncond


@pytest.mark.parametrize("xl", [False, True])
def test_partial_sampling_equals_the_pipeline_loop(xl):
    components_dict = tiny_sd_components(xl=xl, seed=0)
    pipeline = (StableDiffusionXLPipeline if xl else StableDiffusionPipeline)(**components_dict)
    components = diffusion_components(pipeline)
    cond, uncond = conditionings(components, PROMPTS)
    x_t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    ddim_steps, seen = 5, {}

    def capture(pipe, step, timestep, callback_kwargs):
        seen[step] = (callback_kwargs["latents"].clone(), timestep)
        return callback_kwargs

    embeds = {"prompt_embeds": cond.prompt_embeds, "negative_prompt_embeds": uncond.prompt_embeds}
    if xl:
        embeds.update(pooled_prompt_embeds=cond.added_cond_kwargs["text_embeds"],
                      negative_pooled_prompt_embeds=uncond.added_cond_kwargs["text_embeds"])
    pipeline(**embeds, latents=x_t, num_inference_steps=ddim_steps, guidance_scale=3.0, output_type="latent",
             callback_on_step_end=capture)
    timesteps = components.scheduler.timesteps.clone()
    for n_steps in (0, 1, 3):
        latents, timestep = partial_ddim_sample(components, cond, uncond, n_steps, 3.0, ddim_steps=ddim_steps,
                                                latents=x_t)
        assert timestep == timesteps[n_steps]
        if n_steps == 0:
            assert torch.equal(latents, x_t * components.scheduler.init_noise_sigma)
        else:
            torch.testing.assert_close(latents, seen[n_steps - 1][0], rtol=1e-6, atol=1e-6)
            assert seen[n_steps - 1][1] == timesteps[n_steps - 1]  # the last step run is the one before t
    # A generator gives x_T as diffusers draws it; one generator per row draws the rows independently.
    drawn, _ = partial_ddim_sample(components, cond, uncond, 0, 3.0, torch.Generator().manual_seed(3),
                                   ddim_steps=ddim_steps)
    assert torch.equal(drawn, x_t)
    rows = [torch.Generator().manual_seed(seed) for seed in (5, 6)]
    per_row, _ = partial_ddim_sample(components, cond, uncond, 0, 3.0, rows, ddim_steps=ddim_steps)
    alone, _ = partial_ddim_sample(components, cond[1:], uncond[1:], 0, 3.0, [torch.Generator().manual_seed(6)],
                                   ddim_steps=ddim_steps)
    assert torch.equal(per_row[1:], alone)


def test_partial_sampling_bad_inputs():
    components = diffusion_components(tiny_sd_components(seed=0))
    cond, uncond = conditionings(components, PROMPTS)
    for n_steps in (-1, 4, 1.5):
        with pytest.raises(ValueError, match="`n_steps`"):
            partial_ddim_sample(components, cond, uncond, n_steps, 3.0, ddim_steps=4)
    with pytest.raises(ValueError, match="`ddim_steps`"):
        partial_ddim_sample(components, cond, uncond, 0, 3.0, ddim_steps=0)
    with pytest.raises(ValueError, match="`latents`"):
        partial_ddim_sample(components, cond, uncond, 0, 3.0, ddim_steps=4, latents=torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match="`unconditional`"):
        partial_ddim_sample(components, cond, uncond[:1], 0, 3.0, ddim_steps=4)


def test_esd_target_and_row_mse():
    e_0, e_c = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(esd_target(e_0, e_c, 1.0), 2 * e_0 - e_c)
    assert torch.equal(esd_target(e_0, e_c, 0.0), e_0)
    # The identity behind the initialisation check: MSE(e_c, target) = (1 + eta)^2 MSE(e_c, e_0).
    eta = 0.7
    torch.testing.assert_close(row_mse(e_c, esd_target(e_0, e_c, eta)), (1 + eta) ** 2 * row_mse(e_c, e_0))
    assert row_mse(e_0, e_c).shape == (2,)
    with pytest.raises(ValueError, match="`eta`"):
        esd_target(e_0, e_c, -1.0)
    with pytest.raises(ValueError, match="`e_0`"):
        esd_target(e_0, e_c[:1], 1.0)
    with pytest.raises(ValueError, match="shapes"):
        row_mse(e_0, e_c[:1])


def test_default_retain_prompts_are_objects_without_body_or_clothing_words():
    assert len(DEFAULT_RETAIN_PROMPTS) >= 70 and len(set(DEFAULT_RETAIN_PROMPTS)) == len(DEFAULT_RETAIN_PROMPTS)
    for prompt in DEFAULT_RETAIN_PROMPTS:
        assert re.fullmatch(r"a photo of (a|an) [a-z ]+", prompt), prompt
        words = set(prompt.split())
        assert not words & set(BODY_AND_CLOTHING), prompt


def test_retain_sampler_draws_without_replacement_and_is_seeded():
    prompts = [f"prompt {index}" for index in range(12)]
    sampler = RetainPromptSampler(prompts, 5, seed=0)
    assert sampler.draws_per_pass == 2
    first_pass = sampler.draw(0) + sampler.draw(1)
    assert len(set(first_pass)) == 10 and all(len(sampler.draw(index)) == 5 for index in range(6))
    second_pass = sampler.draw(2) + sampler.draw(3)
    assert len(set(second_pass)) == 10 and second_pass != first_pass  # reset after the pass, a new permutation
    again = RetainPromptSampler(prompts, 5, seed=0)
    assert [again.draw(index) for index in (3, 0, 5)] == [sampler.draw(index) for index in (3, 0, 5)]
    assert RetainPromptSampler(prompts, 5, seed=1).draw(0) != sampler.draw(0)
    for bad in ([], "a photo of a cat", ["ok", ""], None):
        with pytest.raises(ValueError, match="`retain_prompts`"):
            RetainPromptSampler(bad, 1)
    for batch in (0, 13, 2.0):
        with pytest.raises(ValueError, match="`retain_batch`"):
            RetainPromptSampler(prompts, batch)
