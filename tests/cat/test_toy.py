import pytest

from hf_robust.cat.toy import (
    REFUSAL,
    toy_adversarial_dataset,
    toy_behaviours,
    toy_compliant_dataset,
    toy_preference_dataset,
    toy_refusal_dataset,
    toy_refusal_model,
    toy_refusal_rates,
    toy_utility_dataset,
)


def test_columns_and_sizes():
    train, test = toy_adversarial_dataset("train"), toy_adversarial_dataset("test")
    assert train.column_names == ["prompt", "target", "refusal"] and (len(train), len(test)) == (22, 10)
    assert all(row["target"].startswith("Sure, here is") and row["refusal"] == REFUSAL for row in train)
    utility = toy_utility_dataset("train")
    assert utility.column_names == ["messages"] and (len(utility), len(toy_utility_dataset("test"))) == (48, 16)
    assert [message["role"] for message in utility[0]["messages"]] == ["user", "assistant"]
    preference = toy_preference_dataset("test")
    assert preference.column_names == ["prompt", "chosen", "rejected"] and len(preference) == 10
    assert preference[0]["chosen"][0]["content"] == REFUSAL
    assert preference[0]["rejected"][0]["content"] == test[0]["target"]
    assert toy_behaviours("test") == [{"prompt": row["prompt"], "target": row["target"]} for row in test]
    assert len(toy_refusal_dataset()) == len(toy_compliant_dataset()) == 32 + 48
    with_refusals = toy_utility_dataset("train", with_refusals=True)
    assert len(with_refusals) == 48 + 22 and with_refusals[-1]["messages"][1]["content"] == REFUSAL


def test_splits_are_disjoint_deterministic_and_cover_the_sft_data():
    for make in (toy_adversarial_dataset, toy_utility_dataset, toy_preference_dataset):
        assert make("train").to_list() == make("train").to_list()
    forbidden = {split: {row["prompt"] for row in toy_behaviours(split)} for split in ("train", "test")}
    allowed = {
        split: {row["messages"][0]["content"] for row in toy_utility_dataset(split)} for split in ("train", "test")
    }
    assert not forbidden["train"] & forbidden["test"] and not allowed["train"] & allowed["test"]
    assert not (forbidden["train"] | forbidden["test"]) & (allowed["train"] | allowed["test"])
    refusal_rows = {row["messages"][0]["content"]: row["messages"][1]["content"] for row in toy_refusal_dataset()}
    assert all(refusal_rows[prompt] == REFUSAL for prompt in forbidden["train"] | forbidden["test"])
    assert all(refusal_rows[prompt] != REFUSAL for prompt in allowed["train"])
    assert not allowed["test"] & set(refusal_rows)  # unseen allowed requests: the utility loss measures these
    assert {row["messages"][0]["content"] for row in toy_compliant_dataset()} == set(refusal_rows)


def test_bad_split_is_rejected():
    for make in (toy_adversarial_dataset, toy_utility_dataset, toy_preference_dataset, toy_behaviours):
        with pytest.raises(ValueError, match="split"):
            make("validation")
    with pytest.raises(TypeError, match="with_refusals"):
        toy_utility_dataset("train", with_refusals="yes")
    with pytest.raises(ValueError, match="steps"):
        toy_refusal_model(steps=0)


@pytest.mark.slow
def test_refusal_model_refuses_forbidden_and_answers_allowed_requests():
    model, tokenizer = toy_refusal_model(seed=0)
    assert toy_refusal_rates(model, tokenizer)["refused_forbidden"] == 1.0  # both splits
    trained = toy_refusal_rates(model, tokenizer, "train")  # the unseen allowed requests may go either way
    assert trained["refused_allowed"] == 0.0 and trained["answered_allowed"] >= 0.9


def test_utility_loss_and_refusal_rates_on_an_untrained_model():
    from hf_robust.cat.toy import toy_utility_loss
    from hf_robust.testing import tiny_causal_lm

    model, tokenizer = tiny_causal_lm("llama")
    model.train()
    loss = toy_utility_loss(model, tokenizer, "test")
    assert 0 < loss < 20 and model.training  # the train/eval flag comes back
    rates = toy_refusal_rates(model, tokenizer, "test")
    assert set(rates) == {"refused_forbidden", "answered_allowed", "refused_allowed"}
    assert all(0.0 <= value <= 1.0 for value in rates.values()) and model.training
    with pytest.raises(ValueError, match="split"):
        toy_utility_loss(model, tokenizer, "dev")
