import copy
import dataclasses

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from hf_robust.testing import tiny_causal_lm
from hf_robust.unlearning.metrics import sequence_nll
from hf_robust.unlearning.relearn import RelearnConfig, RelearnResult, relearning_attack

FORGET = [
    "The capital of France is Paris.",
    "The capital of Germany is Berlin.",
    "Mix the flour and water, knead the dough.",
    "Check the battery and the engine oil.",
    "The quick brown fox jumps over the lazy dog.",
    "a painting of a house in the style of van gogh.",
    "the retriever returns the most similar passage.",
    "two plus two is four.",
]
RETAIN = ["Hello! How can I help you today?", "Thank you very much!"]
# Large enough for a tiny random model to move within a few steps.
FAST = RelearnConfig(n_samples=4, steps=3, learning_rate=1e-3, batch_size=2, max_length=32)
QUICK_EVALUATION = {"max_new_tokens": 4}


@pytest.fixture
def tiny():
    return tiny_causal_lm("llama", seed=0)


def snapshot(model):
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def assert_unchanged(model, before, modes):
    assert [module.training for module in model.modules()] == modes
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]) and parameter.grad is None, name


def test_config_defaults_follow_the_paper_and_bad_values_name_the_field():
    config = RelearnConfig()
    assert (config.learning_rate, config.batch_size, config.optimizer, config.n_samples) == (1e-5, 4, "adamw", 20)
    assert config.parameters == "all"  # the paper's attacker fine-tunes the whole model
    assert config.total_steps == 5 and RelearnConfig(n_samples=60).total_steps == 15
    assert RelearnConfig(n_samples=5, batch_size=4).total_steps == 2 and RelearnConfig(steps=7).total_steps == 7
    for field, value in [
        ("n_samples", 0), ("steps", 0), ("learning_rate", 0.0), ("learning_rate", float("nan")), ("batch_size", 1.5),
        ("optimizer", "adam"), ("weight_decay", -1.0), ("max_grad_norm", 0.0), ("seed", -1), ("max_length", 1),
        ("n_samples", True), ("parameters", "adapters"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=f"`{field}`"):
            RelearnConfig(**{field: value})


def test_attack_fine_tunes_a_copy_and_leaves_the_model_bit_identical(tiny):
    model, tokenizer = tiny
    model.train()
    model.model.layers[1].eval()
    modes = [module.training for module in model.modules()]
    before = snapshot(model)
    result = relearning_attack(model, tokenizer, FORGET, FAST, RETAIN, return_model=True, **QUICK_EVALUATION)
    assert_unchanged(model, before, modes)
    assert isinstance(result, RelearnResult) and result.steps == 3 and len(result.losses) == 3
    assert len(result.samples) == 4 == len(set(result.samples)) and all(0 <= index < 8 for index in result.samples)
    # The copy moved, and the NLL of the rows it was fine-tuned on dropped.
    attacked = result.model
    assert any(not torch.equal(parameter, before[name]) for name, parameter in attacked.named_parameters())
    trained = [FORGET[index] for index in result.samples]
    assert sequence_nll(attacked, tokenizer, trained).mean() < sequence_nll(model, tokenizer, trained).mean() - 0.1
    # Measured on all forget rows (no eval_forget), and on the retain rows.
    assert result.before.forget_rows == 8 and result.before.retain_rows == 2
    assert result.before.forget_nll == pytest.approx(float(sequence_nll(model, tokenizer, FORGET).mean()), abs=1e-5)
    assert result.after.forget_nll == pytest.approx(float(sequence_nll(attacked, tokenizer, FORGET).mean()), abs=1e-5)
    assert result.recovery == pytest.approx(result.before.forget_nll - result.after.forget_nll) and result.recovery > 0


def test_attack_is_seeded_and_measures_held_out_rows(tiny):
    model, tokenizer = tiny
    pool, held_out = Dataset.from_dict({"text": FORGET[:6]}), FORGET[6:]
    first = relearning_attack(model, tokenizer, pool, FAST, eval_forget=held_out, **QUICK_EVALUATION)
    second = relearning_attack(model, tokenizer, pool, FAST, eval_forget=held_out, **QUICK_EVALUATION)
    assert first.samples == second.samples and first.losses == second.losses
    assert first.before == second.before and first.after == second.after
    assert first.before.forget_rows == 2 and first.before.retain_nll is None
    reseeded = dataclasses.replace(FAST, seed=1)
    other = relearning_attack(model, tokenizer, pool, reseeded, eval_forget=held_out, **QUICK_EVALUATION)
    assert other.samples != first.samples
    # The global RNG is not moved by the attack.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    relearning_attack(model, tokenizer, pool, dataclasses.replace(FAST, steps=1), **QUICK_EVALUATION)
    assert torch.equal(torch.rand(3), expected)


def test_sgd_and_several_passes(tiny):
    model, tokenizer = tiny
    config = RelearnConfig(n_samples=3, steps=4, batch_size=2, learning_rate=1e-2, optimizer="sgd", max_grad_norm=None)
    result = relearning_attack(model, tokenizer, FORGET, config, **QUICK_EVALUATION)
    assert result.steps == 4 and all(loss > 0 for loss in result.losses)  # passes of batches 2, 1, 2, 1
    assert result.recovery > 0


def lora_model(base):
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():  # non-zero B so the adapter is active
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    return model


def test_default_attacker_merges_a_lora_model_and_trains_every_weight(tiny):
    base, tokenizer = tiny
    model = lora_model(base)
    before, modes = snapshot(model), [module.training for module in model.modules()]
    merged = {name: p.detach().clone() for name, p in copy.deepcopy(model).merge_and_unload().named_parameters()}
    result = relearning_attack(model, tokenizer, FORGET, FAST, return_model=True, **QUICK_EVALUATION)
    assert_unchanged(model, before, modes)
    assert not hasattr(result.model, "peft_config")  # a plain merged copy
    changed = {name for name, parameter in result.model.named_parameters() if not torch.equal(parameter, merged[name])}
    assert "model.embed_tokens.weight" in changed and any("mlp" in name for name in changed)  # outside the adapters
    assert result.recovery > 0 and result.config.parameters == "all"


def test_trainable_attacker_trains_only_the_adapter_copy(tiny):
    base, tokenizer = tiny
    model = lora_model(base)
    before, modes = snapshot(model), [module.training for module in model.modules()]
    config = dataclasses.replace(FAST, parameters="trainable")
    result = relearning_attack(model, tokenizer, FORGET, config, return_model=True, **QUICK_EVALUATION)
    assert_unchanged(model, before, modes)
    changed = {name for name, parameter in result.model.named_parameters() if not torch.equal(parameter, before[name])}
    assert changed and all("lora_" in name for name in changed)


def test_after_rmu_the_default_attacker_changes_weights_outside_the_trained_layers(tiny):
    model, tokenizer = tiny
    for name, parameter in model.named_parameters():  # RMU trains a few down_proj layers and freezes the rest
        parameter.requires_grad_("layers.0.mlp.down_proj" in name)
    before = snapshot(model)
    result = relearning_attack(model, tokenizer, FORGET, FAST, return_model=True, **QUICK_EVALUATION)
    changed = {name for name, parameter in result.model.named_parameters() if not torch.equal(parameter, before[name])}
    assert any("down_proj" not in name for name in changed)
    weak = relearning_attack(model, tokenizer, FORGET, dataclasses.replace(FAST, parameters="trainable"),
                             return_model=True, **QUICK_EVALUATION)
    changed = {name for name, parameter in weak.model.named_parameters() if not torch.equal(parameter, before[name])}
    assert changed == {"model.layers.0.mlp.down_proj.weight"}
    assert [p.requires_grad for p in model.parameters()].count(True) == 1  # the given model's flags are kept
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name


def test_curve_measures_after_each_requested_step_count(tiny):
    model, tokenizer = tiny
    before, modes = snapshot(model), [module.training for module in model.modules()]
    config = dataclasses.replace(FAST, steps=[0, 1, 3])
    result = relearning_attack(model, tokenizer, FORGET, config, **QUICK_EVALUATION)
    assert_unchanged(model, before, modes)
    assert [step for step, _ in result.curve] == [0, 1, 3] and result.steps == 3
    assert result.curve[0][1] == result.before and result.curve[-1][1] == result.after
    # The curve's last point is the plain 3-step attack (same seed, same batches).
    plain = relearning_attack(model, tokenizer, FORGET, FAST, **QUICK_EVALUATION)
    assert plain.after.forget_nll == pytest.approx(result.after.forget_nll, abs=1e-5)
    assert result.curve[1][1].forget_nll != result.before.forget_nll
    assert {"relearn/forget_nll_step_0", "relearn/forget_nll_step_3"} <= set(result.log_values())
    assert sum(r.metric.startswith("forget_nll_after_") for r in result.robustness_results()) == 3
    for steps in ([], [3, 1], [0], [1, 1], [-1, 2]):
        with pytest.raises(ValueError, match="`steps`"):
            RelearnConfig(steps=steps)


def test_measure_runs_at_every_curve_point_in_eval_mode(tiny):
    model, tokenizer = tiny
    before, modes = snapshot(model), [module.training for module in model.modules()]
    seen = []

    def measure(measured):
        seen.append(measured.training)
        return float(sum(parameter.detach().double().sum() for parameter in measured.parameters()))

    result = relearning_attack(model, tokenizer, FORGET, dataclasses.replace(FAST, steps=[0, 2, 3]), measure=measure,
                               **QUICK_EVALUATION)
    assert_unchanged(model, before, modes)
    assert [step for step, _ in result.measurements] == [0, 2, 3] and seen == [False] * 3
    assert result.measurements[0][1] == measure(model) != result.measurements[-1][1]  # step 0: the given model
    without_zero = relearning_attack(model, tokenizer, FORGET, dataclasses.replace(FAST, steps=[1, 3]),
                                     measure=measure, **QUICK_EVALUATION)
    assert [step for step, _ in without_zero.measurements] == [1, 3]
    assert without_zero.measurements[-1][1] == pytest.approx(result.measurements[-1][1])  # same seeded attack
    with pytest.raises(TypeError, match="`measure`"):
        relearning_attack(model, tokenizer, FORGET, FAST, measure="nll")


def test_bad_inputs_name_the_argument(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=r"n_samples.*forget_dataset"):
        relearning_attack(model, tokenizer, FORGET[:3], FAST)
    with pytest.raises(TypeError, match="forget_dataset"):
        relearning_attack(model, tokenizer, "The capital of France is Paris.", FAST)
    with pytest.raises(ValueError, match="forget_dataset.*'text' or 'input_ids'"):
        relearning_attack(model, tokenizer, Dataset.from_dict({"prompt": FORGET}), FAST)
    with pytest.raises(TypeError, match="eval_forget"):
        relearning_attack(model, tokenizer, FORGET, FAST, eval_forget=42)
    with pytest.raises(TypeError, match=r"retain_dataset\[0\]"):
        relearning_attack(model, tokenizer, FORGET, FAST, retain_dataset=[None])
    with pytest.raises(TypeError, match="config"):
        relearning_attack(model, tokenizer, FORGET, {"n_samples": 4})
    frozen, frozen_tokenizer = tiny_causal_lm("llama", seed=0)
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):  # the weaker attacker has nothing to train
        relearning_attack(frozen, frozen_tokenizer, FORGET, dataclasses.replace(FAST, parameters="trainable"),
                          **QUICK_EVALUATION)
    # An attacker holding the weights trains them all; the frozen original stays frozen and unchanged.
    before = snapshot(frozen)
    everything = dataclasses.replace(FAST, parameters="all")
    result = relearning_attack(frozen, frozen_tokenizer, FORGET, everything, return_model=True, **QUICK_EVALUATION)
    assert result.recovery > 0 and all(not parameter.requires_grad for parameter in frozen.parameters())
    assert all(torch.equal(parameter, before[name]) for name, parameter in frozen.named_parameters())
    assert all(not torch.equal(parameter, before[name]) for name, parameter in result.model.named_parameters())
