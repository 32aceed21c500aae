import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_robust import cli
from hf_robust.retrieval.command import GasliteScriptArguments, load_corpus_and_queries, make_parser
from hf_robust.retrieval.data import DEFAULT_INFO, concept_queries, default_corpus
from hf_robust.retrieval.evaluate import evaluate_poisoning
from hf_robust.testing import tiny_sentence_transformer

REPO = Path(__file__).resolve().parents[2]
FAST = ["--n_iters", "2", "--n_grad", "4", "--topk", "16", "--n_candidates", "8", "--n_flip", "3",
        "--trigger_len", "5", "--progress", "false"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gaslite")
    tiny_sentence_transformer().save(str(folder / "model"))
    corpus = [f"the {word} of the garden is green and quiet number {i}" for i, word in
              enumerate(["door", "tree", "path", "wall", "gate", "pond", "bench", "stone"])]
    queries = [f"where is the {word} in the garden" for word in ["door", "tree", "path", "wall", "gate", "pond"]]
    (folder / "corpus.txt").write_text("\n".join(corpus))
    (folder / "queries.jsonl").write_text("\n".join(json.dumps({"query": query}) for query in queries))
    return {"model": str(folder / "model"), "corpus": str(folder / "corpus.txt"),
            "queries": str(folder / "queries.jsonl"), "corpus_texts": corpus, "query_texts": queries}


def test_recipe_parses_with_the_default_budget():
    args, config = make_parser().parse_args_and_config(["--config", str(REPO / "recipes" / "gaslite_minilm.yaml")])
    assert (config.trigger_len, config.n_iters, config.n_grad, config.topk, config.n_candidates, config.n_flip) == (
        30, 100, 50, 256, 128, 20)
    assert (args.model_name_or_path, args.corpus, args.queries, args.n_passages) == ("minilm", "default", "default", 1)
    assert args.defenses == ["perplexity"] and args.perplexity_model == "smollm2"


def test_early_stop_and_prompt_flags_parse():
    args, config = make_parser().parse_args_and_config(
        ["--patience", "3", "--min_delta", "0.002", "--document_prompt", "passage: ", "--query_prompt", "query: "])
    assert (config.patience, config.min_delta, config.document_prompt, config.query_prompt) == (
        3, 0.002, "passage: ", "query: ")
    _, config = make_parser().parse_args_and_config(["--patience", "0"])
    assert config.patience == 0 and config.search_config().patience == 0  # off: all n_iters
    with pytest.raises(ValueError, match="min_delta"):
        make_parser().parse_args_and_config(["--min_delta", "-1"])


def test_default_data_uses_the_shipped_split_and_info():
    corpus, attack, held_out, info = load_corpus_and_queries(GasliteScriptArguments())
    assert corpus == default_corpus() and info == DEFAULT_INFO
    assert attack == concept_queries("attack") and held_out == concept_queries("held_out")


def test_query_file_is_split_by_the_held_out_fraction(files):
    args = GasliteScriptArguments(corpus=files["corpus"], queries=files["queries"], held_out_fraction=0.34,
                                  info="visit the garden shop")
    corpus, attack, held_out, info = load_corpus_and_queries(args)
    assert corpus == files["corpus_texts"] and info == "visit the garden shop"
    assert attack == files["query_texts"][:4] and held_out == files["query_texts"][4:]


def test_gaslite_command_writes_passages_and_reports(tmp_path, files):
    output = tmp_path / "out"
    argv = ["gaslite", "--model_name_or_path", files["model"], "--corpus", files["corpus"], "--queries",
            files["queries"], "--info", "visit the garden shop", "--n_passages", "2", "--output_dir", str(output),
            "--defenses", "norm", *FAST]
    assert cli.main(argv) == 0
    written = json.loads((output / "gaslite.json").read_text())
    assert len(written["passages"]) == 2 and written["config"]["n_iters"] == 2
    for passage in written["passages"]:
        assert len(passage["objective_history"]) == passage["iterations"] + 1 == 3
        assert passage["objective_history"][-1] == passage["objective"]
        assert len(passage["iteration_seconds"]) == 2 and passage["stop_reason"] == "n_iters"
    covered = sorted(index for passage in written["passages"] for index in passage["query_indices"])
    assert covered == [0, 1, 2]  # the 3 attack queries, each in one cluster
    assert set(written["reports"]) == {"gaslite", "info_only", "gaslite + norm_filter", "info_only + norm_filter"}
    # The report is what evaluate_poisoning gives for the written passages on the held-out queries.
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(files["model"], device="cpu")
    expected = evaluate_poisoning(model, files["corpus_texts"], files["query_texts"][3:],
                                  [passage["passage"] for passage in written["passages"]])
    assert written["reports"]["gaslite"]["held_out"]["ranks"] == expected.ranks
    assert written["reports"]["gaslite + norm_filter"]["held_out"]["defense_name"] == "norm_filter"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n_passages", "0"], "n_passages"),
        (["--defenses", "paraphrase"], "defenses"),
        (["--defenses", "perplexity"], "perplexity_model"),
        (["--held_out_fraction", "1.5"], "held_out_fraction"),
    ],
)
def test_bad_arguments_are_refused_naming_them(extra, message):
    with pytest.raises(ValueError, match=message):
        make_parser().parse_args_and_config(extra)


def test_too_many_passages_for_the_attack_queries_is_refused(tmp_path, files):
    argv = ["gaslite", "--model_name_or_path", files["model"], "--corpus", files["corpus"], "--queries",
            files["queries"], "--n_passages", "5", "--output_dir", str(tmp_path), *FAST]
    with pytest.raises(ValueError, match="n_passages"):
        cli.main(argv)
    assert not (tmp_path / "gaslite.json").exists()


@pytest.mark.distributed
def test_gaslite_command_on_two_processes_writes_the_one_process_passages(tmp_path, files):
    common = ["--model_name_or_path", files["model"], "--corpus", files["corpus"], "--queries", files["queries"],
              "--info", "visit the garden shop", "--n_passages", "2", "--use_cpu", "true", *FAST]
    outputs = {}
    for processes in (1, 2):
        output = tmp_path / f"out{processes}"
        launch = ["--accelerate_config", "cpu_ddp", "--num_processes", "2"] if processes == 2 else []
        completed = subprocess.run(
            [sys.executable, "-m", "hf_robust.cli", "gaslite", *common, "--output_dir", str(output), *launch],
            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        outputs[processes] = json.loads((output / "gaslite.json").read_text())
    for one, two in zip(outputs[1]["passages"], outputs[2]["passages"], strict=True):
        timing = {"seconds": None, "iteration_seconds": None}
        assert {**one, **timing} == {**two, **timing}  # wall-clock times differ, nothing else
    assert outputs[2]["reports"] == outputs[1]["reports"]
