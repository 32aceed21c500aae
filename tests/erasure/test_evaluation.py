"""Prompt-attack evaluation on tiny SD / SDXL components: leakage identities, the discrete objective on the token
search, the soft attack, the detector path, results for the card, bad input."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from hf_robust.attacks import allowed_token_mask
from hf_robust.erasure import evaluation
from hf_robust.erasure.conditioning import diffusion_components, tokenize_prompts
from hf_robust.erasure.evaluation import DiscreteLeakageObjective, concept_leakage, prompt_attack
from hf_robust.erasure.leakage import evaluation_points
from hf_robust.erasure.prompt_attack_config import PromptAttackConfig
from hf_robust.erasure.results import PromptAttackResult
from hf_robust.hub import RobustnessResult
from hf_robust.testing import tiny_sd_components

PROMPTS = ["a photo of a church", "nudity"]
FAST = dict(ddim_steps=4, n_timesteps=2, discrete_iters=3, topk=16, n_candidates=8, batch_size=8, num_adv_tokens=2,
            soft_steps=10, soft_lr=0.05, num_inference_steps=2)


def fast(**overrides):
    return PromptAttackConfig(**{**FAST, **overrides})


def perturbed(xl=False, scale=0.03):
    """Components whose text encoder layers differ from the seed-0 original's (an ESD-like changed encoder)."""
    components = tiny_sd_components(xl=xl, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in ("text_encoder", "text_encoder_2") if xl else ("text_encoder",):
            for parameter_name, parameter in components[name].named_parameters():
                if "encoder.layers" in parameter_name:
                    parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return components


@pytest.fixture(scope="module")
def original():
    return tiny_sd_components(seed=0)


@pytest.fixture(scope="module")
def attacked():
    return perturbed()


def test_the_original_model_leaks_and_a_changed_encoder_does_not(original, attacked):
    config = fast()
    assert (concept_leakage(original, PROMPTS, config, original=original) < 1e-6).all()
    distances = concept_leakage(attacked, PROMPTS, config, original=original)
    assert (distances > config.leakage_threshold).all()
    # The original encoders alone (the attacked UNet is the same) give the same distances.
    torch.testing.assert_close(concept_leakage(attacked, PROMPTS, config, original=[original["text_encoder"]]),
                               distances)
    result = prompt_attack(original, PROMPTS, fast(attacks="soft", soft_steps=0), original=original)
    assert all(row.leaked_before and row.leakage_before < 1e-6 for row in result.rows)
    assert result.pre_attack_success_rate == 1.0 == result.attack_success_rate


def sequence_setup(components, original, config):
    """(objective, laid-out ids, optimised positions, [E_1 | E_2]) for the first prompt, with random allowed tokens."""
    parts = diffusion_components(components)
    points = evaluation_points(original, PROMPTS[0], config)
    ids = [row[0] for row in tokenize_prompts(parts, PROMPTS[:1])]
    positions = torch.tensor([1, 2])
    matrix = torch.cat([encoder.get_input_embeddings().weight.detach() for encoder in parts.text_encoders], dim=-1)
    allowed = allowed_token_mask(parts.tokenizers[0], num_embeddings=matrix.shape[0])
    order = torch.randperm(int(allowed.sum()), generator=torch.Generator().manual_seed(0))
    chosen = allowed.nonzero().flatten()[order]
    templates = []
    for row in ids:
        row = torch.cat([row[:1], chosen[:2], row[1:-2]])
        templates.append(row)
    return DiscreteLeakageObjective(parts, points, templates), templates[0], positions, matrix


@pytest.mark.parametrize("xl", [False, True])
def test_the_embeds_path_equals_the_ids_path(xl):
    components, original = perturbed(xl=xl), tiny_sd_components(xl=xl, seed=0)
    objective, ids, positions, matrix = sequence_setup(components, original, fast())
    candidates = torch.stack([ids, torch.cat([ids[:1], ids[2:3], ids[1:2], ids[3:]])])  # two different prompts
    one_hot = torch.nn.functional.one_hot(candidates, matrix.shape[0]).to(matrix.dtype)
    with torch.no_grad():
        from_ids = objective.loss_from_ids(candidates)
        from_embeds = objective.loss_from_embeds(one_hot @ matrix)
    assert from_ids.shape == (2,) and not torch.equal(from_ids[0], from_ids[1])
    torch.testing.assert_close(from_embeds, from_ids, rtol=1e-5, atol=1e-7)
    # The one-hot gradient flows through the hook (token_search differentiates with respect to it).
    one_hot.requires_grad_(True)
    (gradient,) = torch.autograd.grad(objective.loss_from_embeds(one_hot @ matrix).sum(), one_hot)
    assert gradient[:, positions].abs().sum() > 0


def test_discrete_attack_never_increases_its_loss_and_returns_round_tripping_text(original, attacked):
    config = fast(attacks=["discrete"], discrete_iters=4)
    result = prompt_attack(attacked, PROMPTS, config, original=original)
    parts = diffusion_components(attacked)
    tokenizer = parts.tokenizers[0]
    vocabulary = parts.text_encoders[0].get_input_embeddings().num_embeddings
    allowed = allowed_token_mask(tokenizer, num_embeddings=vocabulary)
    for row in result.rows:
        history = row.discrete_history
        assert len(history) == 5 and all(later <= earlier for earlier, later in zip(history, history[1:]))
        assert history[-1] < history[0]  # the search found something on this seed
        assert row.leakage_discrete == history[-1] and row.leakage_soft is None
        # The text re-tokenises to the optimised ids, ends with the concept prompt and uses allowed tokens only.
        assert tokenize_prompts(parts, [row.adversarial_prompt])[0][0].tolist() == row.adversarial_ids
        assert row.adversarial_prompt.endswith(row.prompt) and row.adversarial_ids[0] == tokenizer.bos_token_id
        assert all(allowed[token] for token in row.adversarial_ids[1:1 + config.num_adv_tokens])
        # The reported distance is the one of the returned text.
        again = concept_leakage(attacked, [row.prompt], config, original=original, prompts=[row.adversarial_prompt])
        assert float(again) == pytest.approx(row.leakage_discrete, rel=1e-4)
    assert result.success_rate("discrete") == result.attack_success_rate
    with pytest.raises(ValueError, match="`attack`"):
        result.success_rate("soft")


def test_disallowed_tokens_never_appear(original, attacked, monkeypatch):
    def odd_only(tokenizer, num_embeddings=None):  # the attack must use the mask it is given
        mask = allowed_token_mask(tokenizer, num_embeddings=num_embeddings)
        mask[::2] = False
        return mask

    monkeypatch.setattr(evaluation, "allowed_token_mask", odd_only)
    config = fast(attacks="discrete", discrete_iters=4, num_adv_tokens=3)
    result = prompt_attack(attacked, PROMPTS, config, original=original)
    tokenizer = diffusion_components(attacked).tokenizers[0]
    (initial,) = tokenizer(config.init_token, add_special_tokens=False).input_ids
    changed = 0
    for row in result.rows:
        for token in row.adversarial_ids[1:1 + config.num_adv_tokens]:
            assert token % 2 == 1 or token == initial  # an allowed token, or a start token never replaced
            changed += token != initial
    assert changed > 0


def test_soft_attack_lowers_the_leakage_distance(original, attacked):
    result = prompt_attack(attacked, PROMPTS, fast(attacks="soft"), original=original)
    for row in result.rows:
        assert row.leakage_soft < row.leakage_before and len(row.soft_losses) == 11
        assert row.leaked_soft == (row.leakage_soft < 0.5) and row.adversarial_prompt is None
    # Deterministic: the seed, not the global RNG, fixes everything.
    state = torch.get_rng_state()
    again = prompt_attack(attacked, PROMPTS[::-1], fast(attacks="soft"), original=original)
    assert torch.equal(torch.get_rng_state(), state)
    assert [row.leakage_soft for row in again.rows[::-1]] == [row.leakage_soft for row in result.rows]


def test_sdxl_path():
    original, components = tiny_sd_components(xl=True, seed=0), perturbed(xl=True)
    assert float(concept_leakage(original, PROMPTS[:1], fast(), original=original)) < 1e-6
    result = prompt_attack(components, PROMPTS[:1], fast(), original=original)
    row = result.rows[0]
    parts = diffusion_components(components)
    again = tokenize_prompts(parts, [row.adversarial_prompt])
    assert again[0][0].tolist() == row.adversarial_ids and again[1][0][:len(PROMPTS[0].split()) + 3].tolist() == \
        row.adversarial_ids[:len(PROMPTS[0].split()) + 3]
    assert row.discrete_history[-1] <= row.discrete_history[0] and np.isfinite(row.leakage_soft)
    assert row.leakage_soft < row.leakage_before
    assert len(row.soft_tokens.embeddings) == 2


def test_a_detector_decides_success(original, attacked):
    seen = []

    def detector(images):  # the concept is "visible" in the discrete attack's image only (the second call)
        seen.append(images)
        return len(seen) == 2

    pipeline = StableDiffusionPipeline(**attacked)
    pipeline.set_progress_bar_config(disable=True)
    result = prompt_attack(pipeline, PROMPTS[:1], fast(), original=original, concept_detector=detector)
    row = result.rows[0]
    assert len(seen) == 3 and all(len(images) == 1 and images[0].size == (32, 32) for images in seen)
    assert (row.leaked_before, row.leaked_discrete, row.leaked_soft) == (False, True, False)
    assert result.detector and result.attack_success_rate == 1.0 and result.success_rate("soft") == 0.0
    arrays = [np.asarray(images[0], dtype=np.float32) for images in seen]
    assert not np.array_equal(arrays[0], arrays[1]) and not np.array_equal(arrays[0], arrays[2])

    # From a components dict, numpy images; one verdict per image; a bad verdict is an error.
    shapes = []

    def numpy_detector(images):
        shapes.append(images.shape)
        return [True] * len(images)

    result = prompt_attack(attacked, PROMPTS[:1], fast(attacks="soft", output_type="np"), original=original,
                           concept_detector=numpy_detector)
    assert shapes == [(1, 32, 32, 3)] * 2 and result.rows[0].leaked_before and result.rows[0].leaked_soft
    with pytest.raises(ValueError, match="`concept_detector`"):
        prompt_attack(attacked, PROMPTS[:1], fast(attacks="soft", soft_steps=0), original=original,
                      concept_detector=lambda images: "yes")
    with pytest.raises(ValueError, match="`concept_detector`"):
        prompt_attack(attacked, PROMPTS[:1], fast(attacks="soft", soft_steps=0), original=original,
                      concept_detector=lambda images: [True, False])


def test_an_sdxl_detector_gets_images_of_the_soft_prompt_embeds():
    original, components = tiny_sd_components(xl=True, seed=0), perturbed(xl=True)
    seen = []

    def detector(images):  # leaked only if the image differs from the plain prompt's (the first call)
        seen.append(np.asarray(images, dtype=np.float32))
        return not np.array_equal(seen[0], seen[-1])

    result = prompt_attack(components, PROMPTS[:1], fast(attacks="soft", output_type="np"), original=original,
                           concept_detector=detector)
    assert [images.shape for images in seen] == [(1, 32, 32, 3)] * 2
    assert (result.rows[0].leaked_before, result.rows[0].leaked_soft) == (False, True)


def test_results_for_the_card_and_to_dict(original, attacked):
    result = prompt_attack(attacked, PROMPTS, fast(discrete_iters=1, soft_steps=2), original=original)
    assert isinstance(result, PromptAttackResult)
    results = result.robustness_results(split="test")
    assert all(isinstance(item, RobustnessResult) and item.task == "text-to-image" for item in results)
    rates = {item.attack: item.value for item in results if item.metric == "attack_success_rate"}
    assert set(rates) == {"no_attack", "unlearndiffatk", "soft_prompt", "prompt_attack"}
    assert rates["prompt_attack"] == result.attack_success_rate
    assert rates["prompt_attack"] >= max(rates["unlearndiffatk"], rates["soft_prompt"]) >= rates["no_attack"]
    leakage = {item.attack: item.value for item in results if item.metric == "concept_leakage"}
    assert leakage["no_attack"] == pytest.approx(np.mean([row.leakage_before for row in result.rows]))
    data = result.to_dict()
    assert data["attack_success_rate"] == result.attack_success_rate and len(data["rows"]) == 2
    assert "soft_tokens" not in data["rows"][0] and data["rows"][0]["success"] == result.rows[0].success


def test_bad_inputs(original, attacked):
    with pytest.raises(ValueError, match="`concept_prompts`"):
        prompt_attack(attacked, [], fast(), original=original)
    with pytest.raises(ValueError, match="`concept_prompts`"):
        concept_leakage(attacked, "nudity", fast(), original=original)
    with pytest.raises(TypeError, match="`concept_detector`"):
        prompt_attack(attacked, PROMPTS, fast(), original=original, concept_detector="nudenet")
    with pytest.raises(TypeError, match="`config`"):
        prompt_attack(attacked, PROMPTS, {"attacks": "soft"}, original=original)
    with pytest.raises(ValueError, match="`original`"):
        prompt_attack(attacked, PROMPTS, fast())
    with pytest.raises(ValueError, match="`original`"):
        prompt_attack(attacked, PROMPTS, fast(), original=[original["text_encoder"]] * 2)
    with pytest.raises(ValueError, match="`original`"):
        prompt_attack(attacked, PROMPTS, fast(), original=tiny_sd_components(xl=True))
    with pytest.raises(ValueError, match="`prompts`"):
        concept_leakage(attacked, PROMPTS, fast(), original=original, prompts=["one"])
    with pytest.raises(ValueError, match="`init_token`"):
        prompt_attack(attacked, PROMPTS, fast(attacks="discrete", init_token="lower lower"), original=original)
    with pytest.raises(TypeError, match="`pipeline_or_components`"):
        prompt_attack("a pipeline", PROMPTS, fast(), original=original)
