"""The GASLITE section of `hf-robust demo`: one adversarial passage against the real all-MiniLM-L6-v2.

The attacker knows half of the shipped concept's queries ("exceptions", questions on Python error handling) and
writes one passage: the default misleading advice plus a 30-token trigger, with a reduced search budget so that the
section fits in about two minutes of CPU. The passage is inserted into the shipped corpus (Python Language
Reference prose) and measured on the other half of the queries, which the attacker never saw.
"""

from .gaslite import GasliteConfig

DEMO_CONFIG = GasliteConfig(trigger_len=30, n_iters=8, n_grad=10, n_flip=5, n_candidates=32, progress=False)
SHOWN_QUERIES = 2


def _top10(scores, corpus: list[str], adversarial: str | None) -> list[str]:
    import torch

    texts = corpus + ([adversarial] if adversarial is not None else [])
    # Ties go to the clean passage, as in `evaluate_poisoning`: the adversarial one is last and the sort is stable.
    order = torch.sort(scores, descending=True, stable=True).indices[:10].tolist()
    lines = []
    for rank, index in enumerate(order, start=1):
        marker = ">>" if index == len(corpus) else "  "
        text = texts[index]
        lines.append(f"  {marker}{rank:2d}. {scores[index]:.3f}  {text[:88]}{'...' if len(text) > 88 else ''}")
    return lines


def gaslite_demo_section(config: GasliteConfig = DEMO_CONFIG) -> dict[str, float]:
    """Print the top-10 of two held-out queries before and after inserting the passage, and appeared@10.

    Returns:
        {"appeared_at_10_before": info-only passage, "appeared_at_10_after": GASLITE passage} on the held-out queries.
    """
    import torch

    from ..testing import load_minilm
    from .baselines import info_only
    from .data import DEFAULT_INFO, concept_queries, default_corpus
    from .evaluate import encode_corpus, encode_queries, evaluate_poisoning
    from .gaslite import gaslite_attack

    model = load_minilm("cpu")
    corpus, attack, held_out = default_corpus(), concept_queries("attack"), concept_queries("held_out")
    corpus_embeddings = encode_corpus(model, corpus)
    before = evaluate_poisoning(model, corpus, held_out, [info_only(model, attack, DEFAULT_INFO).passage],
                                corpus_embeddings=corpus_embeddings)
    result = gaslite_attack(model, attack, DEFAULT_INFO, config)
    after = evaluate_poisoning(model, corpus, held_out, [result.passage], corpus_embeddings=corpus_embeddings)

    print(f"all-MiniLM-L6-v2, {len(corpus)} passages of the Python Language Reference; concept 'exceptions': "
          f"{len(attack)} queries known to the attacker, {len(held_out)} held out")
    print(f"GASLITE ({result.iterations} iterations, {result.stop_reason}; L = {config.trigger_len}, "
          f"{result.seconds:.0f} s): similarity to the query centroid {result.objective_history[0]:.3f} -> "
          f"{result.objective:.3f}")
    print(f"adversarial passage: {result.passage!r}")
    shown = held_out[:SHOWN_QUERIES]
    query_embeddings = encode_queries(model, shown)
    adversarial_embedding = encode_corpus(model, [result.passage])
    with torch.no_grad():
        clean_scores = model.similarity(query_embeddings, corpus_embeddings)
        attacked_scores = model.similarity(query_embeddings, torch.cat([corpus_embeddings, adversarial_embedding]))
    for row, query in enumerate(shown):
        print(f"\nheld-out query {query!r}\n top-10 before:")
        print("\n".join(_top10(clean_scores[row], corpus, None)))
        print(" top-10 after inserting the passage (>>):")
        print("\n".join(_top10(attacked_scores[row], corpus, result.passage)))
    print(f"\nheld-out appeared@10: {before.appeared_at[10]:.0%} (the info text alone) -> {after.appeared_at[10]:.0%} "
          f"(GASLITE passage); MRR@10 {before.mrr_at_10:.3f} -> {after.mrr_at_10:.3f}")
    return {"appeared_at_10_before": before.appeared_at[10], "appeared_at_10_after": after.appeared_at[10]}
