"""Conditioning of tiny SD / SDXL components: component checks, soft-token layout, hook == plain path, SDXL parity."""

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from hf_robust.erasure.conditioning import (
    Conditioning,
    SoftTokens,
    adversarial_layout,
    diffusion_components,
    encode_prompts,
    predict_noise,
    time_ids,
    tokenize_prompts,
)
from hf_robust.testing import tiny_sd_components

PROMPTS = ["a photo of a lower church", "nudity"]


@pytest.fixture(scope="module")
def sd():
    return tiny_sd_components(seed=0)


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sd_components(xl=True, seed=0)


def embeddings_at(encoder, input_ids, positions):
    rows = torch.arange(input_ids.shape[0]).unsqueeze(1)
    with torch.no_grad():
        return encoder.get_input_embeddings()(input_ids)[rows, positions]


def test_diffusion_components_from_pipeline_and_dict(sd, sdxl):
    pipeline = StableDiffusionPipeline(**sd)
    for source in (pipeline, sd):
        components = diffusion_components(source)
        assert not components.xl and components.text_encoders == [sd["text_encoder"]]
        assert components.unet is sd["unet"] and components.image_size == (32, 32)
    components = diffusion_components(StableDiffusionXLPipeline(**sdxl))
    assert components.xl and components.text_encoders == [sdxl["text_encoder"], sdxl["text_encoder_2"]]
    assert components.tokenizers == [sdxl["tokenizer"], sdxl["tokenizer_2"]]


def test_diffusion_components_bad_inputs(sd, sdxl):
    with pytest.raises(TypeError, match="`pipeline_or_components`"):
        diffusion_components([sd])
    for name in ("unet", "scheduler", "text_encoder", "tokenizer"):
        with pytest.raises(ValueError, match=f"`{name}`"):
            diffusion_components({**sd, name: None})
    with pytest.raises(ValueError, match="`text_encoder` must be a CLIP text encoder"):
        diffusion_components({**sd, "text_encoder": torch.nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="`text_encoder_2` must be a CLIPTextModelWithProjection"):
        diffusion_components({**sdxl, "text_encoder_2": sd["text_encoder"]})
    with pytest.raises(ValueError, match="`tokenizer_2`"):
        diffusion_components({**sdxl, "tokenizer_2": None})


def test_tokenize_prompts(sd):
    components = diffusion_components(sd)
    (ids,) = tokenize_prompts(components, PROMPTS)
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    with pytest.raises(ValueError, match="`prompts`"):
        tokenize_prompts(components, [])
    with pytest.raises(ValueError, match="`prompts`"):
        tokenize_prompts(components, "nudity")


@pytest.mark.parametrize("k", [1, 3])
def test_adversarial_layout_counts_tokens_not_words(sd, k):
    tokenizer = sd["tokenizer"]
    (ids,) = tokenize_prompts(diffusion_components(sd), PROMPTS)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    lengths = [len(tokenizer(prompt).input_ids) - 2 for prompt in PROMPTS]
    assert lengths[0] > len(PROMPTS[0].split())  # a word splits into several tokens: lengths count tokens
    for position in ("prefix", "suffix", "replace"):
        laid_out, positions = adversarial_layout(tokenizer, ids, k, position)
        assert laid_out.shape == ids.shape and positions.shape == (2, k)
        for row, length in enumerate(lengths):
            slots = positions[row].tolist()
            assert (laid_out[row, slots] == bos).all()
            concept = ids[row, 1:1 + length]
            first_eos = int((laid_out[row] == eos).nonzero()[0])
            if position == "prefix":
                assert slots == list(range(1, 1 + k))
                assert torch.equal(laid_out[row, 1 + k:1 + k + length], concept)
                assert first_eos == 1 + k + length
            elif position == "suffix":
                assert slots == list(range(1 + length, 1 + length + k))
                assert torch.equal(laid_out[row, 1:1 + length], concept)
                assert first_eos == 1 + length + k
            else:
                if length < k:
                    continue
                assert slots == list(range(1, 1 + k))
                assert torch.equal(laid_out[row, 1 + k:], ids[row, 1 + k:])
                assert first_eos == 1 + length
            assert laid_out[row, 0] == bos


def test_adversarial_layout_keeps_eos_of_long_prompts_and_bad_inputs(sd):
    tokenizer = sd["tokenizer"]
    (ids,) = tokenize_prompts(diffusion_components(sd), ["church " * 100])
    assert ids[0, -1] == tokenizer.eos_token_id  # truncated: EOT in the last slot
    for position in ("prefix", "suffix"):
        laid_out, _ = adversarial_layout(tokenizer, ids, 2, position)
        assert laid_out[0, -1] == tokenizer.eos_token_id and (laid_out[0] == tokenizer.eos_token_id).sum() == 1
    short = tokenize_prompts(diffusion_components(sd), ["cat"])[0]
    with pytest.raises(ValueError, match="`num_adv_tokens`"):
        adversarial_layout(tokenizer, short, 0)
    with pytest.raises(ValueError, match="`num_adv_tokens`"):
        adversarial_layout(tokenizer, short, 76)
    with pytest.raises(ValueError, match="`adv_position`"):
        adversarial_layout(tokenizer, short, 1, "middle")
    with pytest.raises(ValueError, match="`num_adv_tokens`.*replace|replace.*`num_adv_tokens`"):
        adversarial_layout(tokenizer, short, 5, "replace")
    with pytest.raises(ValueError, match="`prompt_ids`"):
        adversarial_layout(tokenizer, short[:, 1:], 1)
    with pytest.raises(ValueError, match="`prompt_ids`"):
        adversarial_layout(tokenizer, short.float(), 1)


@pytest.mark.parametrize("xl", [False, True])
def test_hook_with_the_plain_embeddings_equals_the_plain_path(sd, sdxl, xl):
    components = diffusion_components(sdxl if xl else sd)
    ids = tokenize_prompts(components, PROMPTS)
    laid_out = []
    for tokenizer, prompt_ids in zip(components.tokenizers, ids):
        input_ids, positions = adversarial_layout(tokenizer, prompt_ids, 2, "prefix")
        laid_out.append(input_ids)
    # Soft tokens equal to the embeddings at the slots (delta = 0): the hook changes nothing.
    soft = SoftTokens([embeddings_at(encoder, input_ids, positions)
                       for encoder, input_ids in zip(components.text_encoders, laid_out)], positions)
    kwargs = {"xl": xl, "image_size": components.image_size}
    with torch.no_grad():
        plain = encode_prompts(components.text_encoders, laid_out, **kwargs)
        hooked = encode_prompts(components.text_encoders, laid_out, soft, **kwargs)
        assert torch.equal(plain.prompt_embeds, hooked.prompt_embeds)
        if xl:
            for key in ("text_embeds", "time_ids"):
                assert torch.equal(plain.added_cond_kwargs[key], hooked.added_cond_kwargs[key])
        # The hook is removed afterwards, and other values do change the output (only from the slots on: causal).
        moved = SoftTokens([embedding + 1.0 for embedding in soft.embeddings], positions)
        changed = encode_prompts(components.text_encoders, laid_out, moved, **kwargs).prompt_embeds
        assert torch.equal(encode_prompts(components.text_encoders, laid_out, **kwargs).prompt_embeds,
                           plain.prompt_embeds)
    assert torch.equal(changed[:, 0], plain.prompt_embeds[:, 0])
    assert not torch.allclose(changed[:, 1:], plain.prompt_embeds[:, 1:])


def test_soft_tokens_get_gradients_and_rows_select_the_batch(sd):
    components = diffusion_components(sd)
    (ids,) = tokenize_prompts(components, PROMPTS + ["a photo of a cat"])
    input_ids, positions = adversarial_layout(components.tokenizers[0], ids[:1], 1)
    embedding = embeddings_at(components.text_encoders[0], input_ids, positions).requires_grad_(True)
    batch = torch.cat([input_ids, ids[1:]])
    soft = SoftTokens([embedding], positions, rows=torch.tensor([0]))
    output = encode_prompts(components.text_encoders, [batch], soft).prompt_embeds
    (gradient,) = torch.autograd.grad(output.sum(), embedding)
    assert gradient.abs().sum() > 0
    assert all(parameter.grad is None for parameter in components.text_encoders[0].parameters())
    with torch.no_grad():
        rest = encode_prompts(components.text_encoders, [ids[1:]]).prompt_embeds
    assert torch.equal(output[1:].detach(), rest)
    with pytest.raises(ValueError, match="rows"):
        encode_prompts(components.text_encoders, [batch], SoftTokens([embedding], positions))


def test_sdxl_conditioning_equals_the_pipeline_encode_prompt(sdxl):
    pipeline = StableDiffusionXLPipeline(**sdxl)
    components = diffusion_components(pipeline)
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipeline.encode_prompt(
            PROMPTS, device="cpu", do_classifier_free_guidance=True, negative_prompt=["", ""])
        ours = encode_prompts(components.text_encoders, tokenize_prompts(components, PROMPTS), xl=True,
                              image_size=components.image_size)
        empty = encode_prompts(components.text_encoders, tokenize_prompts(components, ["", ""]), xl=True,
                               image_size=components.image_size)
    assert torch.equal(ours.prompt_embeds, embeds) and torch.equal(ours.added_cond_kwargs["text_embeds"], pooled)
    assert torch.equal(empty.prompt_embeds, negative)
    assert torch.equal(empty.added_cond_kwargs["text_embeds"], negative_pooled)
    projection_dim = pipeline.text_encoder_2.config.projection_dim
    expected_ids = pipeline._get_add_time_ids((32, 32), (0, 0), (32, 32), dtype=embeds.dtype,
                                              text_encoder_projection_dim=projection_dim)
    assert torch.equal(ours.added_cond_kwargs["time_ids"], expected_ids.repeat(2, 1))


def test_sd_conditioning_equals_the_pipeline_encode_prompt(sd):
    pipeline = StableDiffusionPipeline(**sd)
    components = diffusion_components(pipeline)
    with torch.no_grad():
        embeds, _ = pipeline.encode_prompt(PROMPTS, "cpu", 1, False)
        ours = encode_prompts(components.text_encoders, tokenize_prompts(components, PROMPTS))
    assert torch.equal(ours.prompt_embeds, embeds) and ours.added_cond_kwargs is None


def test_encode_prompts_and_predict_noise_bad_inputs(sd, sdxl):
    components = diffusion_components(sd)
    ids = tokenize_prompts(components, PROMPTS)
    with pytest.raises(ValueError, match="`text_encoders`"):
        encode_prompts(components.text_encoders, ids * 2)
    with pytest.raises(ValueError, match="`text_encoders`"):
        encode_prompts(components.text_encoders, ids, xl=True, image_size=(32, 32))
    with pytest.raises(ValueError, match="`soft_tokens.embeddings`"):
        encode_prompts(components.text_encoders, ids, SoftTokens([], torch.ones(2, 1, dtype=torch.long)))
    xl = diffusion_components(sdxl)
    with pytest.raises(ValueError, match="`image_size`"):
        encode_prompts(xl.text_encoders, tokenize_prompts(xl, PROMPTS), xl=True)
    for bad in ((32,), (32, 0), (32.0, 32), "32x32"):
        with pytest.raises(ValueError, match="`image_size`"):
            time_ids(bad, 1, torch.float32, torch.device("cpu"))
    assert time_ids((24, 32), 2, torch.float32, torch.device("cpu")).tolist() == [[24, 32, 0, 0, 24, 32]] * 2
    with torch.no_grad():
        conditioning = encode_prompts(components.text_encoders, ids)
        latents = torch.randn(2, 4, 16, 16)
        noise = predict_noise(components.unet, latents, torch.tensor(500), conditioning)
        assert noise.shape == latents.shape
        per_row = predict_noise(components.unet, latents, torch.tensor([500, 500]), conditioning)
        torch.testing.assert_close(per_row, noise)
        with pytest.raises(ValueError, match="`conditioning`"):
            predict_noise(components.unet, latents[:1], 500, conditioning)
    doubled = Conditioning.cat([conditioning, conditioning])
    assert len(doubled) == 4 and len(conditioning.repeat(3)) == 6
