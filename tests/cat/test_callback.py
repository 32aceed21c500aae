from unittest import mock

import pytest
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from hf_robust.attacks import EmbeddingAttackConfig, perturbation_radius
from hf_robust.cat import EmbeddingAdversaryCallback
from hf_robust.cat import callback as callback_module
from hf_robust.testing import tiny_causal_lm

PAIRS = [
    ("How do I boil an egg?", "Put it in boiling water for nine minutes."),
    ("Name a colour.", "Blue."),
    ("What is two plus two?", "Four."),
    ("Say hello.", "Hello there!"),
]


def train(tmp_path, callbacks=(), bf16=False, trainer_kwargs=None, **overrides):
    model, tokenizer = tiny_causal_lm("llama")
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]}
         for p, c in PAIRS]
    )
    settings = {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-2, "use_cpu": True, "bf16": bf16,
                "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no", "disable_tqdm": True,
                "seed": 0, "max_length": 64}
    args = SFTConfig(output_dir=str(tmp_path), **{**settings, **overrides})
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=list(callbacks), **(trainer_kwargs or {}))
    return trainer


def hooks(model):
    """Every module's forward hooks and pre-hooks, by module name."""
    return {name: (list(module._forward_hooks), list(module._forward_pre_hooks))
            for name, module in model.named_modules()}


def final_parameters(trainer):
    trainer.train()
    return {name: parameter.detach().clone() for name, parameter in trainer.model.named_parameters()}


def test_zero_budget_equals_plain_training(tmp_path):
    plain = final_parameters(train(tmp_path / "plain"))
    callback = EmbeddingAdversaryCallback(EmbeddingAttackConfig(eps=0.0, targeted=False))
    adversarial = final_parameters(train(tmp_path / "adversarial", [callback]))
    assert callback.last_result is not None  # the attack really ran, with a zero budget
    for name in plain:
        torch.testing.assert_close(adversarial[name], plain[name], rtol=0, atol=1e-6, msg=name)


def test_stock_sft_trainer_trains_on_prompt_plus_delta(tmp_path):
    config = EmbeddingAttackConfig(eps=1.0, steps=3, step_size=0.3, step_mode="relative", targeted=False)
    callback = EmbeddingAdversaryCallback(config)
    trainer = train(tmp_path / "adversarial", [callback])
    model = trainer.model
    embedding = model.get_input_embeddings()
    seen = []

    def record_batch(module, args, kwargs):  # registered first, so it sees the batch before the callback
        if module.training and torch.is_grad_enabled() and kwargs.get("input_ids") is not None:
            seen.append({"input_ids": kwargs["input_ids"], "labels": kwargs["labels"],
                         "mask": kwargs["attention_mask"]})

    def record_embeds(module, args, kwargs):
        # The first decoder layer's input is the (perturbed) embedding of the ids: Llama does not rescale it.
        if module.training and torch.is_grad_enabled() and "inputs_embeds" not in seen[-1]:
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[-1]["inputs_embeds"] = hidden.detach().clone()
            seen[-1]["clean"] = torch.nn.functional.embedding(seen[-1]["input_ids"], embedding.weight).detach()
            # Relative budget: the radius follows the embedding matrix, which the optimizer moves each step.
            seen[-1]["radius"] = perturbation_radius(embedding.weight, config.eps, config.eps_mode)

    model.register_forward_pre_hook(record_batch, with_kwargs=True)
    model.model.layers[0].register_forward_pre_hook(record_embeds, with_kwargs=True)
    plain = final_parameters(train(tmp_path / "plain"))
    adversarial = final_parameters(trainer)

    assert len(seen) == 2 and all("inputs_embeds" in batch for batch in seen)
    for batch in seen:
        delta = batch["inputs_embeds"] - batch["clean"]
        norms = delta.norm(dim=-1)
        perturbable = batch["mask"].bool() & (batch["labels"] == -100)
        radius = batch["radius"]
        assert norms.max() <= radius * (1 + 1e-5)
        assert norms[~perturbable].max() < 1e-6  # completion tokens and padding untouched
        assert norms[perturbable].max() > 0.1 * radius  # the prompt really moved
    assert callback.last_result.losses[-1] < callback.last_result.losses[0]  # it raised the label loss
    assert not model._forward_pre_hooks or callback._handle is None
    assert any(not torch.equal(plain[name], adversarial[name]) for name in plain)


def test_evaluation_forwards_and_full_label_batches_are_untouched():
    model, tokenizer = tiny_causal_lm("llama")
    callback = EmbeddingAdversaryCallback()
    clean = hooks(model)
    callback.on_train_begin(None, None, None, model=model)
    callback.on_step_begin(None, None, None)  # as the Trainer does before each micro-batch
    ids = tokenizer(["Name a colour. Blue."], return_tensors="pt")["input_ids"]
    labels = ids.clone()
    labels[:, :4] = -100
    model.eval()
    model(input_ids=ids, labels=labels)
    assert callback.last_result is None
    model.train()
    with pytest.warns(UserWarning, match="no prompt positions"):
        model(input_ids=ids, labels=ids)
    assert callback.last_result is None
    assert hooks(model) == clean  # the hooks live for one training forward
    callback.on_substep_end(None, None, None)
    model(input_ids=ids, labels=labels)
    assert callback.last_result is not None and callback.last_result.delta.shape[:2] == ids.shape
    assert callback.attack_count == 1
    callback.on_train_end(None, None, None)
    assert hooks(model) == clean


def test_bad_configuration_is_rejected():
    with pytest.raises(TypeError, match="config"):
        EmbeddingAdversaryCallback({"eps": 0.1})
    with pytest.raises(ValueError, match="targeted"):
        EmbeddingAdversaryCallback(EmbeddingAttackConfig(targeted=True))
    with pytest.raises(ValueError, match="perturb"):
        EmbeddingAdversaryCallback(EmbeddingAttackConfig(targeted=False, perturb="user_turn"))
    with pytest.raises(ValueError, match="model"):
        EmbeddingAdversaryCallback().on_train_begin(None, None, None)


def test_bf16_autocast_training_keeps_delta_in_float32(tmp_path):
    callback = EmbeddingAdversaryCallback(
        EmbeddingAttackConfig(eps=0.5, steps=2, step_size=0.3, step_mode="relative", targeted=False)
    )
    trainer = train(tmp_path, [callback], bf16=True)  # CPU autocast to bfloat16 around every training forward
    seen_dtypes = []
    trainer.model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen_dtypes.append(
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        ),
        with_kwargs=True,
    )
    output = trainer.train()
    assert torch.bfloat16 in seen_dtypes  # the training forwards really ran under bf16 autocast
    assert callback.last_result.delta.dtype == torch.float32
    assert torch.isfinite(torch.tensor(output.training_loss))


def loss_without_labels(outputs, labels, num_items_in_batch=None):
    return outputs.logits.float().pow(2).mean()


def test_a_training_forward_without_labels_is_a_clear_error_and_leaves_no_hook(tmp_path):
    callback = EmbeddingAdversaryCallback(EmbeddingAttackConfig(steps=1, targeted=False))
    # A `compute_loss_func` makes the Trainer take `labels` out of the batch before the forward.
    trainer = train(tmp_path, [callback], trainer_kwargs={"compute_loss_func": loss_without_labels})
    clean = hooks(trainer.model)
    with pytest.raises(ValueError, match=r"without `labels`.*compute_loss_func.*label_smoothing_factor"):
        trainer.train()
    assert callback.attack_count == 0
    assert hooks(trainer.model) == clean


def raise_on_call(number):
    """A forward replacement for the first decoder layer that raises on its `number`-th call."""
    calls = []

    def wrap(original):
        def forward(*args, **kwargs):
            calls.append(1)
            if len(calls) == number:
                raise RuntimeError("boom")
            return original(*args, **kwargs)
        return forward
    return wrap


@pytest.mark.parametrize("where", ["attack", "training_forward", "loss"])
def test_an_exception_inside_training_leaves_no_hook(tmp_path, where):
    callback = EmbeddingAdversaryCallback(EmbeddingAttackConfig(steps=1, targeted=False))
    trainer = train(tmp_path, [callback])
    model = trainer.model
    clean = hooks(model)
    layer = model.model.layers[0]
    if where == "loss":
        original = trainer.compute_loss

        def compute_loss(*args, **kwargs):
            original(*args, **kwargs)
            raise RuntimeError("boom")
        patch = mock.patch.object(trainer, "compute_loss", compute_loss)
    else:
        # A one-step attack makes two forwards (one step, one final evaluation); the third is the training forward.
        patch = mock.patch.object(layer, "forward", raise_on_call(1 if where == "attack" else 3)(layer.forward))
    with patch, pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert callback.attack_count == (0 if where == "attack" else 1)
    assert hooks(model) == clean


def test_every_micro_batch_of_gradient_accumulation_is_attacked(tmp_path):
    callback = EmbeddingAdversaryCallback(EmbeddingAttackConfig(steps=1, targeted=False))
    trainer = train(tmp_path, [callback], per_device_train_batch_size=1, gradient_accumulation_steps=2)
    clean = hooks(trainer.model)
    trainer.train()
    assert callback.attack_count == 4  # 2 optimizer steps x 2 micro-batches
    assert hooks(trainer.model) == clean


def test_a_training_without_any_attack_is_an_error_at_train_end(tmp_path):
    callback = EmbeddingAdversaryCallback(EmbeddingAttackConfig(steps=1, targeted=False))
    # The loss on the whole sequence: every attended token is a label, so no batch has a position to perturb.
    trainer = train(tmp_path, [callback], completion_only_loss=False)
    clean = hooks(trainer.model)
    with (
        pytest.warns(UserWarning, match="no prompt positions"),
        pytest.raises(RuntimeError, match="no training forward was attacked"),
    ):
        trainer.train()
    assert hooks(trainer.model) == clean


def test_a_uniform_start_without_a_seed_is_fresh_at_every_attack_and_the_same_on_a_rerun(tmp_path):
    attack = callback_module.embedding_attack

    def run(name, seed):
        starts = []

        def recording_attack(model, input_ids, attention_mask, labels, config):
            result = attack(model, input_ids, attention_mask, labels, config)
            starts.append((config.seed, result.delta.clone()))  # steps=0: delta is the uniform start itself
            return result

        config = EmbeddingAttackConfig(eps=1.0, steps=0, init="uniform", targeted=False)
        trainer = train(tmp_path / name, [EmbeddingAdversaryCallback(config)], seed=seed)
        with mock.patch.object(callback_module, "embedding_attack", recording_attack):
            parameters = final_parameters(trainer)
        return starts, parameters

    starts, parameters = run("first", seed=0)
    rerun_starts, rerun_parameters = run("rerun", seed=0)
    other_starts, _ = run("other", seed=1)
    assert len(starts) == 2 and starts[0][0] != starts[1][0]  # a fresh start at every attack
    assert not torch.equal(starts[0][1][..., :1, :], starts[1][1][..., :1, :])
    assert [seed for seed, _ in rerun_starts] == [seed for seed, _ in starts]
    for (_, delta), (_, rerun_delta) in zip(starts, rerun_starts):
        torch.testing.assert_close(rerun_delta, delta, rtol=0, atol=0)
    for name in parameters:
        torch.testing.assert_close(rerun_parameters[name], parameters[name], rtol=0, atol=0, msg=name)
    assert {seed for seed, _ in other_starts}.isdisjoint(seed for seed, _ in starts)
