"""The toy erasure task: the taught concept changes the noise prediction, prompts of a class agree, determinism."""

import pytest
import torch

from hf_robust.erasure.evaluation import concept_leakage
from hf_robust.erasure.prompt_attack_config import PromptAttackConfig
from hf_robust.erasure.toy import (
    TOY_CLASSES, TOY_CONCEPT, TOY_CONCEPT_PROMPTS, TOY_HELD_OUT_RETAIN_PROMPTS, TOY_RETAIN_PROMPTS, _taught_components,
    prompt_effect, toy_erasure_components,
)
from hf_robust.testing import tiny_sd_components

CONFIG = PromptAttackConfig(n_timesteps=3, ddim_steps=10)


@pytest.fixture(scope="module")
def toy():
    return toy_erasure_components()


def test_prompt_lists_split_the_toy_world():
    taught = {prompt for prompts in TOY_CLASSES.values() for prompt in prompts}
    assert TOY_CONCEPT in TOY_CLASSES["church"] and set(TOY_CONCEPT_PROMPTS) <= set(TOY_CLASSES["church"])
    assert TOY_CONCEPT not in TOY_CONCEPT_PROMPTS  # attacked prompts are never the unlearned one
    assert set(TOY_RETAIN_PROMPTS) <= taught and set(TOY_HELD_OUT_RETAIN_PROMPTS) <= taught
    assert not set(TOY_RETAIN_PROMPTS) & set(TOY_HELD_OUT_RETAIN_PROMPTS)
    assert not (set(TOY_RETAIN_PROMPTS) | set(TOY_HELD_OUT_RETAIN_PROMPTS)) & set(TOY_CLASSES["church"])


def test_the_concept_changes_the_prediction_only_after_teaching(toy):
    untaught = tiny_sd_components(seed=0)
    for prompt in (TOY_CONCEPT, *TOY_CONCEPT_PROMPTS[:2]):
        before, after = prompt_effect(untaught, prompt, CONFIG), prompt_effect(toy, prompt, CONFIG)
        assert after > 0.05 and after > 100 * before, (prompt, before, after)


def test_prompts_of_the_concept_agree_and_other_classes_differ(toy):
    concept = list(TOY_CONCEPT_PROMPTS)
    # d(prompt -> "church"): how far "church" is from each concept prompt's own prediction (0 = the same prediction).
    same = concept_leakage(toy, concept, CONFIG, original=toy, prompts=[TOY_CONCEPT] * len(concept))
    other = concept_leakage(toy, concept, CONFIG, original=toy, prompts=list(TOY_RETAIN_PROMPTS[:len(concept)]))
    assert same.max() < 0.1
    assert other.min() > 0.5


def test_teaching_is_deterministic_and_copies_are_independent():
    _taught_components.cache_clear()
    state = torch.get_rng_state()
    first = toy_erasure_components(seed=1, steps=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    _taught_components.cache_clear()
    second = toy_erasure_components(seed=1, steps=3)
    untaught = tiny_sd_components(seed=1)
    for name in ("unet", "text_encoder"):
        a, b, c = (module[name].state_dict() for module in (first, second, untaught))
        assert all(torch.equal(a[key], b[key]) for key in a)
        assert any(not torch.equal(a[key], c[key]) for key in a)  # teaching changed the weights
    with torch.no_grad():
        first["text_encoder"].get_input_embeddings().weight.add_(1.0)
    third = toy_erasure_components(seed=1, steps=3)
    assert torch.equal(third["text_encoder"].get_input_embeddings().weight,
                       second["text_encoder"].get_input_embeddings().weight)
    assert third["unet"] is not second["unet"] and third["scheduler"] is not second["scheduler"]


def test_bad_input():
    with pytest.raises(ValueError, match="seed"):
        toy_erasure_components(seed=-1)
    with pytest.raises(ValueError, match="steps"):
        toy_erasure_components(steps=1.5)
    with pytest.raises(ValueError, match="concept_prompts"):
        prompt_effect(tiny_sd_components(), "", CONFIG)
