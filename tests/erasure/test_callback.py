"""ConceptLeakageCallback: logs leakage/* through an AdvUnlearnTrainer, leaves the model alone, card results."""

import pytest
import torch

from hf_robust.erasure.callback import ConceptLeakageCallback
from hf_robust.erasure.config import AdvUnlearnConfig
from hf_robust.erasure.evaluation import prompt_attack
from hf_robust.erasure.prompt_attack_config import PromptAttackConfig
from hf_robust.erasure.trainer import AdvUnlearnTrainer
from hf_robust.hub import RobustnessResult
from hf_robust.testing import tiny_sd_components

TRAINING = dict(use_cpu=True, report_to="none", save_strategy="no", bf16=False, disable_tqdm=True, ddim_steps=4,
                attack_steps=2, attack_lr=0.01, retain_batch=2, max_steps=2, learning_rate=1e-2, logging_steps=1,
                seed=0, attack_warmup=10)
ATTACK = PromptAttackConfig(ddim_steps=4, n_timesteps=2, discrete_iters=2, topk=8, n_candidates=4, batch_size=4,
                            num_adv_tokens=1, soft_steps=2, soft_lr=0.05)
PROMPTS = ["nudity", "a photo of a church"]


def make_trainer(tmp_path, xl=False, **overrides):
    args = AdvUnlearnConfig(output_dir=str(tmp_path), **{**TRAINING, **overrides})
    return AdvUnlearnTrainer(tiny_sd_components(xl=xl, seed=0), args, concepts=["nudity"])


def test_logs_leakage_every_n_steps_and_keeps_results(tmp_path):
    trainer = make_trainer(tmp_path)
    callback = ConceptLeakageCallback(trainer, PROMPTS, ATTACK, every=1)
    trainer.add_callback(callback)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "leakage/attack_success_rate" in entry]
    assert [entry["step"] for entry in logged] == [1, 2]  # every step; the end of training was just evaluated
    keys = {"leakage/attack_success_rate", "leakage/pre_attack_success_rate", "leakage/discrete_success_rate",
            "leakage/soft_success_rate", "leakage/mean_before", "leakage/mean_discrete", "leakage/mean_soft"}
    assert keys <= set(logged[-1])
    assert callback.result is not None and [row.prompt for row in callback.result.rows] == PROMPTS
    assert logged[-1]["leakage/mean_before"] == pytest.approx(callback.result.mean_leakage())
    assert logged[-1]["leakage/mean_before"] > 0  # trained for two steps at lr 1e-2: the encoder moved
    assert callback.results and all(isinstance(item, RobustnessResult) for item in callback.results)
    # The callback attacked the trained encoder against the frozen original: the same as prompt_attack(trainer).
    direct = prompt_attack(trainer, PROMPTS, ATTACK)
    assert [row.leakage_before for row in direct.rows] == [row.leakage_before for row in callback.result.rows]


@pytest.mark.parametrize("xl", [False, True])
def test_run_leaves_parameters_grads_flags_and_rng_alone(tmp_path, xl):
    trainer = make_trainer(tmp_path, xl=xl)
    model = trainer.model
    model.train()
    modules = [model, trainer.unet, *trainer.original_text_encoders]
    for parameter in model.parameters():  # a .grad the callback must not touch
        if parameter.requires_grad:
            parameter.grad = torch.full_like(parameter, 0.5)
    before = [(parameter.detach().clone(), None if parameter.grad is None else parameter.grad.clone())
              for module in modules for parameter in module.parameters()]
    flags = [sub.training for module in modules for sub in module.modules()]
    rng = torch.get_rng_state()
    callback = ConceptLeakageCallback(trainer, PROMPTS[:1], ATTACK)
    result = callback.run()
    # Untrained: the trained encoder still equals the original, so the concept leaks without attack.
    assert result.rows[0].leakage_before < 1e-6 and result.pre_attack_success_rate == 1.0
    after = [(parameter, parameter.grad) for module in modules for parameter in module.parameters()]
    for (value, grad), (parameter, parameter_grad) in zip(before, after):
        assert torch.equal(value, parameter)
        assert (grad is None and parameter_grad is None) or torch.equal(grad, parameter_grad)
    assert flags == [sub.training for module in modules for sub in module.modules()]
    assert torch.equal(torch.get_rng_state(), rng)
    assert any(entry.get("leakage/pre_attack_success_rate") == 1.0 for entry in trainer.state.log_history)


def test_bad_inputs(tmp_path):
    trainer = make_trainer(tmp_path)
    with pytest.raises(TypeError, match="`trainer`"):
        ConceptLeakageCallback(object(), PROMPTS)
    with pytest.raises(ValueError, match="`concept_prompts`"):
        ConceptLeakageCallback(trainer, [])
    with pytest.raises(ValueError, match="`every`"):
        ConceptLeakageCallback(trainer, PROMPTS, every=0)
    with pytest.raises(TypeError, match="`config`"):
        ConceptLeakageCallback(trainer, PROMPTS, config={"attacks": "soft"})
    with pytest.raises(TypeError, match="`concept_detector`"):
        ConceptLeakageCallback(trainer, PROMPTS, concept_detector=1)
    with pytest.raises(ValueError, match="`at_evaluate`"):
        ConceptLeakageCallback(trainer, PROMPTS, at_evaluate="yes")
    with pytest.raises(ValueError, match="`dataset_name`"):
        ConceptLeakageCallback(trainer, PROMPTS, dataset_name=" ")
