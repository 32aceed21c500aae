"""The one evaluation code path: attack a chat model on a behaviour set with named attacks and keep every
per-behaviour outcome. `hf-robust eval`, the training commands' before/after numbers and the benchmarks call it.

Attacks, by name:
- "clean": the plain request, answered greedily (`max_new_tokens`); a behaviour counts as broken when the judge
  (default `RefusalJudge`, GCG's refusal substrings) says the answer is not a refusal. 1 - its rate is the clean
  refusal rate.
- an embedding preset ("train", "strong", ...): `embedding_attack` on the chat prompt toward the behaviour's target;
  broken when, at some iterate within the budget, the model's greedy reply starts with the target (teacher-forced
  argmax of every target token: an attacker stops at the first iterate that works). With
  `embedding_success="target_or_judge"`, also when the judge finds no refusal in the greedy reply under the last
  iterate: a model trained away from the target's wording ("Sure, here is") may comply in other words, which target
  forcing alone misses. The two criteria bracket the attack's success: with the default substring judge, a
  perturbed model's broken refusals ("sorry, but I can't help") and incoherent replies pass as successes, so pass a
  classifier as `judge` for a faithful upper number, and keep the replies (rows' "response") to read them.
- a GCG preset ("gcg", "gcg-fast"): `gcg_attack` per behaviour; broken when greedy generation from the re-tokenized
  rendered prompt with the suffix gives the target.
- "universal-<GCG preset>" (e.g. "universal-gcg-fast"): one suffix for all behaviours (`universal_gcg_attack`).

Under several processes (`accelerate launch`), behaviours are split between processes and the rows gathered, so
every process returns the same report; a universal attack runs on the main process and is broadcast.
"""

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ..modeling import eval_mode
from .behaviour_attacks import clean_rows, embedding_rows, gcg_rows, universal_rows
from .judges import RefusalJudge
from .presets import AttackPreset, get_preset

CLEAN = "clean"
UNIVERSAL = "universal-"
EMBEDDING_SUCCESS = ("target", "target_or_judge")


def check_embedding_success(value, argument: str = "embedding_success") -> None:
    """Raise naming `argument` unless `value` is one of `EMBEDDING_SUCCESS` (the criteria of `evaluate_robustness`)."""
    if value not in EMBEDDING_SUCCESS:
        raise ValueError(f"`{argument}` must be one of {', '.join(map(repr, EMBEDDING_SUCCESS))}, got {value!r}.")


@dataclass
class AttackOutcome:
    """One attack over the behaviour set.

    Attributes:
        name: "clean", a preset name, or "universal-<GCG preset>".
        kind: "clean", "embedding", "gcg" or "universal-gcg".
        settings: What produced the numbers: the preset's `describe()` (or the judge and decoding for "clean").
        rows: One dict per behaviour, in behaviour order: "index", "prompt", "success" and, by kind, "response",
            "refused" (clean; embedding judged by its reply), "loss_history", "first_success" (the step or
            iteration of the first success, or None), "target_success" and "delta_norm_fraction" (embedding:
            whether target forcing alone broke it; the largest per-token ||delta|| over the radius).
        success_rate: Fraction of behaviours broken.
        budget / budget_success_rate: The success rate when the attack stops after `budget[j]` steps/iterations.
        seconds: Wall time of this attack on this process (summed over processes when gathered).
    """

    name: str
    kind: str
    settings: dict
    rows: list[dict]
    success_rate: float
    budget: list[int] = field(default_factory=list)
    budget_success_rate: list[float] = field(default_factory=list)
    seconds: float = 0.0


def parse_attacks(attacks: Any) -> list[tuple[str, str, Any]]:
    """[(name, kind, preset or None)] for a list (names or `AttackPreset`s) or a comma-separated string of names.

    Raises:
        ValueError: naming `attacks`, for an unknown or repeated name or an empty list.
    """
    items = [name.strip() for name in attacks.split(",")] if isinstance(attacks, str) else attacks
    if isinstance(items, (bytes, dict)) or not hasattr(items, "__iter__"):
        raise ValueError(f"`attacks` must be a list or comma-separated string of attack names, got {attacks!r}.")
    parsed = []
    for item in items:
        if isinstance(item, AttackPreset):
            parsed.append((item.name, item.kind, item))
            continue
        if not isinstance(item, str) or not item:
            raise ValueError(f"`attacks` must hold non-empty names or AttackPresets, got {item!r}.")
        if item == CLEAN:
            parsed.append((item, "clean", None))
            continue
        universal = item.startswith(UNIVERSAL)
        try:  # looked up now, so a registry extended at run time (e.g. by a test) is honoured
            preset = get_preset(item.removeprefix(UNIVERSAL), "gcg" if universal else None)
        except ValueError as error:
            raise ValueError(f"`attacks`: {item!r} is not 'clean', a preset, or 'universal-' + a GCG preset "
                             f"({error})") from None
        parsed.append((item, "universal-gcg" if universal else preset.kind, preset))
    names = [name for name, _, _ in parsed]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"`attacks` must be distinct names, at least one, got {names!r}.")
    return parsed


def _budget_curve(rows: list[dict], horizon: int) -> tuple[list[int], list[float]]:
    budget = list(range(horizon + 1))
    rate = [sum(r["first_success"] is not None and r["first_success"] <= b for r in rows) / len(rows) for b in budget]
    return budget, rate


def evaluate_robustness(model, tokenizer, behaviours, attacks="clean,strong", *, judge=None,
                        max_new_tokens: int = 64, batch_size: int = 8, progress: bool = True,
                        split_between_processes: bool = True,
                        embedding_success: str = "target") -> dict[str, AttackOutcome]:
    """Run each attack on every behaviour and return {attack name: AttackOutcome}, in the order given.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`), the whole model on every process; left as it was.
        tokenizer: Its fast tokenizer (chat formatting through `apply_chat_template`).
        behaviours: list of {"prompt", "target"} mappings or a `datasets.Dataset` with those string columns
            (e.g. `load_behaviours("advbench", split="test")`).
        attacks: Names (list or comma-separated): "clean", embedding or GCG presets, "universal-<GCG preset>"; a
            list may also hold `AttackPreset`s.
        judge: For "clean" (and embedding attacks judged by their reply): a callable (prompts, responses) -> list
            of bools, True = refused; `RefusalJudge()` by default.
        max_new_tokens: Tokens generated for the judge. >= 1.
        batch_size: Behaviours per batch (clean generation, embedding attack). >= 1.
        progress: tqdm bars (main process only) with the running success rate.
        split_between_processes: Under several processes, every process calls this and takes a share of the
            behaviours (rows gathered). False: this process alone attacks every behaviour (e.g. the main process
            measuring a gathered copy while the others wait).
        embedding_success: When an embedding attack breaks a behaviour: "target" (target forcing at some iterate)
            or "target_or_judge" (that, or the judge finds no refusal in the greedy reply under the last iterate;
            meaningless on a model that cannot refuse in words, where every reply passes the judge).
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object, parse_flag_from_env

    from ..checks import check_integer, checked_behaviours

    parsed = parse_attacks(attacks)
    pairs = checked_behaviours(behaviours)
    check_integer("max_new_tokens", max_new_tokens, 1)
    check_integer("batch_size", batch_size, 1)
    check_embedding_success(embedding_success)
    judge = RefusalJudge() if judge is None else judge
    if not callable(judge):
        raise TypeError(f"`judge` must be a callable (prompts, responses) -> list[bool], got {type(judge).__name__}.")
    rows = [{"index": index, "prompt": prompt, "target": target} for index, (prompt, target) in enumerate(pairs)]
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator(): the launcher's CPU flag
    shared = split_between_processes and state.num_processes > 1
    outcomes = {}
    with eval_mode(model):
        for name, kind, preset in parsed:
            start = time.perf_counter()
            if kind == "universal-gcg":
                mine = universal_rows(model, tokenizer, rows, preset.config) if state.is_main_process or not shared \
                    else None
                gathered = broadcast_object_list([mine])[0] if shared else mine
            else:
                local = rows[state.process_index :: state.num_processes] if shared else rows
                bar = tqdm(total=len(local), desc=name, disable=not (progress and state.is_main_process))
                if kind == "clean":
                    mine = clean_rows(model, tokenizer, local, judge, max_new_tokens, batch_size, bar)
                elif kind == "embedding":
                    mine = embedding_rows(model, tokenizer, local, preset.config, batch_size, bar,
                                          judge if embedding_success == "target_or_judge" else None, max_new_tokens)
                else:
                    mine = gcg_rows(model, tokenizer, local, preset.config, bar)
                bar.close()
                gathered = gather_object(mine) if shared else mine
            gathered = sorted(gathered, key=lambda row: row["index"])
            described_judge = judge.describe() if callable(getattr(judge, "describe", None)) else repr(judge)
            generation = {"max_new_tokens": max_new_tokens, "do_sample": False}
            settings = preset.describe() if preset is not None else {
                "name": CLEAN, "kind": "clean", "settings": generation, "judge": described_judge}
            if kind == "embedding":
                settings["success"] = embedding_success
                if embedding_success == "target_or_judge":
                    settings.update(judge=described_judge, generation=generation)
            outcome = AttackOutcome(name=name, kind=kind, settings=settings, rows=gathered,
                                    success_rate=sum(row["success"] for row in gathered) / len(gathered),
                                    seconds=time.perf_counter() - start)
            if kind != "clean":
                horizon = preset.config.steps if kind == "embedding" else preset.config.n_iters
                outcome.budget, outcome.budget_success_rate = _budget_curve(gathered, horizon)
            outcomes[name] = outcome
    return outcomes


def outcome_to_json(outcome: AttackOutcome) -> dict:
    return asdict(outcome)
