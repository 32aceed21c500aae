"""craft_poison_passages with 2 clusters on a tiny sentence-transformer; reports the passages and how many attacks
this process ran (the clusters are split across processes, the results gathered to every process)."""

from accelerate import PartialState

import hf_robust.retrieval.gaslite as gaslite
from hf_robust.retrieval import GasliteConfig, craft_poison_passages
from hf_robust.testing import finish_distributed, save_rank_result, tiny_sentence_transformer

QUERIES = [
    "how is the weather today", "is it going to rain tomorrow", "what a nice sunny day", "the weather is cold",
    "where can i buy a new car", "how much does a used car cost",
]


def main() -> None:
    state = PartialState(cpu=True)
    model = tiny_sentence_transformer(seed=0)  # same seed: the same weights on every process
    attacks = []
    original = gaslite.gaslite_attack

    def counted(*args, **kwargs):
        attacks.append(kwargs.get("config", args[-1]).seed)
        return original(*args, **kwargs)

    gaslite.gaslite_attack = counted
    config = GasliteConfig(trigger_len=6, n_iters=3, n_grad=4, topk=32, n_candidates=16, n_flip=3, seed=3,
                           progress=False)
    results = craft_poison_passages(model, QUERIES, "Buy cheap shoes at our store", 2, config)
    save_rank_result({
        "num_processes": state.num_processes,
        "attack_seeds": attacks,
        "passages": [result.passage for result in results],
        "query_indices": [result.query_indices for result in results],
        "trigger_ids": [result.trigger_ids for result in results],
        "objectives": [result.objective for result in results],
    })


if __name__ == "__main__":
    main()
    finish_distributed()
