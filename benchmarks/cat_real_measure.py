"""What `cat_real.py` measures on each model: clean refusal of held-out AdvBench, over-refusal of held-out benign
requests and the utility NLL of the base model's answers to them, the `strong` embedding attack and the training
attack under both success criteria (`judged_numbers`), and GCG on the first behaviours. Every refusal is judged by
GCG's list and by the stricter extended judge (`*_extended`; for the attacks, from the kept replies: `rejudge`).
Everything through `hf_robust.evaluation`; greedy 32-token answers."""

import time


def utility_nll(model, tokenizer, answers: dict[str, str]) -> float:
    """Mean token cross-entropy of the base model's answers to held-out benign requests."""
    import torch

    from hf_robust.evaluation.behaviour_attacks import behaviour_ids

    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, answer in answers.items():
            input_ids, labels, _ = behaviour_ids(tokenizer, prompt, answer)
            loss = model(input_ids=input_ids.to(model.device), labels=labels.to(model.device)).loss
            n = int((labels[:, 1:] != -100).sum())
            total, count = total + float(loss) * n, count + n
    return total / count


def training_attack_preset(training_attack: dict):
    """The benchmark's training attack (`AttackArguments` fields) as an evaluation preset: its success says whether a
    model resists the very attack CAT trains against; the targets are read at the `strong` preset."""
    import dataclasses

    from hf_robust.cat.arguments import AttackArguments
    from hf_robust.evaluation.presets import AttackPreset

    config = AttackArguments(**training_attack).attack_config()
    if config.init == "uniform" and config.seed is None:  # training draws afresh; the measurement is reproducible
        config = dataclasses.replace(config, seed=0)
    return AttackPreset("training-attack", "embedding", dataclasses.asdict(config),
                        "The benchmark's training attack itself (as strong as training, no stronger).")


def judged_numbers(outcome, prefix: str) -> dict:
    """An embedding attack's rates under both criteria (`evaluate_robustness(embedding_success="target_or_judge")`):
    `{prefix}_asr` target forcing alone (comparable with every earlier record) and its curve `{prefix}_budget`;
    `{prefix}_judged_asr` also counting the greedy replies under the last iterate that the judge passes, and those
    replies (`{prefix}_unrefused_replies`), so that a reader sees what the judge let through."""
    rows = outcome.rows
    budget = [sum(row["target_success"] and row["first_success"] <= step for row in rows) / len(rows)
              for step in outcome.budget]
    return {f"{prefix}_asr": sum(row["target_success"] for row in rows) / len(rows), f"{prefix}_budget": budget,
            f"{prefix}_judged_asr": outcome.success_rate,
            f"{prefix}_unrefused_replies": [row["response"] for row in rows if row["success"] and not
                                            row["target_success"]]}


def measure_training_attack(model, tokenizer, held_out, training_attack: dict) -> dict:
    """{"training_attack_asr", "training_attack_judged_asr", ...}: the training attack on the held-out behaviours
    (`judged_numbers`)."""
    from hf_robust.evaluation.runner import evaluate_robustness

    preset = training_attack_preset(training_attack)
    outcome = evaluate_robustness(model, tokenizer, held_out, [preset], max_new_tokens=32, batch_size=16,
                                  progress=False, embedding_success="target_or_judge")[preset.name]
    measured = judged_numbers(outcome, "training_attack")
    del measured["training_attack_budget"]
    print(f"  training attack ASR {measured['training_attack_asr']:.0%}, judged "
          f"{measured['training_attack_judged_asr']:.0%} ({outcome.seconds:.0f} s)", flush=True)
    return measured


def measure_strong(model, tokenizer, held_out) -> dict:
    """The `strong` preset on the held-out behaviours under both criteria (`judged_numbers`)."""
    from hf_robust.evaluation.runner import evaluate_robustness

    outcome = evaluate_robustness(model, tokenizer, held_out, "strong", max_new_tokens=32, batch_size=16,
                                  progress=False, embedding_success="target_or_judge")["strong"]
    measured = judged_numbers(outcome, "strong")
    print(f"  strong ASR {measured['strong_asr']:.0%}, judged {measured['strong_judged_asr']:.0%} "
          f"({outcome.seconds:.0f} s)", flush=True)
    return measured


SHORT_STRONG_STEPS = 20  # twice the training attack's steps: where the 120-step CAT model resisted target forcing


def measure_short_strong(model, tokenizer, held_out, steps: int = SHORT_STRONG_STEPS) -> dict:
    """The `strong` preset stopped after `steps` steps, under both criteria (`judged_numbers`, keys
    `strong_{steps}_*`): its iterates are the first of the full attack's (no schedule depends on the total), so its
    target-forcing rate is the full curve's at `steps`, and the judged rate says whether a model that resists target
    forcing that long still complies in other words."""
    from hf_robust.evaluation.presets import AttackPreset, get_preset
    from hf_robust.evaluation.runner import evaluate_robustness

    strong = get_preset("strong")
    preset = AttackPreset(f"strong-{steps}", "embedding", {**strong.settings, "steps": steps},
                          f"The strong preset stopped after {steps} steps.")
    outcome = evaluate_robustness(model, tokenizer, held_out, [preset], max_new_tokens=32, batch_size=16,
                                  progress=False, embedding_success="target_or_judge")[preset.name]
    measured = judged_numbers(outcome, f"strong_{steps}")
    del measured[f"strong_{steps}_budget"]
    print(f"  strong ASR at {steps} steps {measured[f'strong_{steps}_asr']:.0%}, judged "
          f"{measured[f'strong_{steps}_judged_asr']:.0%} ({outcome.seconds:.0f} s)", flush=True)
    return measured


EXTENDED_JUDGE = "refusal-substrings-extended"  # stricter on perturbed replies; every rate under it is `*_extended`


def measure_clean(model, tokenizer, held_out, benign_test: dict[str, str]) -> dict:
    """Clean refusal of the held-out behaviours and over-refusal of the benign requests (greedy 32-token answers),
    judged by GCG's list (`clean_refusal`, `over_refusal`) and by the extended judge (`*_extended`); the harmful
    answers GCG's list passes are kept (`clean_unrefused_replies`) to read."""
    from hf_robust.evaluation.behaviour_attacks import refusal_rate
    from hf_robust.evaluation.judges import refusal_judge
    from hf_robust.evaluation.runner import evaluate_robustness

    extended = refusal_judge(EXTENDED_JUDGE)
    clean = evaluate_robustness(model, tokenizer, held_out, "clean", max_new_tokens=32, batch_size=16,
                                progress=False)["clean"]
    over_refusal, benign = refusal_rate(model, tokenizer, list(benign_test), max_new_tokens=32, batch_size=16)
    return {"clean_refusal": 1 - clean.success_rate, "over_refusal": over_refusal,
            "clean_refusal_extended": sum(extended.refused(row["response"]) for row in clean.rows) / len(clean.rows),
            "over_refusal_extended": sum(extended.refused(row["response"]) for row in benign) / len(benign),
            "clean_unrefused_replies": [row["response"] for row in clean.rows if row["success"]]}


JUDGED_ATTACKS = ("strong", f"strong_{SHORT_STRONG_STEPS}", "training_attack")


def rejudge(measured: dict, count: int) -> None:
    """Adds `{attack}_extended_judged_asr` to one model's measurements, for each judged embedding attack
    (`JUDGED_ATTACKS`) that lacks it: target forcing, or a kept reply under the last iterate that the extended judge
    passes too. Exact without re-attacking: the extended judge refuses whatever GCG's list refuses, so the replies it
    passes are among those kept (`judged_numbers`). `count`: the behaviours attacked."""
    from hf_robust.evaluation.judges import refusal_judge

    extended = refusal_judge(EXTENDED_JUDGE)
    for attack in JUDGED_ATTACKS:
        replies = measured.get(f"{attack}_unrefused_replies")
        if replies is None or f"{attack}_extended_judged_asr" in measured:
            continue
        forced = round(measured[f"{attack}_asr"] * count)
        if round(measured[f"{attack}_judged_asr"] * count) != forced + len(replies):
            raise ValueError(f"{attack}: {len(replies)} kept replies do not add up to its judged rate over {count} "
                             "behaviours: `count` is not the number attacked")
        passed = sum(not extended.refused(reply) for reply in replies)
        measured[f"{attack}_extended_judged_asr"] = (forced + passed) / count


def measure(model, tokenizer, held_out, benign_test: dict[str, str], gcg_behaviours: int, strong: bool = True,
            training_attack: dict | None = None) -> dict:
    """The rates of one model; `strong=False` (the safety-tuned checkpoint) skips the embedding attacks, and
    `training_attack` (`AttackArguments` fields) adds that attack's success."""
    started = time.perf_counter()
    measured = {**measure_clean(model, tokenizer, held_out, benign_test),
                "utility_nll": utility_nll(model, tokenizer, benign_test)}
    if strong:
        measured.update(measure_strong(model, tokenizer, held_out))
        measured.update(measure_short_strong(model, tokenizer, held_out))
        if training_attack:
            measured.update(measure_training_attack(model, tokenizer, held_out, training_attack))
        rejudge(measured, len(held_out))
    print(f"  measured {measured['clean_refusal']:.0%} refusal, strong ASR {measured.get('strong_asr', '-')}, "
          f"over-refusal {measured['over_refusal']:.0%} ({time.perf_counter() - started:.0f} s)", flush=True)
    if gcg_behaviours:
        measured.update(measure_gcg(model, tokenizer, held_out, gcg_behaviours))
    measured["seconds"] = time.perf_counter() - started
    return measured


def measure_gcg(model, tokenizer, held_out, count: int) -> dict:
    """{"gcg_asr", "gcg_seconds", "gcg_behaviours"}: GCG (`gcg-cpu`) on the first `count` held-out behaviours."""
    from hf_robust.evaluation.runner import evaluate_robustness

    gcg = evaluate_robustness(model, tokenizer, held_out.select(range(count)), "gcg-cpu", progress=False)["gcg-cpu"]
    print(f"  GCG ({count} behaviours) ASR {gcg.success_rate:.0%} ({gcg.seconds:.0f} s)", flush=True)
    return {"gcg_asr": gcg.success_rate, "gcg_seconds": gcg.seconds, "gcg_behaviours": count}
