import pytest
import torch
from datasets import Dataset
from rouge_score import rouge_scorer

from hf_robust.testing import tiny_causal_lm
from hf_robust.unlearning.metrics import (
    UnlearningMetrics,
    evaluate_unlearning,
    forget_retain_nll,
    min_k_percent,
    multiple_choice_accuracy,
    multiple_choice_prompts,
    sequence_nll,
    verbatim_from_ids,
    verbatim_memorisation,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Mix the flour and water.",
]
QUESTIONS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "Berlin", "a dog", "bread"], "answer": 0},
    {"question": "Which one is better?", "choices": ["the red one", "the blue one"], "answer": 1},
    {"question": "How do I bake bread?", "choices": ["Mix the flour", "Check the battery", "Yes"], "answer": 2},
]


@pytest.fixture(scope="module")
def tiny():
    return tiny_causal_lm("llama", seed=0)


@pytest.fixture(scope="module")
def memorising():
    """A tiny LM fitted to the first two texts until it reproduces them (about 40 full-batch Adam steps)."""
    model, tokenizer = tiny_causal_lm("llama", seed=1)
    ids = [tokenizer(text)["input_ids"] for text in TEXTS[:2]]
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.random.fork_rng(devices=[]):
        for _ in range(40):
            model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return model.eval(), tokenizer


def own_loss(model, ids, start=1):
    """The model's own `outputs.loss` on `ids` with labels from position `start` (-100 before it)."""
    input_ids = torch.tensor([ids])
    labels = input_ids.clone()
    labels[0, :start] = -100
    with torch.no_grad():
        return model(input_ids=input_ids, labels=labels).loss


def test_sequence_nll_is_the_models_own_loss_of_each_sequence(tiny):
    model, tokenizer = tiny
    values = sequence_nll(model, tokenizer, TEXTS, batch_size=2)  # a padded batch and a batch of one
    expected = torch.stack([own_loss(model, tokenizer(text)["input_ids"]) for text in TEXTS])
    assert values.shape == (3,) and values.dtype == torch.float32
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)
    # The same numbers from token ids (no tokenizer needed), a Dataset of texts and a Dataset of ids.
    ids = [tokenizer(text)["input_ids"] for text in TEXTS]
    for tokenizer_or_none, rows in [
        (None, ids), (tokenizer, Dataset.from_dict({"text": TEXTS})), (None, Dataset.from_dict({"input_ids": ids}))
    ]:  # fmt: skip
        torch.testing.assert_close(sequence_nll(model, tokenizer_or_none, rows), values, atol=1e-5, rtol=1e-5)
    # Truncation keeps the first max_length tokens.
    torch.testing.assert_close(sequence_nll(model, None, [ids[0]], max_length=5), own_loss(model, ids[0][:5])[None])
    split = forget_retain_nll(model, tokenizer, TEXTS[:1], TEXTS[1:])
    assert split["forget_nll"] == pytest.approx(float(values[0]), abs=1e-5)
    assert split["retain_nll"] == pytest.approx(float(values[1:].mean()), abs=1e-5)


def test_min_k_percent_is_the_mean_of_the_lowest_token_log_probs(tiny):
    model, tokenizer = tiny
    for k in (0.2, 0.5):
        scores = min_k_percent(model, tokenizer, TEXTS, k=k)
        for text, score in zip(TEXTS, scores):
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            with torch.no_grad():
                log_probs = torch.log_softmax(model(ids).logits[0, :-1], dim=-1).gather(-1, ids[0, 1:, None])[:, 0]
            lowest = sorted(log_probs.tolist())[: max(1, int(k * len(log_probs)))]
            assert float(score) == pytest.approx(sum(lowest) / len(lowest), abs=1e-5)
    # k = 1 averages every token: minus the NLL.
    torch.testing.assert_close(min_k_percent(model, tokenizer, TEXTS, k=1.0), -sequence_nll(model, tokenizer, TEXTS))


def test_verbatim_memorisation_scores_greedy_continuations_with_rouge_score(memorising):
    model, tokenizer = memorising
    result = verbatim_memorisation(
        model, tokenizer, ["The quick brown fox", "What is the capital"], [" jumps over the lazy dog.", " of Spain?"]
    )
    # The memorised sentence comes back word for word; the second reference is not what the model says.
    assert result.generations[0] == " jumps over the lazy dog."
    assert result.rouge_l_per_example[0] == 1.0
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    direct = scorer.score(" of Spain?", result.generations[1])["rougeL"].fmeasure
    assert result.rouge_l_per_example[1] == pytest.approx(direct) and direct < 1
    assert result.rouge_l == pytest.approx((1.0 + direct) / 2)
    assert result.exact_match == 0.5
    # ROUGE-L of "jumps over the lazy cat" against "jumps over the lazy dog": LCS 4 of 5 words each way.
    partial = verbatim_memorisation(model, tokenizer, ["The quick brown fox"], [" jumps over the lazy cat"])
    assert partial.rouge_l == pytest.approx(0.8) and partial.exact_match == 0.0
    recall = verbatim_memorisation(model, tokenizer, ["The quick brown fox"], [" jumps over"], rouge_measure="recall")
    assert recall.rouge_l == 1.0 and recall.exact_match == 1.0


def test_verbatim_on_ids_counts_exact_match_and_token_accuracy(tiny):
    model, tokenizer = tiny
    prefix = tokenizer("Hello! How can I")["input_ids"]
    with torch.no_grad():
        greedy = model.generate(torch.tensor([prefix]), max_new_tokens=6, do_sample=False)[0, len(prefix) :].tolist()
    assert len(greedy) == 6
    wrong = greedy[:4] + [1 if token == 0 else 0 for token in greedy[4:]]  # two ordinary tokens changed
    result = verbatim_from_ids(model, tokenizer, [prefix, prefix], [greedy, wrong], rouge_tokens="model")
    assert result.exact_match == 0.5
    assert result.token_accuracy == 10 / 12
    assert result.rouge_l_per_example[0] == 1.0  # identical token strings, scored on the model's tokens


@pytest.mark.parametrize("scoring", ["letter", "choice"])
def test_multiple_choice_picks_the_most_likely_continuation(tiny, scoring):
    model, tokenizer = tiny
    best = []
    for row in QUESTIONS:
        context, continuations = multiple_choice_prompts(row["question"], row["choices"], scoring)
        context_ids = tokenizer(context)["input_ids"]
        totals = []
        for continuation in continuations:
            continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            mean_nll = own_loss(model, context_ids + continuation_ids, start=len(context_ids))
            totals.append(-float(mean_nll) * len(continuation_ids))
        best.append(max(range(len(totals)), key=totals.__getitem__))
    if scoring == "letter":
        assert multiple_choice_prompts("Q?", ["x", "y"], "letter") == ("Q?\nA. x\nB. y\nAnswer:", [" A", " B"])
    # Right where the answer is the most likely choice, wrong elsewhere: accuracy 2/3.
    answers = [best[0], best[1], (best[2] + 1) % 3]
    rows = [{**row, "answer": answer} for row, answer in zip(QUESTIONS, answers)]
    assert multiple_choice_accuracy(model, tokenizer, rows, scoring=scoring) == pytest.approx(2 / 3)
    as_dataset = multiple_choice_accuracy(model, tokenizer, Dataset.from_list(rows), scoring=scoring, batch_size=1)
    assert as_dataset == pytest.approx(2 / 3)


def test_evaluate_unlearning_gathers_the_metrics(memorising):
    model, tokenizer = memorising
    metrics = evaluate_unlearning(
        model, tokenizer, TEXTS[:2], TEXTS[2:], mc_questions=QUESTIONS[:1], max_new_tokens=64
    )
    assert isinstance(metrics, UnlearningMetrics)
    assert metrics.forget_nll == pytest.approx(float(sequence_nll(model, tokenizer, TEXTS[:2]).mean()), abs=1e-5)
    assert metrics.retain_nll == pytest.approx(float(sequence_nll(model, tokenizer, TEXTS[2:]).mean()), abs=1e-5)
    assert metrics.forget_min_k == pytest.approx(float(min_k_percent(model, tokenizer, TEXTS[:2]).mean()), abs=1e-5)
    assert metrics.retain_min_k == pytest.approx(float(min_k_percent(model, tokenizer, TEXTS[2:]).mean()), abs=1e-5)
    # Memorised rows: the second half of each comes back exactly from its first half.
    assert (metrics.forget_rouge_l, metrics.forget_exact_match, metrics.forget_token_accuracy) == (1.0, 1.0, 1.0)
    assert metrics.forget_nll < 1 < metrics.retain_nll
    assert metrics.mc_accuracy in (0.0, 1.0) and (metrics.forget_rows, metrics.retain_rows) == (2, 1)
    plain = evaluate_unlearning(model, tokenizer, TEXTS[:2])
    assert plain.retain_nll is None and plain.mc_accuracy is None
    assert set(plain.as_dict()) == {
        "forget_nll", "forget_rouge_l", "forget_exact_match", "forget_token_accuracy", "forget_min_k", "forget_rows"
    }  # fmt: skip


def test_metrics_leave_the_model_as_it_was(tiny):
    model, tokenizer = tiny
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back as it was
    modes = [module.training for module in model.modules()]
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    model.lm_head.weight.grad = torch.ones_like(model.lm_head.weight)
    try:
        evaluate_unlearning(model, tokenizer, TEXTS[:2], TEXTS[2:], mc_questions=QUESTIONS[:1], max_new_tokens=4)
        assert [module.training for module in model.modules()] == modes
        for name, parameter in model.named_parameters():
            assert torch.equal(parameter, before[name]), name
            if name != "lm_head.weight":
                assert parameter.grad is None, name
        assert torch.equal(model.lm_head.weight.grad, torch.ones_like(model.lm_head.weight))
    finally:
        model.lm_head.weight.grad = None
        model.eval()


def test_bad_inputs_name_the_argument(tiny):
    model, tokenizer = tiny
    with pytest.raises(TypeError, match="texts_or_ids"):
        sequence_nll(model, tokenizer, "one string")
    with pytest.raises(ValueError, match="texts_or_ids.*empty"):
        sequence_nll(model, tokenizer, [])
    with pytest.raises(ValueError, match=r"texts_or_ids\[1\].*1 token"):
        sequence_nll(model, None, [[1, 2, 3], [4]])
    with pytest.raises(ValueError, match="tokenizer"):
        sequence_nll(model, None, TEXTS)
    with pytest.raises(ValueError, match="'text' or 'input_ids'"):
        sequence_nll(model, tokenizer, Dataset.from_dict({"prompt": TEXTS}))
    with pytest.raises(TypeError, match=r"texts_or_ids\[1\]"):
        sequence_nll(model, tokenizer, ["text", 3])
    with pytest.raises(ValueError, match="batch_size"):
        sequence_nll(model, tokenizer, TEXTS, batch_size=0)
    with pytest.raises(ValueError, match="`k`"):
        min_k_percent(model, tokenizer, TEXTS, k=0)
    with pytest.raises(ValueError, match="continuations"):
        verbatim_memorisation(model, tokenizer, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="rouge_tokens"):
        verbatim_memorisation(model, tokenizer, ["a"], ["b"], rouge_tokens="chars")
    with pytest.raises(ValueError, match=r"questions\[0\]\['answer'\]"):
        multiple_choice_accuracy(model, tokenizer, [{**QUESTIONS[0], "answer": 4}])
    with pytest.raises(ValueError, match=r"questions\[0\]\['choices'\]"):
        multiple_choice_accuracy(model, tokenizer, [{**QUESTIONS[0], "choices": ["only one"]}])
    with pytest.raises(ValueError, match="scoring"):
        multiple_choice_accuracy(model, tokenizer, QUESTIONS, scoring="best")
    with pytest.raises(TypeError, match="forget"):
        evaluate_unlearning(model, tokenizer, {"text": TEXTS})
    with pytest.raises(ValueError, match="prefix_fraction"):
        evaluate_unlearning(model, tokenizer, TEXTS, prefix_fraction=1.0)
