"""Tests for hf_robust.erasure.prompt_attack_config: bad settings are refused naming the field."""

import pytest

from hf_robust.erasure.prompt_attack_config import (
    PromptAttackConfig, check_concept_prompts, check_prompt_attack_config,
)


@pytest.mark.parametrize(
    ("name", "value"),
    [("attacks", ["gcg"]), ("attacks", []), ("num_adv_tokens", 0), ("discrete_iters", -1), ("topk", 0),
     ("batch_size", 1.5), ("soft_num_tokens", 0), ("soft_position", "middle"), ("soft_lr", 0.0),
     ("soft_mode", "pgd"), ("soft_l2_bound", -1.0), ("n_timesteps", 0), ("ddim_steps", 1),
     ("guidance_scale", float("nan")), ("leakage_threshold", 0.0), ("seed", -1), ("init_token", " "),
     ("output_type", "latent")],
)
def test_config_rejects_bad_values(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        PromptAttackConfig(**{name: value})


def test_soft_attack_errors_name_this_configs_fields():
    with pytest.raises(ValueError, match="`soft_lr`") as raised:
        PromptAttackConfig(soft_lr=-1.0)
    assert "attack_lr" not in str(raised.value)


def test_token_search_settings_follow_the_config():
    config = PromptAttackConfig(discrete_iters=7, topk=16, n_candidates=8, n_flip=2, batch_size=4)
    search = config.token_search_config(3)
    assert (search.n_iters, search.topk, search.n_candidates, search.n_flip, search.batch_size, search.seed) == (
        7, 16, 8, 2, 4, 3)


def test_attacks_are_kept_in_their_canonical_order():
    assert PromptAttackConfig(attacks="soft").attacks == ["soft"]
    assert PromptAttackConfig(attacks=["soft", "discrete"]).attacks == ["discrete", "soft"]


@pytest.mark.parametrize("prompts", ["nudity", [], ["ok", " "], [3]])
def test_concept_prompts_must_be_a_list_of_non_empty_strings(prompts):
    with pytest.raises(ValueError, match="`concept_prompts`"):
        check_concept_prompts(prompts)


def test_config_defaults_and_type():
    assert check_prompt_attack_config(None) == PromptAttackConfig()
    with pytest.raises(TypeError, match="`config`"):
        check_prompt_attack_config({"attacks": "soft"})
