import csv
import json
from collections import Counter

import pytest

from hf_robust.evaluation import BENIGN_REQUESTS, HARMFUL_WORDS, RefusalJudge, load_benign
from hf_robust.evaluation.benign import COLUMNS, KINDS, harmful_words_in


@pytest.fixture(scope="module")
def benign():
    return load_benign()


def test_builtin_requests_are_many_distinct_and_of_every_kind(benign):
    assert tuple(benign.column_names) == COLUMNS
    assert len(benign) == len(BENIGN_REQUESTS) >= 160
    assert len({prompt.strip().lower() for prompt in benign["prompt"]}) == len(benign)
    assert set(benign["kind"]) == set(KINDS) == {"homonym", "howto", "writing", "knowledge", "coding", "advice",
                                                 "math"}
    assert min(Counter(benign["kind"]).values()) >= 15
    assert all(prompt == prompt.strip() and prompt[-1] in ".?" for prompt in benign["prompt"])


def test_the_first_rows_cover_every_kind():
    assert {kind for _, kind in BENIGN_REQUESTS[: len(KINDS)]} == set(KINDS)


def test_no_request_reads_as_a_refusal(benign):
    judge = RefusalJudge()
    assert [prompt for prompt in benign["prompt"] if judge.refused(prompt)] == []


def test_homonyms_and_only_homonyms_contain_a_harmful_word(benign):
    for prompt, kind in zip(benign["prompt"], benign["kind"]):
        found = harmful_words_in(prompt)
        assert bool(found) == (kind == "homonym"), (prompt, kind, found)
        assert all(any(found_word.lower().startswith(word) for word in HARMFUL_WORDS) for found_word in found)


@pytest.mark.parametrize("text, words", [
    ("How do I kill a zombie process?", ["kill"]),
    ("Killing time and a killer app", ["Killing", "killer"]),
    ("Which plants are poisonous?", ["poisonous"]),
    ("How do I break into acting or blow up a balloon?", ["break into", "blow up"]),
    ("What skills does a hacksaw need?", []),
])
def test_harmful_words_match_whole_words_with_suffixes(text, words):
    assert harmful_words_in(text) == words


def test_harmful_words_in_rejects_non_text():
    with pytest.raises(TypeError, match="`text`"):
        harmful_words_in(None)


def test_split_is_fixed_disjoint_and_complete(benign):
    train, test = load_benign("train"), load_benign("test")
    assert len(test) == round(len(benign) * 0.3) and len(train) + len(test) == len(benign)
    assert load_benign("test")["prompt"] == test["prompt"] and load_benign("train")["kind"] == train["kind"]
    assert set(train["prompt"]).isdisjoint(test["prompt"])
    assert set(train["prompt"]) | set(test["prompt"]) == set(benign["prompt"])
    assert load_benign("test", seed=1)["prompt"] != test["prompt"]
    assert len(load_benign("test", test_fraction=0.5)) == round(len(benign) * 0.5)


def test_split_matches_the_behaviour_loader(tmp_path):
    # The same hash ranking as `load_behaviours`: one file read by both loaders holds out the same rows.
    from hf_robust.evaluation import load_behaviours

    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Request {index}", "target": "Sure"}) + "\n"
                            for index in range(30)))
    for seed in (0, 3):
        assert (load_benign("test", source=path, seed=seed)["prompt"]
                == load_behaviours(path, split="test", seed=seed, test_fraction=0.3)["prompt"])


def test_csv_and_jsonl_and_json_files_load(tmp_path):
    rows = [{"prompt": "How do I bake bread?", "kind": "howto"}, {"prompt": "What is 2 plus 2?", "kind": ""}]
    with open(tmp_path / "requests.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "kind"])
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "requests.json").write_text(json.dumps(rows))
    for name in ("requests.csv", "requests.jsonl", "requests.json"):
        loaded = load_benign(source=str(tmp_path / name))
        assert loaded["prompt"] == [row["prompt"] for row in rows] and loaded["kind"] == ["howto", ""]
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "Why is grass green?", "extra": 1}) + "\n")
    loaded = load_benign(source=tmp_path / "prompts.jsonl")
    assert loaded.column_names == ["prompt", "kind"] and loaded["kind"] == [""]


def test_a_file_without_prompts_names_the_column(tmp_path):
    path = tmp_path / "requests.csv"
    path.write_text("question,kind\nHow?,howto\n")
    with pytest.raises(ValueError, match=r"column 'prompt'; found \['question', 'kind'\]"):
        load_benign(source=path)
    path.write_text("prompt,kind\n ,howto\n")
    with pytest.raises(ValueError, match="Request 0 needs a non-empty string in 'prompt'"):
        load_benign(source=path)
    (tmp_path / "kind.jsonl").write_text(json.dumps({"prompt": "Why?", "kind": 3}) + "\n")
    with pytest.raises(ValueError, match="Request 0 needs"):
        load_benign(source=tmp_path / "kind.jsonl")


@pytest.mark.parametrize("source, message", [
    ("missing.csv", "not an existing .csv/.jsonl/.json file. Allowed: 'builtin'"),
    ("advbench", "not an existing .csv/.jsonl/.json file"),
    ("", "`source` must be 'builtin' or a path"),
    (None, "`source` must be 'builtin' or a path"),
])
def test_bad_source_is_named(source, message):
    with pytest.raises(ValueError, match=message):
        load_benign(source=source)


def test_a_directory_an_unsupported_or_an_empty_file_is_rejected(tmp_path):
    (tmp_path / "requests.parquet").write_text("")
    for source in (tmp_path, tmp_path / "requests.parquet"):
        with pytest.raises(ValueError, match="not an existing .csv/.jsonl/.json file"):
            load_benign(source=source)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no requests"):
        load_benign(source=tmp_path / "empty.jsonl")
    (tmp_path / "object.json").write_text('{"prompt": "x"}')
    with pytest.raises(ValueError, match="must hold one object per"):
        load_benign(source=tmp_path / "object.json")


@pytest.mark.parametrize("arguments, name", [
    ({"split": "validation"}, "`split`"),
    ({"split": "all"}, "`split`"),
    ({"seed": 1.5}, "`seed`"),
    ({"seed": "0"}, "`seed`"),
    ({"seed": True}, "`seed`"),
    ({"test_fraction": 0}, "`test_fraction`"),
    ({"test_fraction": 1.0}, "`test_fraction`"),
    ({"test_fraction": "0.3"}, "`test_fraction`"),
])
def test_bad_split_arguments_are_named(arguments, name):
    with pytest.raises(ValueError, match=name):
        load_benign(**arguments)


def test_an_empty_split_is_an_error(tmp_path):
    (tmp_path / "one.jsonl").write_text(json.dumps({"prompt": "Why?"}) + "\n")
    assert len(load_benign("train", source=tmp_path / "one.jsonl")) == 1
    with pytest.raises(ValueError, match="`split` 'test' is empty"):
        load_benign("test", source=tmp_path / "one.jsonl")
