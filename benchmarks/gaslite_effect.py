"""Does GASLITE put one adversarial passage in the top 10 of unseen concept queries, how fast, and do defenses stop it?

    python benchmarks/gaslite_effect.py                  # default budget (GasliteConfig(), early stop on)
    python benchmarks/gaslite_effect.py --quick          # tiny budget and corpus: a smoke test (< 2 min on CPU)
    python benchmarks/gaslite_effect.py --n_iters 8 --n_grad 10 --n_flip 5 --n_candidates 32   # reduced budget
    python benchmarks/gaslite_effect.py --passages 1 --curves --results benchmarks/results/gaslite_early_stop_cpu
    python benchmarks/gaslite_effect.py --output run.json    # also keep every passage and its metrics as JSON
    python benchmarks/gaslite_effect.py --reuse run.json     # searched passages of an earlier run; the rest anew

Check 4 of issue 15 (early stop reaches the 100-iteration held-out appeared@10 within 3 points in <= 1/5 of the
time), side by side in one run; about 40 min for GASLITE alone on 2 CPU cores, so HotFlip is capped:

    python benchmarks/gaslite_effect.py --passages 1 --curves --hotflip_seconds 300 --no_defenses \\
        --results benchmarks/results/gaslite_early_stop_100_cpu

Setting: the real all-MiniLM-L6-v2 (cosine), the shipped corpus (Python Language Reference, 734 passages) and the
shipped concept "exceptions" (30 attack queries the attacker targets, 30 held-out queries measured), the default
attacker info (`DEFAULT_INFO`); `--corpus`, `--queries` and `--info` swap in your own (files as for `hf-robust
gaslite`). For 1 and 5 passages:

- GASLITE: `craft_poison_passages` (k-means on the attack queries for 5), `GasliteConfig()` unless flags change it
  (early stop: `--patience`, `--min_delta`);
- HotFlip (Zhong et al. 2023, `hotflip_poison`): per cluster, a 50-token passage (the info, then a trigger filling
  the rest) searched for the same wall-clock as GASLITE took on that cluster (`time_limit`; `--hotflip_seconds` caps
  it), twice: with GASLITE's token filter and round-trip rule (valid text), and on raw ids as Zhong et al.
  (`text_tokens=False`; the decoded text is what gets inserted and scored);
- query stuffing: per cluster, the info + that cluster's queries cut to GASLITE's trigger length;
- info-only: the info alone (one passage; five copies would rank the same);
- query centroid (a reference point, not a text and not a bound): an embedding equal to each cluster's query
  centroid, the point GASLITE's objective aims at. It is the objective's maximum only for cosine retrievers (for dot
  retrievers a longer embedding scores higher), and no bound on held-out appeared@k: a passage can rank above it for
  queries that lie away from the centroid.

`--curves` (1 passage): GASLITE searches WITHOUT early stop (to `--n_iters` / `--time_limit`), and the table of the
patience rule is read off that one trajectory (early stop only truncates a search: same seed, same passages), with
held-out appeared@1/@10 and MRR@10 against seconds for GASLITE (with and without early stop) and both HotFlips, as
a table and a PNG. A what-if table raises every clean passage's score by d (what a denser corpus does to the top-10
bar) and re-ranks the same passages. Every set of passages is scored on the held-out queries (appeared@1,
appeared@10, MRR@10; ties count against the attacker) and again after a perplexity filter (SmolLM2-135M-Instruct;
`--quick`: a tiny random causal LM) calibrated to remove 1% of the clean corpus; the L2-norm filter is for dot models
(MiniLM is cosine) and is tested in tests/test_defenses.py.

Target (issue 6): GASLITE with 1 passage reaches held-out appeared@10 >= 60% and >= 3x HotFlip's.
Prints tables; asserts nothing. Every number printed is measured in this run (or read from `--reuse`, said so).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gaslite_curves as curves  # noqa: E402 (benchmarks/ is on the path when run as a script)
from tables import print_table  # noqa: E402

QUICK = {"n_iters": 1, "n_grad": 4, "n_flip": 2, "n_candidates": 16, "topk": 32, "corpus_size": 100}
SEARCHED = ("GASLITE", "HotFlip (same wall-clock)", "HotFlip, raw ids (same wall-clock)")
REFERENCE = "query centroid (reference point, not a text)"
SHIFTS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.10)


def settings_of(config) -> dict:
    """The settings that decide a search (min_delta is moot without patience)."""
    settings = dataclasses.asdict(config)
    settings.pop("progress", None)
    if not settings.get("patience"):
        settings.pop("min_delta", None)
    return settings


def reused_results(path, n_passages, config):
    """{attack: [GasliteResult-like records]} of the searched attacks in an earlier `--output` file, checked against
    this run's settings."""
    from hf_robust.retrieval.gaslite import GasliteResult

    with open(path, encoding="utf-8") as handle:
        earlier = json.load(handle)
    made = settings_of(type(config)(**earlier["gaslite_config"]))
    if made != settings_of(config):
        raise SystemExit(f"--reuse: {path} was made with {made}, not {settings_of(config)}")
    reused = {}
    for record in earlier["results"]:
        if record["attack"] in SEARCHED and record["passages_budget"] == n_passages:
            runs = record.get("runs") or [{} for _ in record["passages"]]
            reused[record["attack"]] = [
                GasliteResult(passage=text, trigger="", trigger_ids=None, ids=None, trigger_positions=None,
                              objective=run.get("objective_history", [float("nan")])[-1],
                              objective_history=run.get("objective_history", []), iterations=run.get("iterations", 0),
                              seconds=seconds, iteration_seconds=run.get("iteration_seconds", []),
                              stop_reason=run.get("stop_reason", "?"), passage_history=run.get("passage_history", []))
                for text, seconds, run in zip(record["passages"], record["passage_seconds"], runs)]
    if "GASLITE" not in reused:
        raise SystemExit(f"--reuse: {path} has no GASLITE run with {n_passages} passage(s).")
    return reused


def craft(model, attack_queries, info, n_passages, config, options):
    """Results of every attack for one budget: ({name: [GasliteResult per passage]}, {name: seconds}, clusters)."""
    from hf_robust.retrieval.baselines import HotflipConfig, hotflip_poison, info_only, query_stuffing
    from hf_robust.retrieval.gaslite import cluster_queries, craft_poison_passages, target_embeddings

    prompts = {"document_prompt": config.document_prompt, "query_prompt": config.query_prompt}
    reused = reused_results(options.reuse, n_passages, config) if options.reuse else {}
    start = time.perf_counter()
    if reused:
        gaslite = reused["GASLITE"]
        clusters = cluster_queries(target_embeddings(model, attack_queries, config.query_prompt), n_passages,
                                   config.seed)
        print(f"[{n_passages} passage(s)] reused from {options.reuse}: {', '.join(reused)}")
    else:
        gaslite = craft_poison_passages(model, attack_queries, info, n_passages, config)
        clusters = [result.query_indices for result in gaslite]
    results = {"GASLITE": gaslite}
    seconds = {"GASLITE": sum(r.seconds for r in gaslite) if reused else time.perf_counter() - start}
    for name, text_tokens in ((SEARCHED[1], True), (SEARCHED[2], False)) if not options.gaslite_only else ():
        if name in reused and (reused[name][0].passage_history or not options.curves):
            results[name] = reused[name]
        else:
            results[name] = []
            for index, (indices, own) in enumerate(zip(clusters, gaslite)):
                budget = min(own.seconds, options.hotflip_seconds or own.seconds)
                hotflip_config = HotflipConfig(time_limit=budget, seed=config.seed + index, text_tokens=text_tokens,
                                               progress=config.progress, **prompts)
                results[name].append(hotflip_poison(model, [attack_queries[q] for q in indices], info,
                                                    hotflip_config))
        seconds[name] = sum(r.seconds for r in results[name])
    results["query stuffing"] = [query_stuffing(model, [attack_queries[q] for q in indices], info, config.trigger_len,
                                                **prompts) for indices in clusters]
    if n_passages == 1:
        results["info-only"] = [info_only(model, attack_queries, info, **prompts)]
    for name in ("query stuffing", "info-only"):
        if name in results:
            seconds[name] = sum(r.seconds for r in results[name])
    for name, runs in results.items():
        print(f"\n[{n_passages} passage(s)] {name}, first passage ({runs[0].iterations} iterations, "
              f"{runs[0].stop_reason}): {runs[0].passage!r}")
    return results, seconds, clusters


def centroid_embeddings(model, attack_queries, clusters, query_prompt):
    """Tensor (clusters, dim): each cluster's query centroid (the reference point; see the module docstring)."""
    import torch

    from hf_robust.retrieval.gaslite import target_embeddings
    from hf_robust.retrieval.objective import query_centroid

    targets = target_embeddings(model, attack_queries, query_prompt)
    return torch.stack([query_centroid(targets[indices]) for indices in clusters]).to(model.device)


def scores(model, corpus_embeddings, queries, adv_embeddings, query_prompt):
    """(clean scores (queries, corpus), adversarial scores (queries, passages)) in the model's similarity."""
    from hf_robust.retrieval.evaluate import encode_queries

    query_embeddings = encode_queries(model, queries, prompt=query_prompt)
    return model.similarity(query_embeddings, corpus_embeddings), model.similarity(query_embeddings, adv_embeddings)


def harder_corpus(clean, adv):
    """Appeared@10 when every clean score rises by each of SHIFTS (a what-if on the same passages)."""
    from hf_robust.retrieval.evaluate import report_from_scores

    return [f"{report_from_scores(clean + shift, adv, ks=(10,)).appeared_at[10]:.0%}" for shift in SHIFTS]


def run_record(result, keep_history: bool) -> dict:
    record = {"objective_history": result.objective_history, "iteration_seconds": result.iteration_seconds,
              "seconds": result.seconds, "stop_reason": result.stop_reason, "iterations": result.iterations}
    if keep_history:
        record["passage_history"] = result.passage_history
    return record


def write_results(path, config, device, results, extra) -> None:
    """Every passage, its metrics, and per passage the objective history and per-iteration seconds, as JSON."""
    records = [
        {"passages_budget": n_passages, "attack": name, "seconds": seconds,
         "passage_seconds": [r.seconds for r in runs], "passages": [r.passage for r in runs],
         "runs": [run_record(r, keep_history=r.iterations <= 1000) for r in runs],
         "held_out": held.to_dict(), "attack_split": seen.to_dict()}
        for (n_passages, name), (runs, seconds, held, seen) in results.items()
    ]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"gaslite_config": dataclasses.asdict(config), "device": device, "results": records, **extra},
                  handle, indent=1)
    print(f"passages and metrics written to {path}")


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("n_iters", "n_grad", "n_flip", "n_candidates", "patience"):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"GASLITE {name} (default: GasliteConfig())")
    parser.add_argument("--min_delta", type=float, default=None, help="GASLITE min_delta (default: GasliteConfig())")
    parser.add_argument("--time_limit", type=float, default=None, help="GASLITE seconds per passage (default: none)")
    parser.add_argument("--hotflip_seconds", type=float, default=None,
                        help="cap on HotFlip's per-passage budget (default: GASLITE's seconds on that passage)")
    parser.add_argument("--curves", action="store_true",
                        help="1 passage: GASLITE without early stop, the patience table read off its trajectory, "
                        "time-to-quality table and PNG")
    parser.add_argument("--no_defenses", action="store_true", help="skip the perplexity-filter table")
    parser.add_argument("--gaslite_only", action="store_true",
                        help="no HotFlip: e.g. to record a GASLITE trajectory that a later run --reuse-s")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: tiny search budget {QUICK}, a tiny random LM for perplexity")
    parser.add_argument("--passages", type=lambda text: [int(n) for n in text.split(",")], default=[1, 5],
                        help="passage budgets, comma-separated (default 1,5)")
    parser.add_argument("--corpus", default="default", help="'default' (shipped) or a file of passages")
    parser.add_argument("--queries", default="default", help="'default' (shipped concept) or a file of queries")
    parser.add_argument("--held_out_fraction", type=float, default=0.5, help="held-out share of a --queries file")
    parser.add_argument("--info", default=None, help="the attacker's message (default: the shipped concept's)")
    parser.add_argument("--corpus_size", type=int, default=None, help="first N corpus passages (default: all)")
    parser.add_argument("--device", default=None, help="torch device for both models (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="tqdm bars of the searches (on stderr)")
    parser.add_argument("--output", default=None, help="write every passage and its metrics to this JSON file")
    parser.add_argument("--results", default=None,
                        help="write <results>.json, <results>.md (the printed tables) and, with --curves, "
                        "<results>.png (time to quality); with several passages, <results>_<N>passages.png (each "
                        "search's objective against seconds)")
    parser.add_argument("--reuse", default=None,
                        help="take the searched passages (with histories) from an --output/--results JSON of an "
                        "earlier run with the same GASLITE settings instead of searching again")
    return parser.parse_args(argv)


class Tee:
    """stdout also written to a file (the markdown record of a run)."""

    def __init__(self, file):
        self.file, self.stdout = file, sys.stdout

    def write(self, text):
        self.stdout.write(text)
        self.file.write(text)

    def flush(self):
        self.stdout.flush()
        self.file.flush()


def main(argv=None) -> None:
    options = parse(argv)
    if not options.results:
        return run(options, argv)
    with open(options.results + ".md", "w", encoding="utf-8") as record:
        stdout, sys.stdout = sys.stdout, Tee(record)
        try:
            run(options, argv)
        finally:
            sys.stdout = stdout


def run(options, argv) -> None:
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
    for name in ("n_iters", "n_grad", "n_flip", "n_candidates", "patience", "min_delta", "time_limit"):
        if getattr(options, name) is not None:
            budget[name] = getattr(options, name)
    config = GasliteConfig(seed=options.seed, progress=options.progress, **budget)
    rule = (config.patience, config.min_delta)
    if options.curves:  # one search without early stop; the rule is read off its trajectory
        config = dataclasses.replace(config, patience=0)
        options.passages = [1]
    corpus_size = options.corpus_size or (QUICK["corpus_size"] if options.quick else None)
    data = GasliteScriptArguments(corpus=options.corpus, queries=options.queries, info=options.info,
                                  held_out_fraction=options.held_out_fraction)
    corpus, attack_queries, held_out, info = load_corpus_and_queries(data)
    corpus = corpus[:corpus_size]
    prompts = {"document_prompt": config.document_prompt, "query_prompt": config.query_prompt}

    model = load_minilm(device)
    start = time.perf_counter()
    corpus_embeddings = encode_corpus(model, corpus, prompt=config.document_prompt)
    print(f"# benchmarks/gaslite_effect.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    print(f"MiniLM on {device}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start; "
          f"corpus {len(corpus)} passages encoded in {time.perf_counter() - start:.0f} s; {len(attack_queries)} attack"
          f" / {len(held_out)} held-out queries; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"GASLITE: {config}" + (f"; early-stop rule read off the trajectory: patience {rule[0]}, min_delta "
                                  f"{rule[1]:g}" if options.curves else ""))
    print(f"info: {info!r}")

    results, references, shifted, extra = {}, {}, {}, {}
    for n_passages in options.passages:
        attacks, seconds, clusters = craft(model, attack_queries, info, n_passages, config, options)
        for name, runs in attacks.items():
            passages = [r.passage for r in runs]
            held = evaluate_poisoning(model, corpus, held_out, passages, corpus_embeddings=corpus_embeddings,
                                      **prompts)
            seen = evaluate_poisoning(model, corpus, attack_queries, passages, corpus_embeddings=corpus_embeddings,
                                      **prompts)
            results[n_passages, name] = (runs, seconds[name], held, seen)
            adv = encode_corpus(model, passages, prompt=config.document_prompt)
            shifted[n_passages, name] = harder_corpus(*scores(model, corpus_embeddings, held_out, adv,
                                                              config.query_prompt))
        reference = centroid_embeddings(model, attack_queries, clusters, config.query_prompt)
        held_scores = scores(model, corpus_embeddings, held_out, reference, config.query_prompt)
        references[n_passages] = [report_from_scores(*held_scores), report_from_scores(
            *scores(model, corpus_embeddings, attack_queries, reference, config.query_prompt))]
        shifted[n_passages, REFERENCE] = harder_corpus(*held_scores)
        if options.curves:
            png = options.results + ".png" if options.results else None
            extra["time_to_quality"] = curves.time_to_quality(model, corpus_embeddings, held_out, attacks, config,
                                                              rule, png, SEARCHED)
        elif options.results and n_passages > 1 and "GASLITE" in attacks:
            curves.plot_histories(attacks["GASLITE"], f"{options.results}_{n_passages}passages.png",
                                  f"GASLITE, {n_passages} passages: objective per search ({device})")

    print("\nHeld-out queries (attack-split appeared@10 for reference)")
    rows = [[name, str(n_passages), f"{seconds:.0f}", f"{runs[0].iterations} ({runs[0].stop_reason})",
             f"{held.appeared_at[1]:.0%}", f"{held.appeared_at[10]:.0%}", f"{held.mrr_at_10:.3f}",
             f"{seen.appeared_at[10]:.0%}"] for (n_passages, name), (runs, seconds, held, seen) in results.items()]
    rows += [[REFERENCE, str(n_passages), "-", "-", f"{held.appeared_at[1]:.0%}", f"{held.appeared_at[10]:.0%}",
              f"{held.mrr_at_10:.3f}", f"{seen.appeared_at[10]:.0%}"]
             for n_passages, (held, seen) in references.items()]
    print_table(["attack", "passages", "seconds", "iterations (stop)", "appeared@1", "appeared@10", "MRR@10",
                 "attack-split @10"], rows)

    print("\nHarder-corpus what-if: held-out appeared@10 when every clean passage's score rises by d (a denser "
          "corpus raises the top-10 bar; same passages)")
    print_table(["attack", "passages", *(f"d = {shift:.2f}" for shift in SHIFTS)],
                [[name, str(n_passages), *cells] for (n_passages, name), cells in shifted.items()])

    if options.hotflip_seconds:
        print(f"\nHotFlip budgets capped at {options.hotflip_seconds:g} s per passage (--hotflip_seconds): 'same "
              "wall-clock' means min(GASLITE's seconds, the cap)")
    if 1 in options.passages:
        gaslite = results[1, "GASLITE"][2].appeared_at[10]
        for name in SEARCHED[1:] if not options.gaslite_only else ():
            hotflip = results[1, name][2].appeared_at[10]
            ratio = float("inf") if hotflip == 0 else gaslite / hotflip
            met = gaslite >= 0.6 and (gaslite >= 3 * hotflip)
            print(f"\nTarget: GASLITE 1 passage held-out appeared@10 >= 60% and >= 3x {name}: {gaslite:.0%} vs "
                  f"{hotflip:.0%} ({ratio:.2f}x) -> {'met' if met else 'NOT met'}"
                  + (" (reduced budget: not a measurement of the target)" if options.quick or budget else ""))
        print(f"  the query centroid (reference point) reaches {references[1][0].appeared_at[10]:.0%}; it is not a "
              "bound: a passage may rank higher for held-out queries away from the centroid")

    if options.output or options.results:
        for path in filter(None, (options.output, options.results and options.results + ".json")):
            write_results(path, config, device, results, extra)
    if options.no_defenses:
        return
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
    for (n_passages, name), (runs, _, held, _) in results.items():
        passages = [r.passage for r in runs]
        after = evaluate_poisoning(model, corpus, held_out, passages, corpus_embeddings=corpus_embeddings,
                                   defense=defense, **prompts)
        rows.append([name, str(n_passages), f"{defense.perplexity(passages).median():.0f}",
                     f"{sum(after.adv_removed)}/{len(passages)}", f"{after.clean_removed_fraction:.1%}",
                     f"{held.appeared_at[10]:.0%} -> {after.appeared_at[10]:.0%}",
                     f"{held.mrr_at_10:.3f} -> {after.mrr_at_10:.3f}"])
    print_table(["attack", "passages", "median perplexity", "passages removed", "clean removed",
                 "held-out appeared@10", "MRR@10"], rows)
    print("\nL2-norm filter: not applicable to MiniLM (cosine similarity, every embedding has norm 1); it is for dot "
          "models (path tested on a tiny dot model in tests/test_defenses.py).")


if __name__ == "__main__":
    main()
