"""ForgetTargetCallback: unlearning stops at the first step whose forget measurement reaches the target."""

import pytest
from transformers import PrinterCallback

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


def test_stops_at_the_first_step_past_the_target_and_records_the_history(memorised, tmp_path):
    forget = memorised[2]
    free = trainer_for(memorised, tmp_path / "free")
    unbounded = ForgetTargetCallback(free, forget_nll(forget), target=1e9)
    free.add_callback(unbounded)
    free.train()
    assert unbounded.reached_at is None and free.state.global_step == 12
    values = dict(unbounded.history)
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


@pytest.mark.parametrize("arguments, match", [
    ({"measure": "nll"}, "`measure`"), ({"condition": 3}, "`condition`"), ({"target": float("nan")}, "`target`"),
    ({"every": 0}, "`every`"), ({"higher_is_forgotten": "yes"}, "`higher_is_forgotten`"),
])
def test_bad_input(memorised, tmp_path, arguments, match):
    trainer = trainer_for(memorised, tmp_path)
    with pytest.raises((TypeError, ValueError), match=match):
        ForgetTargetCallback(trainer, **{"measure": len, "target": 1.0, **arguments})
    with pytest.raises(TypeError, match="`trainer`"):
        ForgetTargetCallback(object(), len, 1.0)
