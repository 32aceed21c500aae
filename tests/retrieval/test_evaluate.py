import pytest
import torch

from hf_robust.retrieval.evaluate import (
    PoisoningReport,
    encode_corpus,
    encode_queries,
    evaluate_poisoning,
    report_from_scores,
)
from hf_robust.testing import tiny_sentence_transformer


class LookupModel:
    """A retriever with chosen embeddings: text -> vector, dot-product similarity, so every score is known exactly."""

    prompts: dict = {}

    def __init__(self, vectors: dict[str, tuple[float, ...]]):
        self.vectors = vectors
        self.encoded = 0

    def encode(self, texts, prompt=None, prompt_name=None, batch_size=64, convert_to_tensor=True):
        self.encoded += len(texts)
        return torch.tensor([self.vectors[text] for text in texts], dtype=torch.float32)

    def similarity(self, a, b):
        return a @ b.T


class RemoveTexts:
    """A defense that removes the listed texts."""

    name = "remove_texts"

    def __init__(self, removed):
        self.removed = set(removed)

    def keep(self, passages, embeddings):
        return torch.tensor([text not in self.removed for text in passages])


# Query q0 scores corpus passage c_i as i, query q1 as 4 - i (exact small integers, so ties are exact).
CORPUS = [f"c{i}" for i in range(5)]
VECTORS = {
    "q0": (1.0, 0.0),
    "q1": (0.0, 1.0),
    **{f"c{i}": (float(i), float(4 - i)) for i in range(5)},
    "tie": (2.0, 10.0),  # q0: ties c2, below c3 and c4 -> rank 3; q1: beats all -> rank 0
    "loser": (-1.0, -1.0),  # below every corpus passage for both queries -> rank 5
    "top_tie": (4.0, 0.0),  # q0: ties the top passage c4 -> rank 1, not 0; q1: ties c0 -> rank 5
}


def evaluate(adv, ks=(1, 3, 4, 5, 10), **kwargs):
    return evaluate_poisoning(LookupModel(VECTORS), CORPUS, ["q0", "q1"], adv, ks, **kwargs)


def test_ties_count_against_the_attacker():
    report = evaluate(["tie"])
    assert report.ranks == [3, 0]
    assert report.appeared_at == {1: 0.5, 3: 0.5, 4: 1.0, 5: 1.0, 10: 1.0}
    assert report.mrr_at_10 == pytest.approx((1 / 4 + 1) / 2)
    top = evaluate(["top_tie"])
    assert top.ranks == [1, 5]
    assert top.appeared_at[1] == 0.0


def test_passage_losing_to_everything_ranks_corpus_size():
    report = evaluate(["loser"])
    assert report.ranks == [len(CORPUS)] * 2
    assert report.appeared_at == {1: 0.0, 3: 0.0, 4: 0.0, 5: 0.0, 10: 1.0}  # 6th of 6: inside a top 10
    assert report.mrr_at_10 == pytest.approx(1 / 6)
    corpus = [f"p{i}" for i in range(12)]
    vectors = {"q": (1.0,), "loser": (-1.0,), **{f"p{i}": (float(i),) for i in range(12)}}
    large = evaluate_poisoning(LookupModel(vectors), corpus, ["q"], ["loser"], ks=(10, 12, 13))
    assert large.ranks == [12] and large.mrr_at_10 == 0.0 and large.appeared_at == {10: 0.0, 12: 0.0, 13: 1.0}
    assert report.n_queries == 2 and report.n_corpus == 5
    assert report.defense_name is None and report.clean_removed_fraction is None and report.adv_removed is None


def test_several_passages_take_the_minimum_rank():
    report = evaluate(["loser", "top_tie", "tie"])
    assert report.ranks == [1, 0]
    assert report.best_passage == [1, 2]
    # Order of the adversarial passages changes which index is best, not the ranks.
    assert evaluate(["tie", "top_tie", "loser"]).ranks == [1, 0]


def test_mrr_at_10_cutoff():
    corpus = [f"p{i}" for i in range(12)]
    vectors = {"q": (1.0,), **{f"p{i}": (float(i),) for i in range(12)}, "a9": (2.5,), "a10": (1.5,)}
    model = LookupModel(vectors)
    nine = evaluate_poisoning(model, corpus, ["q"], ["a9"], ks=(9, 10))
    assert nine.ranks == [9] and nine.mrr_at_10 == pytest.approx(0.1) and nine.appeared_at == {9: 0.0, 10: 1.0}
    ten = evaluate_poisoning(model, corpus, ["q"], ["a10"], ks=(10, 11))
    assert ten.ranks == [10] and ten.mrr_at_10 == 0.0 and ten.appeared_at == {10: 0.0, 11: 1.0}


def test_defense_filters_corpus_and_adversarial_passages():
    report = evaluate(["tie", "loser"], defense=RemoveTexts({"c3", "c4"}))
    assert report.ranks == [1, 0]  # q0: only c2 (a tie) is left above "tie"
    assert report.n_corpus == 3
    assert report.clean_removed_fraction == pytest.approx(0.4)
    assert report.adv_removed == [False, False] and report.defense_name == "remove_texts"
    removed = evaluate(["tie", "loser"], defense=RemoveTexts({"tie"}))
    assert removed.adv_removed == [True, False]
    assert removed.ranks == [5, 5] and removed.best_passage == [1, 1] and removed.clean_removed_fraction == 0.0


def test_defense_removing_every_adversarial_passage():
    report = evaluate(["tie", "top_tie"], defense=RemoveTexts({"tie", "top_tie", "c1", "c2", "c3", "c4"}))
    assert report.ranks == [1, 1]  # the size of the surviving corpus
    assert report.best_passage == [-1, -1]
    # Never appears, though fewer than k clean passages survive.
    assert report.appeared_at == {1: 0.0, 3: 0.0, 4: 0.0, 5: 0.0, 10: 0.0} and report.mrr_at_10 == 0.0


def test_defense_without_threshold_is_fitted_on_the_clean_corpus():
    class Calibrated(RemoveTexts):
        threshold = None

        def fit(self, passages, embeddings):
            self.fitted_on = (list(passages), embeddings.shape)
            self.threshold = 1.0

    defense = Calibrated({"c0"})
    evaluate(["tie"], defense=defense)
    assert defense.fitted_on == (CORPUS, (5, 2))
    defense.fitted_on = None
    evaluate(["tie"], defense=defense)  # a threshold is set: not fitted again
    assert defense.fitted_on is None


def test_report_to_dict_is_json_ready():
    import json

    values = evaluate(["tie"], defense=RemoveTexts({"c4"})).to_dict()
    assert json.loads(json.dumps(values)) == values
    assert values["appeared_at"]["1"] == 0.5 and values["adv_removed"] == [False]


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_tiny_sentence_transformer_matches_manual_ranks(similarity):
    model = tiny_sentence_transformer(similarity=similarity, prompts={"query": "query: ", "passage": "passage: "})
    corpus = [f"passage number {i} about the river and the {word}" for i, word in enumerate("abcdefghijkl")]
    queries = ["the river", "number three", "a question about words", "the b"]
    adv = ["the river the river", "number"]
    report = evaluate_poisoning(model, corpus, queries, adv, ks=(1, 3, 10))
    query_embeddings = model.encode(queries, prompt="query: ", convert_to_tensor=True)
    corpus_embeddings = model.encode(corpus, prompt="passage: ", convert_to_tensor=True)
    corpus_scores = model.similarity(query_embeddings, corpus_embeddings)
    adv_scores = model.similarity(query_embeddings, model.encode(adv, prompt="passage: ", convert_to_tensor=True))
    expected = (corpus_scores[:, None, :] >= adv_scores[:, :, None]).sum(-1).min(dim=1).values
    assert report.ranks == expected.tolist()
    assert report.appeared_at[3] == pytest.approx((expected < 3).double().mean().item())
    # Precomputed corpus embeddings give the identical report, and the corpus is not encoded again.
    embeddings = encode_corpus(model, corpus)
    assert embeddings.shape == (len(corpus), 32)
    assert torch.allclose(embeddings, model.encode(corpus, prompt="passage: ", convert_to_tensor=True), atol=1e-6)
    assert evaluate_poisoning(model, corpus, queries, adv, ks=(1, 3, 10), corpus_embeddings=embeddings) == report


def test_corpus_embeddings_are_not_recomputed():
    model = LookupModel(VECTORS)
    embeddings = encode_corpus(model, CORPUS)
    model.encoded = 0
    evaluate_poisoning(model, CORPUS, ["q0", "q1"], ["tie"], corpus_embeddings=embeddings)
    assert model.encoded == 3  # the two queries and the one adversarial passage


def test_bad_inputs():
    model = LookupModel(VECTORS)
    with pytest.raises(ValueError, match="`corpus` must not be empty"):
        evaluate_poisoning(model, [], ["q0"], ["tie"])
    with pytest.raises(ValueError, match="`queries` must not be empty"):
        evaluate_poisoning(model, CORPUS, [], ["tie"])
    with pytest.raises(ValueError, match="`adv_passages` must not be empty"):
        evaluate_poisoning(model, CORPUS, ["q0"], [])
    with pytest.raises(TypeError, match="`adv_passages` must be a list of strings"):
        evaluate_poisoning(model, CORPUS, ["q0"], "tie")
    with pytest.raises(TypeError, match="`queries` must be a list of strings"):
        evaluate_poisoning(model, CORPUS, [1], ["tie"])
    for ks in [(), (0,), (1, -5), (True,), (1.5,), 10, "10"]:
        with pytest.raises(ValueError, match="`ks` must be"):
            evaluate_poisoning(model, CORPUS, ["q0"], ["tie"], ks=ks)
    for embeddings in [torch.zeros(4, 2), torch.zeros(5, 3), torch.zeros(5), [[0.0, 0.0]] * 5]:
        with pytest.raises(ValueError, match="`corpus_embeddings` must be a tensor of shape"):
            evaluate_poisoning(model, CORPUS, ["q0"], ["tie"], corpus_embeddings=embeddings)
    with pytest.raises(TypeError, match="`defense` must have a keep"):
        evaluate_poisoning(model, CORPUS, ["q0"], ["tie"], defense=object())

    class WrongShape(RemoveTexts):
        def keep(self, passages, embeddings):
            return torch.ones(len(passages) + 1, dtype=torch.bool)

    with pytest.raises(ValueError, match="keep must return a BoolTensor"):
        evaluate_poisoning(model, CORPUS, ["q0"], ["tie"], defense=WrongShape(()))
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        evaluate_poisoning(model, CORPUS, ["q0"], ["tie"], batch_size=0)
    with pytest.raises(ValueError, match="`corpus` must not be empty"):
        encode_corpus(model, [])
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        encode_corpus(model, CORPUS, batch_size=0)
    with pytest.raises(TypeError, match="`queries` must be a list of strings"):
        encode_queries(model, "q0")
    with pytest.raises(TypeError, match="`prompt`"):
        encode_corpus(model, CORPUS, prompt=1)
    with pytest.raises(TypeError, match="`prompt`"):
        encode_queries(model, ["q0"], prompt=["query: "])
    for name in ("document_prompt", "query_prompt"):
        with pytest.raises(TypeError, match=f"`{name}`"):
            evaluate_poisoning(model, CORPUS, ["q0"], ["tie"], **{name: 0})


def scores(texts):
    vectors = torch.tensor([VECTORS[text] for text in texts])
    return torch.tensor([VECTORS["q0"], VECTORS["q1"]]) @ vectors.T


def test_report_from_scores_is_the_rule_of_evaluate_poisoning():
    for adv in (["tie"], ["loser", "top_tie", "tie"], ["top_tie"]):
        assert report_from_scores(scores(CORPUS), scores(adv), (1, 3, 4, 5, 10)) == evaluate(adv)
    # A removed adversarial passage never appears; with none left a query's rank is the corpus size.
    kept = report_from_scores(scores(CORPUS), scores(["tie", "loser"]), keep_adv=torch.tensor([False, True]))
    assert kept.ranks == [5, 5] and kept.best_passage == [1, 1]
    gone = report_from_scores(scores(CORPUS), scores(["tie"]), (1, 10), keep_adv=torch.tensor([False]))
    assert gone.best_passage == [-1, -1] and gone.appeared_at == {1: 0.0, 10: 0.0} and gone.mrr_at_10 == 0.0
    assert gone.n_queries == 2 and gone.n_corpus == 5 and gone.defense_name is None


def test_report_from_scores_bad_inputs():
    for clean, adv in [(scores(CORPUS), scores(["tie"])[:1]), (scores(CORPUS)[0], scores(["tie"])),
                       (scores(CORPUS), torch.zeros(2, 0)), ([[1.0]], [[1.0]])]:
        with pytest.raises(ValueError, match="`clean_scores` \\(m, n\\) and `adv_scores`"):
            report_from_scores(clean, adv)
    for keep in [torch.tensor([1]), torch.tensor([True, False]), [True]]:
        with pytest.raises(ValueError, match="`keep_adv` must be a BoolTensor of shape \\(1,\\)"):
            report_from_scores(scores(CORPUS), scores(["tie"]), keep_adv=keep)
    with pytest.raises(ValueError, match="`ks` must be"):
        report_from_scores(scores(CORPUS), scores(["tie"]), ks=(0,))


def test_report_type():
    assert isinstance(evaluate(["tie"]), PoisoningReport)


@pytest.mark.real
def test_minilm_shipped_concept_info_only_absent_and_query_text_on_top():
    from hf_robust.retrieval.data import DEFAULT_INFO, concept_queries, default_corpus
    from hf_robust.testing import load_minilm

    model = load_minilm("cpu")
    corpus, held_out = default_corpus(), concept_queries("held_out")
    embeddings = encode_corpus(model, corpus)
    info_only = evaluate_poisoning(model, corpus, held_out, [DEFAULT_INFO], corpus_embeddings=embeddings)
    assert info_only.appeared_at[10] == 0.0
    own_text = evaluate_poisoning(model, corpus, held_out[:5], held_out[:5], corpus_embeddings=embeddings)
    assert own_text.ranks == [0] * 5 and own_text.best_passage == list(range(5))
