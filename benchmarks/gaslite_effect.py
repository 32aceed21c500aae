"""Does GASLITE put one adversarial passage in the top 10 of unseen concept queries, and do defenses stop it?

    python benchmarks/gaslite_effect.py                  # full default budget (GasliteConfig()); GPU-scale on CPU
    python benchmarks/gaslite_effect.py --quick          # tiny budget and corpus: a smoke test (< 2 min on CPU)
    python benchmarks/gaslite_effect.py --n_iters 8 --n_grad 10 --n_flip 5 --n_candidates 32   # reduced budget
    python benchmarks/gaslite_effect.py --output run.json    # also keep every passage and its metrics as JSON
    python benchmarks/gaslite_effect.py --reuse run.json     # searched passages of an earlier run; the rest anew

Setting: the real all-MiniLM-L6-v2 (cosine), the shipped corpus (Python Language Reference, 734 passages) and the
shipped concept "exceptions" (30 attack queries the attacker targets, 30 held-out queries measured), the default
attacker info (`DEFAULT_INFO`); `--corpus`, `--queries` and `--info` swap in your own (files as for `hf-robust
gaslite`, e.g. an MS MARCO-scale corpus, where a top-10 rank is much harder to reach). For 1 and 5 passages:

- GASLITE: `craft_poison_passages` (k-means on the attack queries for 5), `GasliteConfig()` defaults unless flags
  change them;
- HotFlip (Zhong et al. 2023, `hotflip_poison`): per cluster, a 50-token passage (the info, then a trigger filling
  the rest) searched for the same wall-clock as GASLITE took on that cluster (`time_limit`), twice: with GASLITE's
  token filter and round-trip rule (valid text), and on raw ids as Zhong et al. (`text_tokens=False`; the decoded
  text is what gets inserted and scored);
- query stuffing: per cluster, the info + that cluster's queries cut to GASLITE's trigger length;
- info-only: the info alone (one passage; five copies would rank the same);
- perfect centroid: not an attack but the GASLITE paper's upper bound, an embedding equal to each cluster's query
  centroid (the objective's maximum); on a small corpus it caps every ratio between attacks.

A what-if table then raises every clean passage's score by d (what a denser corpus does to the top-10 bar) and
re-ranks the same passages, to show whether a harder corpus would separate the attacks.

Every set of passages is scored on the held-out queries (appeared@1, appeared@10, MRR@10; ties count against the
attacker) and again after each defense, calibrated to remove 1% of the clean corpus:

- perplexity filter with SmolLM2-135M-Instruct (`load_smollm2()`; `--quick`: a tiny random causal LM);
- L2-norm filter: not applicable here (MiniLM is a cosine model: every embedding has norm 1); it is meant for dot
  models, and its path is tested on a tiny dot model in tests/test_defenses.py.

Target (issue 6): GASLITE with 1 passage reaches held-out appeared@10 >= 60% and >= 3x HotFlip's.
Prints tables; asserts nothing. Every number printed is measured in this run.
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tables import print_table  # noqa: E402 (benchmarks/ is on the path when run as a script)

QUICK = {"n_iters": 1, "n_grad": 4, "n_flip": 2, "n_candidates": 16, "topk": 32, "corpus_size": 100}



SEARCHED = ("GASLITE", "HotFlip (same wall-clock)", "HotFlip, raw ids (same wall-clock)")


def reused_passages(path, n_passages, config):
    """{attack: (passages, per-passage seconds)} of the searched attacks in an earlier `--output` file, checked
    against this run's settings."""
    import dataclasses
    import json

    with open(path, encoding="utf-8") as handle:
        earlier = json.load(handle)
    settings = {key: value for key, value in dataclasses.asdict(config).items() if key != "progress"}
    if {key: value for key, value in earlier["gaslite_config"].items() if key != "progress"} != settings:
        raise SystemExit(f"--reuse: {path} was made with {earlier['gaslite_config']}, not {settings}")
    reused = {}
    for record in earlier["results"]:
        if record["attack"] in SEARCHED and record["passages_budget"] == n_passages:
            seconds = record.get("passage_seconds") or [record["seconds"] / n_passages] * n_passages
            reused[record["attack"]] = (record["passages"], seconds)
    if "GASLITE" not in reused:
        raise SystemExit(f"--reuse: {path} has no GASLITE run with {n_passages} passage(s).")
    return reused


def craft(model, attack_queries, info, n_passages, config, reuse=None):
    """Passages of every attack for one budget: ({name: (passage texts, seconds, per-passage seconds)}, clusters)."""
    from hf_robust.retrieval.baselines import HotflipConfig, hotflip_poison, info_only, query_stuffing
    from hf_robust.retrieval.gaslite import cluster_queries, craft_poison_passages, target_embeddings

    start = time.perf_counter()
    reused = reused_passages(reuse, n_passages, config) if reuse else {}
    if reused:
        passages, seconds = reused["GASLITE"]
        clusters = cluster_queries(target_embeddings(model, attack_queries), n_passages, config.seed)
    else:
        gaslite = craft_poison_passages(model, attack_queries, info, n_passages, config)
        passages, seconds = [result.passage for result in gaslite], [result.seconds for result in gaslite]
        clusters = [result.query_indices for result in gaslite]
    attacks = {"GASLITE": (passages, sum(seconds) if reused else time.perf_counter() - start, seconds)}
    for name, text_tokens in ((SEARCHED[1], True), (SEARCHED[2], False)):
        if name in reused:
            attacks[name] = (reused[name][0], sum(reused[name][1]), reused[name][1])
            continue
        results = []
        for index, (indices, budget) in enumerate(zip(clusters, seconds)):
            hotflip_config = HotflipConfig(time_limit=budget, seed=config.seed + index, text_tokens=text_tokens,
                                           progress=config.progress)
            results.append(hotflip_poison(model, [attack_queries[query] for query in indices], info, hotflip_config))
        attacks[name] = ([r.passage for r in results], sum(r.seconds for r in results), [r.seconds for r in results])
    if reuse:
        print(f"[{n_passages} passage(s)] reused from {reuse}: {', '.join(reused)}")
    stuffing = [query_stuffing(model, [attack_queries[query] for query in indices], info, config.trigger_len)
                for indices in clusters]
    attacks["query stuffing"] = ([r.passage for r in stuffing], sum(r.seconds for r in stuffing),
                                 [r.seconds for r in stuffing])
    if n_passages == 1:
        only = info_only(model, attack_queries, info)
        attacks["info-only"] = ([only.passage], only.seconds, [only.seconds])
    for name, (passages, *_) in attacks.items():
        print(f"\n[{n_passages} passage(s)] {name}, first passage: {passages[0]!r}")
    return attacks, clusters


SHIFTS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.10)


def centroid_embeddings(model, attack_queries, clusters):
    """Tensor (clusters, dim): each cluster's query centroid, the embedding of the GASLITE paper's "perfect centroid"
    bound (no text has it; the objective's maximum on a cosine retriever such as MiniLM)."""
    import torch

    from hf_robust.retrieval.gaslite import target_embeddings
    from hf_robust.retrieval.objective import query_centroid

    targets = target_embeddings(model, attack_queries)
    return torch.stack([query_centroid(targets[indices]) for indices in clusters]).to(model.device)


def scores(model, corpus_embeddings, queries, adv_embeddings):
    """(clean scores (queries, corpus), adversarial scores (queries, passages)) in the model's similarity."""
    from hf_robust.retrieval.evaluate import encode_queries

    query_embeddings = encode_queries(model, queries)
    return model.similarity(query_embeddings, corpus_embeddings), model.similarity(query_embeddings, adv_embeddings)


def harder_corpus(clean, adv):
    """Appeared@10 when every clean score rises by each of SHIFTS: what a denser corpus does to the top-10 bar (a
    what-if on the same passages, not a new corpus)."""
    from hf_robust.retrieval.evaluate import report_from_scores

    return [f"{report_from_scores(clean + shift, adv, ks=(10,)).appeared_at[10]:.0%}" for shift in SHIFTS]


def write_results(path, config, device, results) -> None:
    """The crafted passages and their metrics as JSON (the passages can be re-scored later without a new search)."""
    import dataclasses
    import json

    records = [
        {"passages_budget": n_passages, "attack": name, "seconds": seconds, "passage_seconds": passage_seconds,
         "passages": passages, "held_out": held.to_dict(), "attack_split": seen.to_dict()}
        for (n_passages, name), (passages, seconds, passage_seconds, held, seen) in results.items()
    ]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"gaslite_config": dataclasses.asdict(config), "device": device, "results": records}, handle,
                  indent=2)
    print(f"passages and metrics written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_iters", type=int, default=None, help="GASLITE iterations (default: GasliteConfig())")
    parser.add_argument("--n_grad", type=int, default=None, help="GASLITE gradient rows (default: GasliteConfig())")
    parser.add_argument("--n_flip", type=int, default=None, help="GASLITE flipped positions (default: GasliteConfig())")
    parser.add_argument("--n_candidates", type=int, default=None,
                        help="GASLITE candidates per position (default: GasliteConfig())")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: tiny search budget {QUICK}, a tiny random LM for perplexity")
    parser.add_argument("--passages", type=lambda text: [int(n) for n in text.split(",")], default=[1, 5],
                        help="passage budgets, comma-separated (default 1,5)")
    parser.add_argument("--corpus", default="default",
                        help="'default' (shipped) or a file of passages, as `hf-robust gaslite --corpus`")
    parser.add_argument("--queries", default="default",
                        help="'default' (shipped concept) or a file of queries, as `hf-robust gaslite --queries`")
    parser.add_argument("--held_out_fraction", type=float, default=0.5, help="held-out share of a --queries file")
    parser.add_argument("--info", default=None, help="the attacker's message (default: the shipped concept's)")
    parser.add_argument("--corpus_size", type=int, default=None, help="first N corpus passages (default: all)")
    parser.add_argument("--device", default=None, help="torch device for both models (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="tqdm bars of the searches (on stderr)")
    parser.add_argument("--output", default=None,
                        help="also write every passage and its held-out/attack-split metrics to this JSON file")
    parser.add_argument("--reuse", default=None,
                        help="take the GASLITE passages (and their seconds, HotFlip's budget) from an --output file of "
                        "an earlier run with the same settings instead of searching again")
    options = parser.parse_args()

    import torch

    from hf_robust.defenses import PerplexityFilter
    from hf_robust.retrieval.command import GasliteScriptArguments, load_corpus_and_queries
    from hf_robust.retrieval.evaluate import encode_corpus, evaluate_poisoning, report_from_scores
    from hf_robust.retrieval.gaslite import GasliteConfig
    from hf_robust.testing import load_minilm, load_smollm2, tiny_causal_lm

    if options.threads:
        torch.set_num_threads(options.threads)
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    budget = {key: value for key, value in QUICK.items() if key != "corpus_size"} if options.quick else {}
    for name in ("n_iters", "n_grad", "n_flip", "n_candidates"):
        if getattr(options, name) is not None:
            budget[name] = getattr(options, name)
    config = GasliteConfig(seed=options.seed, progress=options.progress, **budget)
    corpus_size = options.corpus_size or (QUICK["corpus_size"] if options.quick else None)
    data = GasliteScriptArguments(corpus=options.corpus, queries=options.queries, info=options.info,
                                  held_out_fraction=options.held_out_fraction)
    corpus, attack_queries, held_out, info = load_corpus_and_queries(data)
    corpus = corpus[:corpus_size]

    model = load_minilm(device)
    start = time.perf_counter()
    corpus_embeddings = encode_corpus(model, corpus)
    print(f"MiniLM on {device}, {torch.get_num_threads()} threads; corpus {len(corpus)} passages encoded in "
          f"{time.perf_counter() - start:.0f} s; {len(attack_queries)} attack / {len(held_out)} held-out queries")
    print(f"GASLITE: {config}")
    print(f"info: {info!r}")

    results, bounds, shifted = {}, {}, {}
    for n_passages in options.passages:
        attacks, clusters = craft(model, attack_queries, info, n_passages, config, options.reuse)
        for name, (passages, seconds, passage_seconds) in attacks.items():
            held = evaluate_poisoning(model, corpus, held_out, passages, corpus_embeddings=corpus_embeddings)
            seen = evaluate_poisoning(model, corpus, attack_queries, passages, corpus_embeddings=corpus_embeddings)
            results[n_passages, name] = (passages, seconds, passage_seconds, held, seen)
        bound = centroid_embeddings(model, attack_queries, clusters)
        held_scores = scores(model, corpus_embeddings, held_out, bound)
        bounds[n_passages] = [report_from_scores(*held_scores),
                              report_from_scores(*scores(model, corpus_embeddings, attack_queries, bound))]
        shifted[n_passages, "perfect centroid (upper bound)"] = harder_corpus(*held_scores)
        for name, (passages, *_) in attacks.items():
            shifted[n_passages, name] = harder_corpus(
                *scores(model, corpus_embeddings, held_out, encode_corpus(model, passages)))

    print("\nHeld-out queries (attack-split appeared@10 for reference)")
    rows = []
    for (n_passages, name), (_, seconds, _, held, seen) in results.items():
        rows.append([name, str(n_passages), f"{seconds:.0f}", f"{held.appeared_at[1]:.0%}",
                     f"{held.appeared_at[10]:.0%}", f"{held.mrr_at_10:.3f}", f"{seen.appeared_at[10]:.0%}"])
    for n_passages, (held, seen) in bounds.items():
        rows.append(["perfect centroid (upper bound, not a text)", str(n_passages), "-", f"{held.appeared_at[1]:.0%}",
                     f"{held.appeared_at[10]:.0%}", f"{held.mrr_at_10:.3f}", f"{seen.appeared_at[10]:.0%}"])
    print_table(["attack", "passages", "seconds", "appeared@1", "appeared@10", "MRR@10", "attack-split @10"], rows)

    print("\nHarder-corpus what-if: held-out appeared@10 when every clean passage's score rises by d (a denser "
          "corpus raises the top-10 bar; same passages)")
    print_table(["attack", "passages", *(f"d = {shift:.2f}" for shift in SHIFTS)],
                [[name, str(n_passages), *cells] for (n_passages, name), cells in shifted.items()])

    if options.output:
        write_results(options.output, config, device, results)

    if 1 in options.passages:
        gaslite = results[1, "GASLITE"][3].appeared_at[10]
        ceiling = bounds[1][0].appeared_at[10]
        for name in SEARCHED[1:]:
            hotflip = results[1, name][3].appeared_at[10]
            ratio = float("inf") if hotflip == 0 else gaslite / hotflip
            met = gaslite >= 0.6 and (gaslite >= 3 * hotflip)
            print(f"\nTarget: GASLITE 1 passage held-out appeared@10 >= 60% and >= 3x {name}: {gaslite:.0%} vs "
                  f"{hotflip:.0%} ({ratio:.2f}x) -> {'met' if met else 'NOT met'}"
                  + (" (quick budget: not a measurement of the target)" if options.quick or budget else ""))
            print(f"  the perfect centroid reaches {ceiling:.0%}, so no passage is more than "
                  f"{ceiling / hotflip if hotflip else float('inf'):.2f}x this baseline here")

    if options.quick:
        language_model, tokenizer = tiny_causal_lm(seed=options.seed)
        lm_name = "tiny random llama (quick)"
    else:
        language_model, tokenizer = load_smollm2()
        lm_name = "SmolLM2-135M-Instruct"
    language_model.to(device)
    defense = PerplexityFilter(language_model, tokenizer, clean_quantile=0.99, batch_size=32)
    start = time.perf_counter()
    defense.fit(corpus)
    print(f"\nPerplexity filter ({lm_name}), threshold {defense.threshold:.1f} = 99th percentile of the clean corpus "
          f"(fitted in {time.perf_counter() - start:.0f} s)")
    rows = []
    for (n_passages, name), (passages, _, _, held, _) in results.items():
        after = evaluate_poisoning(model, corpus, held_out, passages, corpus_embeddings=corpus_embeddings,
                                   defense=defense)
        perplexities = defense.perplexity(passages)
        rows.append([name, str(n_passages), f"{perplexities.median():.0f}",
                     f"{sum(after.adv_removed)}/{len(passages)}", f"{after.clean_removed_fraction:.1%}",
                     f"{held.appeared_at[10]:.0%} -> {after.appeared_at[10]:.0%}",
                     f"{held.mrr_at_10:.3f} -> {after.mrr_at_10:.3f}"])
    print_table(["attack", "passages", "median perplexity", "passages removed", "clean removed",
                 "held-out appeared@10", "MRR@10"], rows)
    print("\nL2-norm filter: not applicable to MiniLM (cosine similarity, every embedding has norm 1); it is for dot "
          "models (path tested on a tiny dot model in tests/test_defenses.py).")


if __name__ == "__main__":
    main()
