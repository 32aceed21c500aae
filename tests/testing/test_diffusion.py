"""Tests for hf_robust.testing.diffusion: tiny SD / SDXL components run their pipeline, are seeded, reject bad
arguments."""

import pytest
import torch

from hf_robust.testing import tiny_sd_components

from .helpers import state_dicts_equal


# ---------------------------------------------------------------- tiny_sd_components


@pytest.mark.parametrize("xl", [False, True], ids=["sd", "sdxl"])
def test_sd_components_run_their_pipeline(xl):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    components = tiny_sd_components(xl=xl)
    pipe = (StableDiffusionXLPipeline if xl else StableDiffusionPipeline)(**components)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        "a photo of a cat", num_inference_steps=2, height=32, width=32, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 32, 32, 3) and ((images >= 0) & (images <= 1)).all()
    encoders = [components["text_encoder"]] + ([components["text_encoder_2"]] if xl else [])
    for encoder in encoders:
        embeddings = encoder.get_input_embeddings().weight
        assert embeddings.shape == (len(components["tokenizer"]), encoder.config.hidden_size)
    hidden = sum(encoder.config.hidden_size for encoder in encoders)
    assert components["unet"].config.cross_attention_dim == hidden
    assert "cat</w>" in components["tokenizer"].tokenize("a photo of a cat")


@pytest.mark.parametrize("xl", [False, True], ids=["sd", "sdxl"])
def test_sd_components_same_seed_identical(xl):
    first, second, other = tiny_sd_components(xl, seed=1), tiny_sd_components(xl, seed=1), tiny_sd_components(xl)
    for name in ("unet", "vae", "text_encoder") + (("text_encoder_2",) if xl else ()):
        assert state_dicts_equal(first[name], second[name])
        assert not state_dicts_equal(first[name], other[name])


def test_sd_components_reject_bad_arguments():
    with pytest.raises(TypeError, match="xl"):
        tiny_sd_components("yes")
    with pytest.raises(TypeError, match="seed"):
        tiny_sd_components(seed=1.5)
