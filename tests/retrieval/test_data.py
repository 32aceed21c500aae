import json
from importlib import resources

import pytest

from hf_robust.retrieval.data import (
    DEFAULT_CONCEPT,
    DEFAULT_INFO,
    SPLITS,
    concept_queries,
    corpus_records,
    default_corpus,
)


def test_data_files_are_package_resources():
    folder = resources.files("hf_robust.retrieval") / "data"
    for name in ("corpus.jsonl", "concept_exceptions.json", "README.md"):
        assert (folder / name).is_file(), name


def test_corpus_is_real_prose_of_bounded_passages():
    corpus = default_corpus()
    assert 300 <= len(corpus) <= 3000
    assert len(set(corpus)) == len(corpus), "passages must be unique"
    for text in corpus:
        assert 30 <= len(text.split()) <= 150
        assert text == " ".join(text.split()), "whitespace must be normalised"
        assert "::=" not in text and ">>>" not in text
    total_bytes = sum(len(json.dumps(record)) for record in corpus_records())
    assert total_bytes < 1_500_000


def test_corpus_records_carry_topic_titles_and_unique_ids():
    from pydoc_data.topics import topics

    records = corpus_records()
    assert [record["text"] for record in records] == default_corpus()
    assert len({record["id"] for record in records}) == len(records)
    assert {record["title"] for record in records} <= set(topics)
    # The concept has genuinely relevant passages in the corpus.
    titles = [record["title"] for record in records]
    assert min(titles.count("try"), titles.count("exceptions"), titles.count("raise")) >= 3


def test_results_are_fresh_copies():
    corpus = default_corpus()
    corpus.clear()
    assert default_corpus()
    records = corpus_records()
    records[0]["text"] = "changed"
    assert corpus_records()[0]["text"] != "changed"
    queries = concept_queries("attack")
    queries.append("extra")
    assert "extra" not in concept_queries("attack")


def test_concept_splits_are_disjoint_halves():
    attack, held_out, every = (concept_queries(split) for split in ("attack", "held_out", "all"))
    assert len(every) >= 40 and len(attack) == len(held_out) == len(every) // 2
    assert attack + held_out == every
    assert not set(attack) & set(held_out)
    assert len(set(every)) == len(every)
    assert concept_queries() == attack
    assert all(isinstance(query, str) and query.strip() for query in every)
    assert SPLITS == ("attack", "held_out", "all")


def test_default_concept_and_info():
    assert DEFAULT_CONCEPT == "exceptions"
    assert isinstance(DEFAULT_INFO, str) and len(DEFAULT_INFO.split()) >= 5
    assert DEFAULT_INFO not in default_corpus()


@pytest.mark.parametrize("split", ["train", "", "ATTACK", None, 1])
def test_bad_split(split):
    with pytest.raises(ValueError, match="split must be one of"):
        concept_queries(split)
