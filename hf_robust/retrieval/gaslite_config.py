"""Settings and result of GASLITE (`hf_robust.retrieval.gaslite`): `GasliteConfig`, `GasliteResult`, and the
measured early-stop defaults."""

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..attacks.search_config import TokenSearchConfig
from ..checks import check_integer, check_number
from .objective import TRIGGER_POSITIONS

# Early-stop defaults of GasliteConfig: stop once the similarity gained <= 0.001 over 3 iterations. Chosen from one
# measured trajectory (all-MiniLM-L6-v2, shipped concept, 1 passage, GasliteConfig() otherwise; 2 shared CPU cores;
# benchmarks/results/gaslite_early_stop_cpu.md): similarity .289 -> .814, .865, .893, .906, .914, .925, .925, .925,
# .925 (iteration 9, where this rule stops) ... .930 at iteration 13, while held-out appeared@10 stayed within 77-83%
# from iteration 2 on (83% at 9 and at 13). Every (patience, min_delta) of 3 and 0.0005-0.005 stops at iteration 9
# there; patience 1-2 would stop at 7-8 on a single flat iteration, which also happens by chance mid-search. The
# trade-off: a stopped passage gives up the last ~0.01 of similarity (the 100-iteration passage recorded in
# benchmarks/results/gaslite_effect_1passage_cpu.json re-encodes to .934, held-out appeared@10 83%, appeared@1 23%)
# for ~1/10 of the iterations; `patience=0` restores the full `n_iters` search.
PATIENCE: int = 3
MIN_DELTA: float = 0.001


@dataclass
class GasliteConfig:
    """Settings of `gaslite_attack` and `craft_poison_passages`; defaults follow GASLITE's `ours.yaml` (L=30 as in
    its "short" configs and demo)."""

    trigger_len: int = field(default=30, metadata={"help": "Number L of trigger tokens. >= 1."})
    trigger_position: str = field(
        default="suffix",
        metadata={"help": "Where the trigger goes: 'suffix' (after the info), 'prefix' (before it), 'middle' (between "
                  "the two halves of its words) or 'trigger_only' (no info in the passage)."},
    )
    trigger_init: str = field(
        default="!",
        metadata={"help": "Initial trigger: a text of one token is repeated L times; a longer text is tokenised and "
                  "cut, or padded with '!' tokens, to L tokens. A non-blank string."},
    )
    n_iters: int = field(default=100, metadata={"help": "Maximum number of iterations. >= 0."})
    n_grad: int = field(
        default=50,
        metadata={"help": "Gradient rows averaged: the current passage and n_grad - 1 random single-token "
                  "perturbations of its trigger. >= 1."},
    )
    topk: int = field(default=256, metadata={"help": "Candidate tokens per trigger position from the gradient. >= 1."})
    n_candidates: int = field(
        default=128,
        metadata={"help": "Candidate tokens tried per flipped position: the best n_candidates // 2 of the top-k plus "
                  "n_candidates - n_candidates // 2 drawn with replacement from the remaining top-k ranks. >= 1."},
    )
    n_flip: int = field(
        default=20,
        metadata={"help": "Trigger positions changed greedily per iteration. >= 1; above L, max(1, int(0.67 L))."},
    )
    time_limit: float | None = field(
        default=None, metadata={"help": "Stop before an iteration starts once this many seconds passed. > 0 or None."}
    )
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the search, and of k-means in craft_poison_passages (cluster i searches with "
                  "seed + i). >= 0."},
    )
    batch_size: int = field(
        default=128, metadata={"help": "Rows per forward when scoring candidates and gradient rows. >= 1."}
    )
    patience: int = field(
        default=PATIENCE,
        metadata={"help": "Early stop: end the search once the similarity gained at most `min_delta` over the last "
                  "`patience` iterations. 0: off (run all n_iters). >= 0."},
    )
    min_delta: float = field(
        default=MIN_DELTA,
        metadata={"help": "Early stop: the similarity gain over `patience` iterations that still counts as progress "
                  "(a gain <= min_delta stops). A finite number >= 0."},
    )
    document_prompt: str | None = field(
        default=None,
        metadata={"help": "Prompt prepended to passages; None: the model's own (what model.encode applies: its "
                  "'document'/'passage' prompt, else its default prompt). E.g. 'passage: ' for an E5 checkpoint "
                  "without prompts. Evaluate with the same value."},
    )
    query_prompt: str | None = field(
        default=None,
        metadata={"help": "Prompt prepended to queries; None: the model's own ('query', else its default prompt). "
                  "E.g. 'query: ' for E5. Evaluate with the same value."},
    )
    batch_clusters: bool | None = field(
        default=None,
        metadata={"help": "craft_poison_passages: search the clusters a process owns in lockstep, scoring the "
                  "candidates of all of them in one forward per step (chunked by batch_size) and taking their "
                  "gradients together. Same passages and histories as one cluster after another, up to the float "
                  "rounding of a batched forward (which could flip a near-tie). Pays off on a GPU, where one "
                  "cluster's n_candidates rows leave it underused, and only with batch_size above n_candidates "
                  "(e.g. n_passages x n_candidates, memory permitting); on CPU a forward costs in proportion to its "
                  "rows, so nothing is gained. With time_limit the clusters share the clock (each counts from the "
                  "joint start). None: on when the model is on CUDA. None, True or False."},
    )
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar with the current similarity."})

    def __post_init__(self):
        for name, minimum in (("trigger_len", 1), ("n_iters", 0), ("n_grad", 1), ("topk", 1), ("n_candidates", 1),
                              ("n_flip", 1), ("seed", 0), ("batch_size", 1), ("patience", 0)):
            check_integer(name, getattr(self, name), minimum)
        check_number("min_delta", self.min_delta, 0)
        for name in ("document_prompt", "query_prompt"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"`{name}` must be None (the model's own prompt) or a str, got "
                                 f"{getattr(self, name)!r}.")
        if self.trigger_position not in TRIGGER_POSITIONS:
            raise ValueError(f"`trigger_position` must be one of {TRIGGER_POSITIONS}, got {self.trigger_position!r}.")
        if not isinstance(self.trigger_init, str) or not self.trigger_init.strip():
            raise ValueError(f"`trigger_init` must be a non-blank string, got {self.trigger_init!r}.")
        if self.time_limit is not None:
            check_number("time_limit", self.time_limit, 0, strict=True)
        if not isinstance(self.progress, bool):
            raise ValueError(f"`progress` must be True or False, got {self.progress!r}.")
        if self.batch_clusters is not None and not isinstance(self.batch_clusters, bool):
            raise ValueError("`batch_clusters` must be None (on when the model is on CUDA), True or False, got "
                             f"{self.batch_clusters!r}.")

    def clusters_in_lockstep(self, model: Any) -> bool:
        """Whether craft_poison_passages searches the clusters together: `batch_clusters`, None = a CUDA model."""
        return self.batch_clusters if self.batch_clusters is not None else model.device.type == "cuda"

    def search_config(self) -> TokenSearchConfig:
        """The `TokenSearchConfig` of this attack (its own progress bar replaces the core's)."""
        return TokenSearchConfig(
            n_iters=self.n_iters, topk=self.topk, n_candidates=self.n_candidates,
            n_top_candidates=min(self.n_candidates // 2, self.topk), n_flip=self.n_flip, n_grad=self.n_grad,
            normalize_gradient=True, time_limit=self.time_limit, batch_size=self.batch_size, seed=self.seed,
            patience=self.patience, min_delta=self.min_delta, progress=False,
        )


@dataclass
class GasliteResult:
    """Output of `gaslite_attack` (and of the baselines in `hf_robust.retrieval.baselines`).

    Attributes:
        passage: str. The adversarial passage WITHOUT the model's document prompt.
        trigger: str. The decoded trigger text ("" for a passage without trigger).
        trigger_ids: LongTensor, shape (L,), on CPU. The optimised trigger tokens.
        ids: LongTensor, shape (seq,), on CPU. `tokenizer(prompt + passage).input_ids`, special tokens included.
        trigger_positions: LongTensor, shape (L,), on CPU. Where `trigger_ids` sit in `ids`.
        objective: float. Similarity of the passage embedding to the target centroid (model's similarity).
        objective_history: list of `iterations + 1` floats, non-decreasing; `[0]` is the initial passage's,
            `[t]` the passage's after iteration t.
        iterations: int. Search iterations run (the stop iteration).
        seconds: float. Wall-clock time of the whole call.
        query_indices: list[int] | None. Indices of the target queries (set by `craft_poison_passages`).
        iteration_seconds: list of `iterations` floats: wall-clock seconds of each search iteration.
        stop_reason: str. Why the search ended: "n_iters", "patience", "time_limit", "early_stop" or "stop" (see
            `hf_robust.attacks.search_config`); "n_iters" for a passage that is not searched.
        passage_history: list of `iterations + 1` str: the passage (without prompt) whose similarity is
            `objective_history[t]`, so intermediate passages can be evaluated (time-to-quality curves).
    """

    passage: str
    trigger: str
    trigger_ids: Tensor
    ids: Tensor
    trigger_positions: Tensor
    objective: float
    objective_history: list[float]
    iterations: int
    seconds: float
    query_indices: list[int] | None = None
    iteration_seconds: list[float] = field(default_factory=list)
    stop_reason: str = "n_iters"
    passage_history: list[str] = field(default_factory=list)
