"""Tests for hf_robust.hub.card: robustness cards round-trip through model-index."""

import pytest
from huggingface_hub import ModelCard

from hf_robust.hub import build_robustness_card, robustness_results_from_card

from .common import PAPER, RENAMED_ADVBENCH, canonical, make_results


def test_card_round_trips_results_through_model_index():
    results = make_results()
    card = build_robustness_card(
        results, method="cat", model_name="owner/robust-llama", base_model="meta-llama/Llama-3.2-1B",
        tags=["adversarial-training"], paper=PAPER, datasets=["walledai/AdvBench"],
    )
    text = str(card)
    parsed = ModelCard(text)

    assert "\nmodel-index:\n" in text.split("\n---\n")[0]
    assert parsed.data.model_name == "owner/robust-llama"
    assert parsed.data.tags[:2] == ["hf-robust", "cat"] and "adversarial-training" in parsed.data.tags
    assert parsed.data.base_model == "meta-llama/Llama-3.2-1B"
    assert parsed.data.library_name == "transformers"
    assert parsed.data.datasets == ["walledai/AdvBench"]

    expected = {(r.task, r.dataset_type, r.dataset, r.split, r.metric, r.value, r.attack) for r in results}
    found = {
        (e.task_type, e.dataset_type, e.dataset_name, e.dataset_split, e.metric_type, e.metric_value, e.metric_config)
        for e in parsed.data.eval_results
    }
    assert found == expected
    gcg = next(e for e in parsed.data.eval_results if e.metric_config == "gcg")
    assert gcg.metric_args == {"steps": 250, "search_width": 512, "top_k": [256], "filter": {"ascii_only": True}}
    embedding = next(e for e in parsed.data.eval_results if e.metric_config == "embedding_attack")
    assert embedding.metric_args == {"preset": "strong", "epsilon": 0.05, "norm": "l2"}
    assert embedding.metric_name == "attack_success_rate under embedding_attack (strong)"
    assert canonical(robustness_results_from_card(text)) == canonical(results)

    body = parsed.text
    assert "| gcg | attack_success_rate | 0.125 | AdvBench | test | - |" in body
    assert "| embedding_attack | attack_success_rate | 0.3333 | AdvBench | test | strong |" in body
    assert "`epsilon=0.05`" in body
    assert "AutoModelForCausalLM.from_pretrained(\"owner/robust-llama\")" in body
    assert "https://huggingface.co/papers/2405.15589" in body and "@article{xhonneux2024efficient" in body


@pytest.mark.parametrize(
    ("library_name", "loader"),
    [
        ("transformers", "AutoModelForCausalLM"),
        ("peft", "AutoPeftModelForCausalLM"),
        ("sentence-transformers", "SentenceTransformer(\"me/model\")"),
        ("diffusers", "CLIPTextModel.from_pretrained(\"me/model\", subfolder=\"text_encoder\")"),
    ],
)
def test_card_usage_matches_library(library_name, loader):
    card = build_robustness_card(make_results(), method="npo", model_name="me/model", library_name=library_name)
    assert loader in card.text
    assert card.data.library_name == library_name
    assert "## Citation" not in card.text


@pytest.mark.parametrize(
    ("changes", "error", "name"),
    [
        ({"results": []}, ValueError, "results"),
        ({"results": make_results()[0]}, TypeError, "results"),
        ({"results": [{"attack": "gcg"}]}, TypeError, "results"),
        ({"results": [make_results()[0], RENAMED_ADVBENCH]}, ValueError, "results"),
        ({"method": ""}, ValueError, "method"),
        ({"method": None}, TypeError, "method"),
        ({"model_name": ""}, ValueError, "model_name"),
        ({"library_name": "timm"}, ValueError, "library_name"),
        ({"tags": "robust"}, TypeError, "tags"),
        ({"tags": ["ok", 1]}, TypeError, "tags"),
        ({"paper": "2405.15589"}, TypeError, "paper"),
        ({"paper": {"title": "T", "arxiv": "1"}}, ValueError, "paper"),
        ({"paper": {"id": "2405.15589"}}, TypeError, "paper"),
        ({"datasets": 3}, TypeError, "datasets"),
        ({"base_model": ""}, ValueError, "base_model"),
    ],
)
def test_build_card_rejects_bad_input(changes, error, name):
    arguments = {"results": make_results(), "method": "cat", "model_name": "me/model", **changes}
    with pytest.raises(error, match=f"`{name}"):
        build_robustness_card(**arguments)
