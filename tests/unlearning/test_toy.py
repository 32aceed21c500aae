import pytest

from hf_robust.testing.language import tiny_tokenizer
from hf_robust.unlearning.toy import SMOLLM2_FACTS, toy_memorisation_data, toy_memorised_model


def test_data_shapes_columns_and_token_range():
    forget, retain = toy_memorisation_data(seed=0, n_forget=6, n_retain=10, length=12)
    assert forget.column_names == retain.column_names == ["input_ids"]
    assert (len(forget), len(retain)) == (6, 10)
    rows = list(forget["input_ids"]) + list(retain["input_ids"])
    assert all(len(row) == 12 for row in rows)
    tokenizer = tiny_tokenizer()
    special = set(tokenizer.all_special_ids)
    assert all(0 <= token < len(tokenizer) and token not in special for row in rows for token in row)
    assert len({tuple(row) for row in rows}) == len(rows)  # random strings do not repeat


def test_data_is_deterministic_and_seeded():
    first, second = toy_memorisation_data(seed=3), toy_memorisation_data(seed=3)
    assert first[0].to_list() == second[0].to_list() and first[1].to_list() == second[1].to_list()
    assert toy_memorisation_data(seed=4)[0].to_list() != first[0].to_list()
    # The forget rows are drawn first: more retain rows leave them unchanged.
    assert toy_memorisation_data(seed=3, n_retain=40)[0].to_list() == first[0].to_list()


@pytest.mark.parametrize(
    "arguments, name",
    [({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"n_forget": 0}, "n_forget"), ({"n_retain": True}, "n_retain"),
     ({"length": 1}, "length")],
)
def test_bad_data_arguments_name_the_argument(arguments, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        toy_memorisation_data(**arguments)


@pytest.mark.parametrize(
    "arguments, name",
    [({"steps": 0}, "steps"), ({"learning_rate": 0}, "learning_rate"), ({"learning_rate": "fast"}, "learning_rate"),
     ({"learning_rate": float("inf")}, "learning_rate"), ({"length": 0}, "length")],
)
def test_bad_model_arguments_name_the_argument(arguments, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        toy_memorised_model(**arguments)


def test_memorised_model_is_deterministic_and_its_data_matches():
    small = {"steps": 3, "n_forget": 2, "n_retain": 2, "length": 6}
    model, tokenizer, forget, retain = toy_memorised_model(seed=1, **small)
    again, _, forget_again, _ = toy_memorised_model(seed=1, **small)
    assert forget.to_list() == forget_again.to_list() == toy_memorisation_data(1, 2, 2, 6)[0].to_list()
    assert all((a == b).all() for a, b in zip(model.parameters(), again.parameters()))
    assert not model.training and len(tokenizer) == model.config.vocab_size


def test_smollm2_facts_are_question_answer_pairs():
    assert len(SMOLLM2_FACTS) >= 24 and len({question for question, _ in SMOLLM2_FACTS}) == len(SMOLLM2_FACTS)
    assert all(question.endswith("?") and answer.strip() for question, answer in SMOLLM2_FACTS)


@pytest.mark.slow
def test_memorised_model_reproduces_both_sets():
    from hf_robust.unlearning import evaluate_unlearning

    model, tokenizer, forget, retain = toy_memorised_model(seed=0)
    metrics = evaluate_unlearning(model, tokenizer, forget, retain, rouge_tokens="model")
    assert metrics.forget_nll < 0.05 and metrics.retain_nll < 0.05
    assert metrics.forget_exact_match == 1.0
    assert evaluate_unlearning(model, tokenizer, retain, rouge_tokens="model").forget_exact_match == 1.0


def test_toy_unlearn_config_settings(tmp_path):
    from hf_robust.unlearning.demo import TOY_UNLEARNING, toy_unlearn_config

    args = toy_unlearn_config(str(tmp_path), seed=2, smoothing="sam", rho=0.1, steps=7)
    assert (args.method, args.smoothing, args.rho, args.max_steps, args.seed) == ("npo", "sam", 0.1, 7, 2)
    assert args.beta == TOY_UNLEARNING["beta"] and args.use_cpu and not args.bf16 and args.report_to == []
    with pytest.raises(ValueError, match="max_lenght"):
        toy_unlearn_config(str(tmp_path), max_lenght=4)
    noisy = toy_unlearn_config(str(tmp_path), smoothing="rs", rs_sigma=1e-3, rs_samples=2)
    assert (noisy.smoothing, noisy.rs_sigma, noisy.rs_samples) == ("rs", 1e-3, 2)


def test_toy_relearning_experiment_measures_each_method_on_the_held_out_half():
    from hf_robust.unlearning.demo import toy_methods, toy_relearning_experiment

    result = toy_relearning_experiment(
        seed=0, memorise_steps=5, unlearning={"steps": 2}, relearning={"steps": 1}
    )
    for name in toy_methods():
        run = result[name]
        assert run["before"].forget_rows == run["after"].forget_rows == 8 and run["before"].retain_rows == 32
        assert run["recovery"] == pytest.approx(run["before"].forget_nll - run["after"].forget_nll)
    assert result["memorised"].forget_rows == 8
    # The memorised model is shared: both methods start from it, so they differ only by smoothing.
    assert result["npo"]["before"].forget_nll != result["npo+sam"]["before"].forget_nll
