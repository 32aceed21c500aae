"""ForgetTargetCallback: unlearning stops at the first step whose forget measurement reaches the target."""

import pytest
from transformers import PrinterCallback

import hf_robust.unlearning.stopping as stopping_module
from hf_robust.unlearning import ForgetTargetCallback, UnlearnTrainer
from hf_robust.unlearning.demo import toy_unlearn_config
from hf_robust.unlearning.metrics import sequence_nll
from hf_robust.unlearning.toy import toy_memorised_model

SMALL = {"steps": 40, "n_forget": 4, "n_retain": 4, "length": 8}


@pytest.fixture(scope="module")
def memorised():
    return toy_memorised_model(seed=0, **SMALL)


def trainer_for(memorised, tmp_path, steps=12):
    import copy

    model, tokenizer, forget, retain = memorised
    args = toy_unlearn_config(str(tmp_path), 0, steps=steps, batch_size=4, learning_rate=5e-3)
    trainer = UnlearnTrainer(model=copy.deepcopy(model), args=args, forget_dataset=forget, retain_dataset=retain,
                             processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    return trainer


def forget_nll(forget):
    def measure(model):
        assert not model.training
        return float(sequence_nll(model, None, list(forget["input_ids"])).mean())
    return measure


def unbounded_history(memorised, path, steps=12) -> dict:
    """{step: forget NLL} of a run whose target is never reached (the same seeded run the others cut short)."""
    free = trainer_for(memorised, path, steps=steps)
    unbounded = ForgetTargetCallback(free, forget_nll(memorised[2]), target=1e9)
    free.add_callback(unbounded)
    free.train()
    assert unbounded.reached_at is None and free.state.global_step == steps
    return dict(unbounded.history)


def test_stops_at_the_first_step_past_the_target_and_records_the_history(memorised, tmp_path):
    forget = memorised[2]
    values = unbounded_history(memorised, tmp_path / "free")
    assert list(values) == list(range(13))
    target = values[5] - 1e-6 if values[5] > max(values[step] for step in range(5)) else None
    assert target is not None, "NPO should raise the forget NLL to a new high by step 5"

    stopped = trainer_for(memorised, tmp_path / "stopped")
    callback = ForgetTargetCallback(stopped, forget_nll(forget), target=target)
    stopped.add_callback(callback)
    stopped.train()
    first = min(step for step, value in values.items() if value >= target and step >= 1)
    assert callback.reached_at == stopped.state.global_step == first
    assert callback.value == pytest.approx(values[first], rel=1e-5)  # the same run, cut short


def test_condition_keeps_training_until_it_holds(memorised, tmp_path):
    trainer = trainer_for(memorised, tmp_path)
    checked = []

    def condition(model):
        checked.append(trainer.state.global_step)
        return trainer.state.global_step >= 4

    callback = ForgetTargetCallback(trainer, forget_nll(memorised[2]), target=-1.0, condition=condition, every=2)
    trainer.add_callback(callback)
    trainer.train()
    assert checked == [2, 4] and callback.reached_at == 4 and [step for step, _ in callback.history] == [0, 2, 4]


def test_landing_shortens_the_last_step_onto_the_target(memorised, tmp_path):
    forget = memorised[2]
    values = unbounded_history(memorised, tmp_path / "free")
    # A target inside a big jump of one step: stopping alone would overshoot it by far more than 5%.
    step = max(range(1, 13), key=lambda index: values[index] - max(values[other] for other in range(index)))
    below = max(values[other] for other in range(step))
    target = below + 0.3 * (values[step] - below)
    assert values[step] > target * 1.05

    trainer = trainer_for(memorised, tmp_path / "landed")
    callback = ForgetTargetCallback(trainer, forget_nll(forget), target=target, land=True, tolerance=0.01)
    trainer.add_callback(callback)
    trainer.train()
    assert callback.reached_at == step and 0 < callback.landed_fraction < 1
    assert target <= callback.value <= target * 1.01
    assert callback.history[-1][0] == pytest.approx(step - 1 + callback.landed_fraction)
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    assert forget_nll(forget)(model) == pytest.approx(callback.value, rel=1e-5)  # the model holds the landed weights


def test_a_failed_condition_after_landing_continues_from_the_whole_step(memorised, tmp_path):
    forget = memorised[2]
    values = unbounded_history(memorised, tmp_path / "free", steps=6)
    trainer = trainer_for(memorised, tmp_path / "landed", steps=6)
    callback = ForgetTargetCallback(trainer, forget_nll(forget), target=values[0] + 1e-3,
                                    land=True, condition=lambda model: False)
    trainer.add_callback(callback)
    trainer.train()
    assert callback.reached_at is None and trainer.state.global_step == 6
    integer_steps = [(step, value) for step, value in callback.history if float(step).is_integer()]
    assert [value for _, value in integer_steps] == pytest.approx(list(values.values()), rel=1e-5)


def test_a_condition_failing_at_the_landed_point_lands_where_it_first_holds(memorised, tmp_path):
    # As on SmolLM2: the NLL target is reached a third of the way into a step, but a fact is still answered there;
    # the step ends where the condition first holds (found by bisection), not at the whole step.
    forget = memorised[2]
    values = unbounded_history(memorised, tmp_path / "free")
    step = max(range(1, 13), key=lambda index: values[index] - max(values[other] for other in range(index)))
    below = max(values[other] for other in range(step))
    target, needed = below + 0.3 * (values[step] - below), below + 0.7 * (values[step] - below)
    measure = forget_nll(forget)
    trainer = trainer_for(memorised, tmp_path / "landed")
    callback = ForgetTargetCallback(trainer, measure, target=target, land=True, tolerance=0.01,
                                    condition=lambda model: measure(model) >= needed)
    trainer.add_callback(callback)
    trainer.train()
    assert callback.reached_at == step == trainer.state.global_step and 0 < callback.landed_fraction < 1
    assert needed <= callback.value < values[step] and callback.value > target * 1.01  # past the band, short of 1
    landed = [value for at, value in callback.history if not float(at).is_integer()]
    assert target <= landed[0] <= target * 1.01 and landed[-1] == callback.value  # first the band, then the condition
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    assert measure(model) == pytest.approx(callback.value, rel=1e-5)


@pytest.mark.parametrize("arguments, match", [
    ({"measure": "nll"}, "`measure`"), ({"condition": 3}, "`condition`"), ({"target": float("nan")}, "`target`"),
    ({"every": 0}, "`every`"), ({"higher_is_forgotten": "yes"}, "`higher_is_forgotten`"), ({"land": 1}, "`land`"),
    ({"tolerance": 0}, "`tolerance`"), ({"land_iterations": 0}, "`land_iterations`"),
])
def test_bad_input(memorised, tmp_path, arguments, match):
    trainer = trainer_for(memorised, tmp_path)
    with pytest.raises((TypeError, ValueError), match=match):
        ForgetTargetCallback(trainer, **{"measure": len, "target": 1.0, **arguments})
    with pytest.raises(TypeError, match="`trainer`"):
        ForgetTargetCallback(object(), len, 1.0)


def test_sharded_weights_are_refused_before_the_first_step(memorised, tmp_path, monkeypatch):
    trainer = trainer_for(memorised, tmp_path)
    monkeypatch.setattr(stopping_module, "has_sharded_weights", lambda model: True)
    trainer.add_callback(ForgetTargetCallback(trainer, forget_nll(memorised[2]), target=1.0))
    with pytest.raises(ValueError, match="ForgetTargetCallback on sharded weights .* not supported: .* Use DDP"):
        trainer.train()
    assert trainer.state.global_step == 0
