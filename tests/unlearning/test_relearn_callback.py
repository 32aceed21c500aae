"""Tests for hf_robust.unlearning.relearn_callback: the relearning attack at every evaluation of a stock Trainer."""

import pytest
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hf_robust.hub import RobustnessResult, build_robustness_card, robustness_results_from_card
from hf_robust.testing import tiny_causal_lm
from hf_robust.unlearning.metrics import sequence_nll
from hf_robust.unlearning.relearn import RelearnConfig
from hf_robust.unlearning.relearn_callback import RelearningEvalCallback

from .test_relearn import FAST, FORGET, QUICK_EVALUATION, RETAIN


@pytest.fixture
def tiny():
    return tiny_causal_lm("llama", seed=0)


def test_callback_logs_recovery_in_a_stock_trainer(tiny, tmp_path):
    model, tokenizer = tiny
    train = Dataset.from_dict({"input_ids": [tokenizer(text)["input_ids"] for text in FORGET + RETAIN]})
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, eval_strategy="steps", eval_steps=1,
        learning_rate=1e-4, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=train, eval_dataset=train.select(range(2)), processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )  # fmt: skip
    callback = RelearningEvalCallback(
        trainer, FORGET[:6], RETAIN, FAST, eval_forget=FORGET[6:], evaluation=QUICK_EVALUATION, dataset_name="toys"
    )
    trainer.add_callback(callback)
    trainer.train()

    logged = [entry for entry in trainer.state.log_history if "relearn/recovery" in entry]
    assert [entry["step"] for entry in logged] == [1, 2] and len(callback.history) == 2
    last, result = logged[-1], callback.history[-1]
    assert last["relearn/forget_nll_before"] == pytest.approx(result.before.forget_nll)
    assert last["relearn/forget_nll_after"] == pytest.approx(result.after.forget_nll)
    assert last["relearn/recovery"] == pytest.approx(result.recovery) and result.recovery > 0
    assert {"relearn/retain_nll_before", "relearn/forget_rouge_l_after", "relearn/forget_min_k_after"} <= set(last)
    # The last "before" is the final model itself.
    final_nll = float(sequence_nll(model, tokenizer, FORGET[6:]).mean())
    assert result.before.forget_nll == pytest.approx(final_nll, abs=1e-5)
    # Model-card results: attack "relearning", before and after, readable back from a card.
    assert all(isinstance(entry, RobustnessResult) and entry.attack == "relearning" for entry in callback.results)
    values = {entry.metric: entry.value for entry in callback.results}
    assert values["forget_nll_after"] == pytest.approx(result.after.forget_nll)
    assert values["forget_nll_recovery"] == pytest.approx(result.recovery)
    assert {"forget_nll_before", "retain_nll_after", "forget_rouge_l_before", "forget_rouge_l_after"} <= set(values)
    card = build_robustness_card(callback.results, method="npo", model_name="user/tiny-unlearned")
    assert robustness_results_from_card(str(card)) == callback.results


def test_bad_inputs_name_the_argument(tiny, tmp_path):
    model, _ = tiny
    with pytest.raises(TypeError, match="trainer"):
        RelearningEvalCallback(object(), FORGET)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    with pytest.raises(ValueError, match="n_samples"):
        RelearningEvalCallback(trainer, FORGET, config=RelearnConfig(n_samples=20))
    with pytest.raises(TypeError, match="evaluation"):
        RelearningEvalCallback(trainer, FORGET, config=FAST, evaluation=[("k", 0.1)])
