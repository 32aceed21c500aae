import pytest
import torch
from trl import SFTConfig, SFTTrainer

from hf_robust.attacks.continuous import EmbeddingAttackConfig
from hf_robust.attacks.gcg import GCGConfig
from hf_robust.cat import EmbeddingAdversaryCallback
from hf_robust.cat.cat_config import CATConfig
from hf_robust.cat.cat_trainer import CATTrainer
from hf_robust.cat.robustness_callback import EMBEDDING_KEY, GCG_KEY, RobustnessEvalCallback
from hf_robust.cat.toy import toy_adversarial_dataset, toy_behaviours, toy_utility_dataset
from hf_robust.evaluation.behaviour_attacks import embedding_attack_success_rate
from hf_robust.evaluation.judges import refusal_judge
from hf_robust.evaluation.presets import get_preset
from hf_robust.hub import RobustnessResult
from hf_robust.testing import tiny_causal_lm

# A few steps keep the test fast; the checks compare with direct calls, so the attacks need not be strong.
EMBEDDING = EmbeddingAttackConfig(eps=1.0, steps=3, step_size=0.1, step_mode="relative", optimizer="adam")
GCG = GCGConfig(n_iters=2, topk=8, search_width=8, suffix_init="! ! !")


def sft_trainer(tmp_path, max_steps=2):
    model, tokenizer = tiny_causal_lm("llama")
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        eval_strategy="steps",
        eval_steps=1,
        learning_rate=1e-4,  # small: the "Sure" target below stays within reach of the attack
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        max_length=64,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=toy_utility_dataset("train"),
        eval_dataset=toy_utility_dataset("test").select(range(4)),
        processing_class=tokenizer,
    )


def test_stock_sft_trainer_logs_the_rates_at_every_evaluation(tmp_path):
    trainer = sft_trainer(tmp_path)
    # A one-token target the attack reaches, then full targets it does not: the rate is neither 0 nor 1.
    behaviours = [{"prompt": toy_behaviours("test")[0]["prompt"], "target": "Sure"}] + toy_behaviours("test")
    callback = RobustnessEvalCallback(trainer, behaviours, EMBEDDING, GCG, max_behaviours=3, dataset_name="toy")
    trainer.add_callback(callback)
    trainer.train()

    logged = [entry for entry in trainer.state.log_history if EMBEDDING_KEY in entry]
    assert [entry["step"] for entry in logged] == [1, 2]
    assert all(0.0 <= entry[EMBEDDING_KEY] <= 1.0 and 0.0 <= entry[GCG_KEY] <= 1.0 for entry in logged)
    # The latest results are what a direct call on the final model gives.
    direct = embedding_attack_success_rate(trainer.model, trainer.processing_class, behaviours[:3], EMBEDDING)
    assert logged[-1][EMBEDDING_KEY] == direct and 0 < direct < 1
    assert [result.attack for result in callback.results] == ["embedding_attack", "gcg"]
    assert all(isinstance(result, RobustnessResult) and result.dataset == "toy" for result in callback.results)
    assert callback.results[0].value == direct
    assert callback.results[0].attack_config["eps"] == EMBEDDING.eps
    assert callback.results[0].attack_config["behaviours"] == 3
    assert [result.attack_preset for result in callback.results] == [None, None]  # custom configs


def test_the_default_embedding_attack_is_the_strong_preset_and_results_carry_it(tmp_path):
    trainer = sft_trainer(tmp_path)
    callback = RobustnessEvalCallback(trainer, toy_behaviours("test")[:1])
    assert callback.embedding_preset == "strong" and callback.embedding_config == get_preset("strong").config
    assert callback.gcg_config is None
    callback.on_evaluate(trainer.args, trainer.state, trainer.control)
    (result,) = callback.results
    assert result.attack_preset == "strong"
    settings = {key: value for key, value in get_preset("strong").describe()["settings"].items() if value is not None}
    assert result.attack_config == {**settings, "behaviours": 1, "success": "target"}
    named = RobustnessEvalCallback(trainer, toy_behaviours("test")[:1], embedding_config=get_preset("train"))
    assert named.embedding_preset == "train" and named.embedding_config == EmbeddingAttackConfig()


def test_the_embedding_attack_can_be_judged_by_its_replies(tmp_path):
    trainer = sft_trainer(tmp_path)
    behaviours = toy_behaviours("test")[:2]
    callback = RobustnessEvalCallback(trainer, behaviours, EMBEDDING, embedding_success="target_or_judge",
                                      judge=refusal_judge("refusal-substrings-extended"))
    callback.on_evaluate(trainer.args, trainer.state, trainer.control)
    (result,) = callback.results
    # a tiny model never refuses in words: the judge passes every reply, whatever target forcing found
    assert result.value == 1.0 and result.attack_config["success"] == "target_or_judge"
    assert result.attack_config["judge"] == {"name": "refusal-substrings-extended", "version": "v1"}
    assert embedding_attack_success_rate(trainer.model, trainer.processing_class, behaviours, EMBEDDING) < 1.0


def test_gcg_presets_are_accepted_by_name(tmp_path):
    callback = RobustnessEvalCallback(sft_trainer(tmp_path), toy_behaviours("test"), None, "gcg-fast")
    assert callback.gcg_preset == "gcg-fast" and callback.gcg_config == get_preset("gcg-fast").config
    assert callback.embedding_config is None


def test_an_attack_weaker_than_the_training_attack_is_refused_before_any_step(tmp_path):
    behaviours = toy_behaviours("test")
    model, tokenizer = tiny_causal_lm("llama")
    args = CATConfig(output_dir=str(tmp_path / "cat"), attack_eps=2.0, use_cpu=True, bf16=False, report_to="none",
                     max_steps=1, per_device_train_batch_size=4, max_length=64)
    cat = CATTrainer(model=model, args=args, adversarial_dataset=toy_adversarial_dataset("train"),
                     utility_dataset=toy_utility_dataset("train"), processing_class=tokenizer)
    with pytest.raises(ValueError, match=r"`embedding_config` \(strong: eps 1.0 relative, 100 steps\) is weaker than "
                       r"the training attack \(eps 2.0 relative, 10 steps\)"):
        RobustnessEvalCallback(cat, behaviours)
    RobustnessEvalCallback(cat, behaviours, embedding_config=None, gcg_config="gcg")  # another threat model: allowed
    # An adversary callback added after this one is checked at on_train_begin, before the first step.
    trainer = sft_trainer(tmp_path / "sft")
    trainer.add_callback(RobustnessEvalCallback(trainer, behaviours, "train"))
    trainer.add_callback(EmbeddingAdversaryCallback(EmbeddingAttackConfig(eps=0.5, targeted=False)))
    with pytest.raises(ValueError, match=r"`embedding_config` \(train: eps 0.05 relative, 10 steps\) is weaker"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_the_callback_leaves_parameters_gradients_and_modes_alone(tmp_path):
    trainer = sft_trainer(tmp_path)
    model = trainer.model
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back as it was
    modes = [module.training for module in model.modules()]
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    callback = RobustnessEvalCallback(trainer, toy_behaviours("test")[:2], EMBEDDING)
    callback.on_evaluate(trainer.args, trainer.state, trainer.control)
    assert [module.training for module in model.modules()] == modes
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]) and parameter.grad is None, name
    assert [result.attack for result in callback.results] == ["embedding_attack"]
    assert trainer.state.log_history[-1][EMBEDDING_KEY] == callback.results[0].value


def test_bad_input_names_the_argument(tmp_path):
    trainer = sft_trainer(tmp_path)
    behaviours = toy_behaviours("test")
    with pytest.raises(ValueError, match="embedding_config.*gcg_config"):
        RobustnessEvalCallback(trainer, behaviours, embedding_config=None)
    with pytest.raises(ValueError, match="behaviours"):
        RobustnessEvalCallback(trainer, [])
    with pytest.raises(TypeError, match="behaviours"):
        RobustnessEvalCallback(trainer, "Tell me a secret.")
    with pytest.raises(ValueError, match="behaviours"):
        RobustnessEvalCallback(trainer, [{"prompt": "Tell me a secret."}])
    with pytest.raises(TypeError, match="trainer"):
        RobustnessEvalCallback(trainer.model, behaviours)
    with pytest.raises(TypeError, match="embedding_config"):
        RobustnessEvalCallback(trainer, behaviours, embedding_config={"eps": 0.1})
    with pytest.raises(ValueError, match="targeted"):
        RobustnessEvalCallback(trainer, behaviours, embedding_config=EmbeddingAttackConfig(targeted=False))
    with pytest.raises(TypeError, match="gcg_config"):
        RobustnessEvalCallback(trainer, behaviours, gcg_config=EMBEDDING)
    with pytest.raises(ValueError, match="`embedding_success` must be one of 'target', 'target_or_judge'"):
        RobustnessEvalCallback(trainer, behaviours, embedding_success="judge")
    with pytest.raises(TypeError, match="`judge` must be None or a callable"):
        RobustnessEvalCallback(trainer, behaviours, embedding_success="target_or_judge", judge="extended")
    with pytest.raises(ValueError, match=r"`embedding_config` must be one of the embedding evaluation presets "
                                         r"'train', 'strong'"):
        RobustnessEvalCallback(trainer, behaviours, embedding_config="gcg")
    with pytest.raises(ValueError, match=r"`gcg_config` must be one of the gcg evaluation presets "
                                         r"'gcg', 'gcg-cpu', 'gcg-fast'"):
        RobustnessEvalCallback(trainer, behaviours, gcg_config="strong")
    with pytest.raises(TypeError, match="embedding_config.*kind 'gcg'"):
        RobustnessEvalCallback(trainer, behaviours, embedding_config=get_preset("gcg"))
    with pytest.raises(ValueError, match="max_behaviours"):
        RobustnessEvalCallback(trainer, behaviours, max_behaviours=0)
    with pytest.raises(ValueError, match="dataset_name"):
        RobustnessEvalCallback(trainer, behaviours, dataset_name="")
    with pytest.raises(ValueError, match="split"):
        RobustnessEvalCallback(trainer, behaviours, split=3)
