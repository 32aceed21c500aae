"""Concept detectors: the image request sent to the pipeline and how verdicts are read (stub pipelines), and the
pipeline built from components."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from hf_robust.erasure.conditioning import Conditioning, diffusion_components
from hf_robust.erasure.detection import detect_concept, image_pipeline
from hf_robust.erasure.prompt_attack_config import PromptAttackConfig
from hf_robust.testing import tiny_sd_components


class StubPipeline:
    def __init__(self, images):
        self.images, self.calls = images, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return SimpleNamespace(images=self.images)


def test_the_request_carries_the_config_and_seed():
    pipeline = StubPipeline(["image"])
    config = PromptAttackConfig(num_inference_steps=3, guidance_scale_images=2.0, output_type="np")
    assert detect_concept(pipeline, lambda images: True, config, 7, prompt="a church") is True
    call = pipeline.calls[0]
    assert (call["prompt"], call["num_inference_steps"], call["guidance_scale"], call["output_type"]) == \
        ("a church", 3, 2.0, "np")
    assert torch.equal(call["generator"].get_state(), torch.Generator().manual_seed(7).get_state())


def test_embeddings_are_sent_instead_of_a_prompt():
    pipeline = StubPipeline(["image"])
    embeds, pooled = torch.ones(1, 3, 4), torch.zeros(1, 4)
    xl = SimpleNamespace(prompt_embeds=embeds, added_cond_kwargs={"text_embeds": pooled})
    detect_concept(pipeline, lambda images: False, PromptAttackConfig(), 0, conditioning=xl)
    assert pipeline.calls[0]["prompt_embeds"] is embeds and pipeline.calls[0]["pooled_prompt_embeds"] is pooled
    detect_concept(pipeline, lambda images: False, PromptAttackConfig(), 0,
                   conditioning=Conditioning(prompt_embeds=embeds))
    assert "prompt" not in pipeline.calls[1] and "pooled_prompt_embeds" not in pipeline.calls[1]


@pytest.mark.parametrize(("verdict", "expected"), [
    (True, True), (False, False), ([False, True], True), ([False, False], False), (np.array([False, True]), True),
    (torch.tensor([False, False]), False), (np.bool_(True), True),
])
def test_verdicts_any_true_counts(verdict, expected):
    assert detect_concept(StubPipeline(["one", "two"]), lambda images: verdict, PromptAttackConfig(), 0,
                          prompt="p") is expected


@pytest.mark.parametrize("verdict", ["yes", [True], [True, 1], None, 0.9])
def test_bad_verdicts_are_errors(verdict):
    with pytest.raises(ValueError, match="`concept_detector` must return a bool or one bool per image \\(2\\)"):
        detect_concept(StubPipeline(["one", "two"]), lambda images: verdict, PromptAttackConfig(), 0, prompt="p")


def test_a_pipeline_is_used_as_given_else_built_with_a_private_scheduler():
    components = tiny_sd_components(seed=0)
    parts = diffusion_components(components)
    pipeline = StableDiffusionPipeline(**components)
    assert image_pipeline(pipeline, parts, parts.scheduler) is pipeline
    built = image_pipeline(components, parts, components["scheduler"])
    assert isinstance(built, StableDiffusionPipeline) and built.unet is components["unet"]
    assert built.text_encoder is parts.text_encoders[0] and built.scheduler is not components["scheduler"]
    assert type(built.scheduler) is type(components["scheduler"])
    with pytest.raises(ValueError, match="`vae`"):
        image_pipeline(components, dataclasses.replace(parts, vae=None), DDIMScheduler())
