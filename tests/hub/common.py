"""Results and a paper shared by the hub tests."""

from hf_robust.hub import RobustnessResult

PAPER = {
    "title": "Efficient Adversarial Training in LLMs with Continuous Attacks",
    "id": "2405.15589",
    "citation": "@article{xhonneux2024efficient,\n    title = {Efficient Adversarial Training in LLMs},\n}",
}


# Same dataset type and split as make_results()[0] under another name: model-index would keep only one name.
RENAMED_ADVBENCH = RobustnessResult(
    "gcg", "asr", 0.1, "AdvBench copy", dataset_type="walledai/AdvBench", split="test"
)


def make_results():
    """Several results: two attacks on one dataset split (grouped in model-index), a second dataset, odd settings."""
    return [
        RobustnessResult(
            attack="gcg",
            metric="attack_success_rate",
            value=0.125,
            dataset="AdvBench",
            dataset_type="walledai/AdvBench",
            split="test",
            attack_config={"steps": 250, "search_width": 512, "top_k": (256,), "filter": {"ascii_only": True}},
        ),
        RobustnessResult(
            attack="embedding_attack", metric="attack_success_rate", value=1 / 3, dataset="AdvBench",
            dataset_type="walledai/AdvBench", split="test", attack_config={"epsilon": 0.05, "norm": "l2"},
            attack_preset="strong",
        ),
        RobustnessResult(attack="relearning", metric="forget_nll", value=2, dataset="WMDP bio"),
    ]


def canonical(results):
    """model-index groups results by (task, dataset, split), so compare independent of order."""
    return sorted(results, key=repr)
