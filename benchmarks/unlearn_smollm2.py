"""SmolLM2 mode of `unlearn_relearn.py`: NPO, NPO+SAM (two radii) and NPO+RS at matched forgetting, then a
relearning curve, over seeds.

Per seed: the known facts (`SMOLLM2_FACTS` the model answers, greedy) are shuffled with the seed; 16 are forgotten
(the model's own first-sentence reply is the forget text, loss on the answer tokens), the rest are the retain set;
8 forgotten facts are the attacker's, the other 8 are held out (never seen by the attacker) and measure forgetting.

Matched forgetting: every method unlearns from the same weights, with the same rate, beta and batches, until the
held-out answer NLL (mean token NLL of the original replies) reaches `target_nll` and no held-out answer is given
any more (greedy accuracy 0): `ForgetTargetCallback`, checked after every step, at most `max_steps` steps, with
`land=True`: one step moved this NLL by up to 2.5 nats (NPO, lr 5e-5), so the last step is shortened (bisection on
the share of it kept) until the NLL lies within MATCH_TOLERANCE above the target; where a held-out fact is still
answered there, the step ends at the first share found where none is (the NLL is then past the band). The steps
each method needed are recorded (fractional: the share of the last step kept); a run counts as matched when it
stopped by the rule (NLL >= target, accuracy 0), and as in band when its NLL also lies within the band. The summary
gives each method's NLL at its stop beside NPO's on the same seed, so a looser match shows.

Relearning curve: `relearning_attack` (the paper's attacker: every weight, AdamW lr 1e-5, batch 4) on the 8 attack
facts, measured on the 8 held-out facts after each step count of `curve`; recovery = answer NLL drop from step 0.
"""

import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from tables import mean_std, print_table

FORGET_FACTS = 16
ANSWER_TOKENS = 16
SMOLLM2_UNLEARNING = {"learning_rate": 5e-5, "beta": 0.1, "retain_weight": 1.0, "batch_size": 8}
# The paper's attacker on the 8 attack facts; the curve's step counts.
SMOLLM2_RELEARNING = {"learning_rate": 1e-5, "batch_size": 4, "max_length": 128}
# On the 2-core CPU one relearning step takes 5-15 s: 20 steps (10 passes over the 8 attack facts; 10 steps took the
# probe's NPO model from 12.5 to 5.3 nats). The GPU script measures the paper's longer curve (0, 25, 50, 100, 150).
CURVE = [0, 5, 10, 20]
TARGET_NLL = 4.0
MAX_STEPS = 60
MATCH_TOLERANCE = 0.05  # a stopped run's held-out answer NLL lies in [target, target * (1 + tolerance)]
# SAM radii (global L2 norm over all 135M weights; one Adam step at lr 5e-5 moves them by ~0.6) and the RS noise
# (per-weight std; the reference's sigma 1e-4, averaged over 3 draws as the reference does). At rho 0.3 SAM did not
# reach the target within MAX_STEPS on seed 0 (results/unlearn_relearn_smollm2_rho03_cpu.md), so the two radii are
# 0.05 and 0.1.
SMOLLM2_RHOS = (0.05, 0.1)
SMOLLM2_RS_SIGMA = 1e-4


def methods(rhos=SMOLLM2_RHOS, rs_sigma=SMOLLM2_RS_SIGMA) -> dict[str, dict]:
    compared = {"npo": {"smoothing": "none"}}
    for rho in rhos:
        compared[f"npo+sam ρ={rho:g}"] = {"smoothing": "sam", "rho": rho}
    compared[f"npo+rs σ={rs_sigma:g}"] = {"smoothing": "rs", "rs_sigma": rs_sigma, "rs_samples": 3}
    return compared


# ----------------------------------------------------------------------------------------------- facts and measures


def prompt_ids(tokenizer, question: str) -> list[int]:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=True
    )["input_ids"]


def greedy_ids(model, tokenizer, prompt: list[int]) -> list[int]:
    import torch

    input_ids = torch.tensor([prompt], device=model.device)
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=ANSWER_TOKENS, pad_token_id=tokenizer.pad_token_id)
    return output[0, len(prompt):].tolist()


def knows(reply: str, answer: str) -> bool:
    import re

    return re.search(rf"\b{re.escape(answer.lower())}\b", reply.lower()) is not None


def first_sentence(tokenizer, reply: list[int], answer: str) -> list[int]:
    """The reply's tokens up to the first one holding a full stop after the answer (all of them if there is none)."""
    for end in range(1, len(reply) + 1):
        text = tokenizer.decode(reply[:end], skip_special_tokens=True)
        if knows(text, answer) and "." in tokenizer.decode(reply[end - 1 : end]):
            return reply[:end]
    return reply


def known_facts(model, tokenizer) -> list[dict]:
    """The `SMOLLM2_FACTS` the model answers (answer word in its greedy reply), with that reply's first sentence."""
    from hf_robust.unlearning.toy import SMOLLM2_FACTS

    facts = []
    for question, answer in SMOLLM2_FACTS:
        prompt = prompt_ids(tokenizer, question)
        reply = greedy_ids(model, tokenizer, prompt)
        if knows(tokenizer.decode(reply, skip_special_tokens=True), answer):
            reply = first_sentence(tokenizer, reply, answer) + [tokenizer.eos_token_id]
            facts.append({"question": question, "answer": answer, "prompt": prompt, "reply": reply})
    return facts


def answer_nll(model, facts) -> float:
    """Mean over facts of the mean token NLL of the original reply given the question."""
    from hf_robust.unlearning.metrics.likelihood import token_log_probs

    values = token_log_probs(model, [fact["prompt"] + fact["reply"] for fact in facts], 8,
                             [len(fact["prompt"]) for fact in facts])
    return sum(float(-value.mean()) for value in values) / len(values)


def accuracy(model, tokenizer, facts) -> float:
    """Share of facts whose answer word is in the greedy reply."""
    return sum(knows(tokenizer.decode(greedy_ids(model, tokenizer, fact["prompt"]), skip_special_tokens=True),
                     fact["answer"]) for fact in facts) / len(facts)


def fact_measures(model, tokenizer, facts) -> dict[str, float]:
    import torch

    from hf_robust.modeling import eval_mode

    with eval_mode(model), torch.no_grad():
        return {"accuracy": accuracy(model, tokenizer, facts), "nll": answer_nll(model, facts)}


def rows(chosen, with_labels=True):
    from datasets import Dataset

    columns = {"input_ids": [fact["prompt"] + fact["reply"] for fact in chosen]}
    if with_labels:  # unlearning acts on the answer only, not on the chat prompt
        columns["labels"] = [[-100] * len(fact["prompt"]) + fact["reply"] for fact in chosen]
    return Dataset.from_dict(columns)


# ------------------------------------------------------------------------------------------------------- one run


def unlearn_to_target(model, tokenizer, forget, retain, held_out, seed: int, method: dict, target: float,
                      max_steps: int):
    """Unlearn a copy of `model` until the held-out answer NLL >= target and accuracy 0 (at most `max_steps`)."""
    import copy

    from transformers import PrinterCallback

    from hf_robust.unlearning import ForgetTargetCallback, UnlearnTrainer
    from hf_robust.unlearning.demo import toy_unlearn_config

    with tempfile.TemporaryDirectory() as output_dir:
        args = toy_unlearn_config(output_dir, seed, use_cpu=model.device.type == "cpu",
                                  **{**SMOLLM2_UNLEARNING, "steps": max_steps, **method})
        trainer = UnlearnTrainer(model=copy.deepcopy(model), args=args, forget_dataset=rows(forget),
                                 retain_dataset=rows(retain), processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        stop = ForgetTargetCallback(trainer, lambda unlearned: answer_nll(unlearned, held_out), target,
                                    condition=lambda unlearned: accuracy(unlearned, tokenizer, held_out) == 0,
                                    land=True, tolerance=MATCH_TOLERANCE)
        trainer.add_callback(stop)
        trainer.train()
    return trainer.model.eval(), stop


def one_seed(model, tokenizer, facts, seed: int, compared: dict, options) -> dict:
    from hf_robust.unlearning import RelearnConfig, relearning_attack

    order = random.Random(seed).sample(facts, len(facts))
    forget, retain = order[:FORGET_FACTS], order[FORGET_FACTS:]
    attack_facts, held_out = forget[: FORGET_FACTS // 2], forget[FORGET_FACTS // 2 :]
    record = {"seed": seed, "held_out": [fact["answer"] for fact in held_out],
              "attack": [fact["answer"] for fact in attack_facts], "retain": [fact["answer"] for fact in retain],
              "original": {"held_out": fact_measures(model, tokenizer, held_out),
                           "retain": fact_measures(model, tokenizer, retain)},
              "methods": {}}
    for name, method in compared.items():
        started = time.perf_counter()
        unlearned, stop = unlearn_to_target(model, tokenizer, forget, retain, held_out, seed, method,
                                            options.target_nll, options.max_steps)
        unlearn_seconds = time.perf_counter() - started
        before = {"held_out": fact_measures(unlearned, tokenizer, held_out),
                  "retain": fact_measures(unlearned, tokenizer, retain)}
        nll = before["held_out"]["nll"]
        matched = stop.reached_at is not None and before["held_out"]["accuracy"] == 0 and nll >= options.target_nll
        in_band = matched and nll <= options.target_nll * (1 + MATCH_TOLERANCE)
        started = time.perf_counter()
        attack = relearning_attack(
            unlearned, tokenizer, rows(attack_facts, with_labels=False),
            RelearnConfig(n_samples=len(attack_facts), seed=seed, steps=list(options.curve), **SMOLLM2_RELEARNING),
            eval_forget=rows(held_out, with_labels=False), measure=lambda m: fact_measures(m, tokenizer, held_out),
            max_new_tokens=8,
        )  # fmt: skip
        curve = [{"step": step, **values} for step, values in attack.measurements]
        steps = (stop.reached_at - 1 + stop.landed_fraction) if stop.reached_at is not None else options.max_steps
        record["methods"][name] = {
            "unlearning_steps": steps, "landed_fraction": stop.landed_fraction,
            "reached_target": stop.reached_at is not None, "matched": matched, "in_band": in_band,
            "nll_history": stop.history,
            "before": before, "curve": curve, "recovery": [nll - point["nll"] for point in curve],
            "seconds": {"unlearn": unlearn_seconds, "attack": time.perf_counter() - started},
        }
        del unlearned, attack
        print(f"seed {seed} {name}: {steps:.2f} unlearning steps "
              f"({'matched' if matched else 'NOT matched'}{', in band' if in_band else ''}: held-out answer NLL "
              f"{nll:.3f}, accuracy "
              f"{before['held_out']['accuracy']:.2f}) in {unlearn_seconds:.0f} s; relearning curve NLL "
              + ", ".join(f"{point['step']}: {point['nll']:.2f} (acc {point['accuracy']:.2f})" for point in curve)
              + f" ({record['methods'][name]['seconds']['attack']:.0f} s)", flush=True)
    return record


# ----------------------------------------------------------------------------------------------- report and plot


def summary(record: dict) -> None:
    runs, names = record["seeds"], list(record["settings"]["methods"])
    curve = record["settings"]["curve"]
    print(f"\nSmolLM2-135M-Instruct, full fine-tuning; {len(runs)} seed(s); held-out answer NLL target "
          f"{record['settings']['target_nll']} nats with accuracy 0 (matched within +{MATCH_TOLERANCE:.0%})")
    header = ["method", "unlearning steps", "matched (in band)", "held-out NLL unlearned", "retain accuracy unlearned",
              *(f"recovery @{step}" for step in curve[1:]), f"held-out accuracy @{curve[-1]}"]
    table = []
    for name in names:
        results = [run["methods"][name] for run in runs if name in run["methods"]]
        table.append([
            name, mean_std(r["unlearning_steps"] for r in results),
            f"{sum(r['matched'] for r in results)}/{len(results)} "
            f"({sum(r.get('in_band', r['matched']) for r in results)})",
            mean_std(r["before"]["held_out"]["nll"] for r in results),
            mean_std(r["before"]["retain"]["accuracy"] for r in results),
            *(mean_std(r["recovery"][index] for r in results) for index in range(1, len(curve))),
            mean_std(r["curve"][-1]["accuracy"] for r in results),
        ])
    print_table(header, table)
    print("recovery = held-out answer NLL drop (nats) after that many relearning steps (higher = more relearned); "
          "mean ± std over seeds")
    base = names[0]
    for name in names[1:]:
        paired = [(run["methods"][name]["recovery"][-1] - run["methods"][base]["recovery"][-1])
                  for run in runs if name in run["methods"]]
        if paired:
            fewer = sum(difference < 0 for difference in paired)
            print(f"{name} − {base}, recovery @{curve[-1]}: {mean_std(paired)} nats (less recovery in "
                  f"{fewer}/{len(paired)} seeds)")
            start = [run["methods"][name]["before"]["held_out"]["nll"]
                     - run["methods"][base]["before"]["held_out"]["nll"] for run in runs if name in run["methods"]]
            end = [run["methods"][name]["curve"][-1]["nll"] - run["methods"][base]["curve"][-1]["nll"]
                   for run in runs if name in run["methods"]]
            print(f"    held-out NLL at the stop, {name} − {base}: {mean_std(start)} nats (how close the match); "
                  f"after {curve[-1]} relearning steps: {mean_std(end)} nats (higher in {sum(d > 0 for d in end)}/"
                  f"{len(end)} seeds)")
            both = [difference for difference, run in zip(paired, [run for run in runs if name in run["methods"]])
                    if run["methods"][name]["matched"] and run["methods"][base]["matched"]]
            if len(both) < len(paired):  # an unmatched stop is no comparison at matched forgetting
                print(f"    seeds where both matched ({len(both)}/{len(paired)}): recovery @{curve[-1]} "
                      f"{mean_std(both) if both else '-'} nats (less recovery in {sum(d < 0 for d in both)}/"
                      f"{len(both)} seeds)")


def plot(record: dict, path: Path) -> None:
    """Recovery and held-out accuracy against relearning steps, one line per method, bands = ±1 std over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs, names, steps = record["seeds"], list(record["settings"]["methods"]), record["settings"]["curve"]
    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    recovery_axis, accuracy_axis = figure.subplots(1, 2)
    for index, name in enumerate(names):
        results = [run["methods"][name] for run in runs if name in run["methods"]]
        style = ("-", "--", ":", "-.")[index % 4]  # methods whose curves coincide stay visible
        for axis, values in ((recovery_axis, [r["recovery"] for r in results]),
                             (accuracy_axis, [[point["accuracy"] for point in r["curve"]] for r in results])):
            means = [statistics.mean(column) for column in zip(*values)]
            spread = [statistics.stdev(column) if len(column) > 1 else 0.0 for column in zip(*values)]
            label = f"{name} (n={len(results)}, matched {sum(r['matched'] for r in results)})"
            line = axis.plot(steps, means, marker="o", linestyle=style, label=label)[0]
            axis.fill_between(steps, [m - s for m, s in zip(means, spread)], [m + s for m, s in zip(means, spread)],
                              color=line.get_color(), alpha=0.15)
    recovery_axis.set_ylabel("recovery: held-out answer NLL drop (nats)")
    accuracy_axis.set_ylabel("held-out answer accuracy")
    for axis in (recovery_axis, accuracy_axis):
        axis.set_xlabel("relearning steps (AdamW lr 1e-5, batch 4, all weights)")
        axis.grid(alpha=0.3)
    recovery_axis.legend(fontsize=8)
    figure.suptitle(f"SmolLM2-135M-Instruct: relearning after unlearning to held-out NLL "
                    f"{record['settings']['target_nll']} (matched forgetting)")
    figure.tight_layout()
    figure.savefig(path, format="png")


def smollm2(options) -> None:
    from hf_robust.testing import load_smollm2

    started = time.perf_counter()
    model, tokenizer = load_smollm2()
    model.to(options.device)
    facts = known_facts(model, tokenizer)
    print(f"SmolLM2-135M-Instruct answers {len(facts)} facts (greedy, answer word in the first {ANSWER_TOKENS} "
          f"tokens) ({time.perf_counter() - started:.0f} s)", flush=True)
    if len(facts) < FORGET_FACTS + 2:
        raise SystemExit(f"too few known facts for {FORGET_FACTS} forget + a retain set")
    compared = methods(options.rho, options.rs_sigma)
    if options.methods:
        unknown = sorted(set(options.methods) - set(compared))
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; allowed: {sorted(compared)}")
        compared = {name: compared[name] for name in options.methods}
    record = {"settings": {"target_nll": options.target_nll, "max_steps": options.max_steps, "curve": options.curve,
                           "match_tolerance": MATCH_TOLERANCE, "unlearning": SMOLLM2_UNLEARNING,
                           "relearning": SMOLLM2_RELEARNING, "methods": compared, "known_facts": len(facts),
                           "machine": options.machine, "threads": options.threads, "device": options.device,
                           "date": time.strftime("%Y-%m-%d")},
              "seeds": []}
    results = Path(options.results) if options.results else None
    if options.add_to:
        return add_methods(model, tokenizer, facts, compared, record, options)
    for seed in options.seed_list:
        record["seeds"].append(one_seed(model, tokenizer, facts, seed, compared, options))
        record["settings"]["seconds"] = time.perf_counter() - started
        if results:  # written after every seed, so a cut run keeps what it measured
            write(record, results)
    summary(record)


def write(record: dict, results: Path) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps(record, indent=1))
    plot(record, results.with_suffix(".png"))


# Settings that must agree for a method run later to be paired with the recorded ones on the same seed.
PAIRED_SETTINGS = ("target_nll", "max_steps", "curve", "match_tolerance", "unlearning", "relearning", "known_facts")


def add_methods(model, tokenizer, facts, compared: dict, fresh: dict, options) -> None:
    """Run the methods that `options.add_to` (a recorded JSON) lacks on its seeds, and add them to it in place."""
    results = Path(options.add_to)
    record = json.loads(results.read_text())
    settings = record["settings"]
    differing = [key for key in PAIRED_SETTINGS if settings.get(key) != fresh["settings"][key]]
    if differing:
        recorded, now = ([source.get(key) for key in differing] for source in (settings, fresh["settings"]))
        raise SystemExit(f"--add_to: {results} was recorded with other {differing} ({recorded} vs {now}); new "
                         "methods would not be paired with its seeds")
    added = {name: method for name, method in compared.items() if name not in settings["methods"]}
    if not added:
        raise SystemExit(f"--add_to: {results} already has {sorted(compared)}; choose others with --methods/--rho")
    started = time.perf_counter()
    for run in record["seeds"]:
        new = one_seed(model, tokenizer, facts, run["seed"], added, options)
        if (new["held_out"], new["attack"]) != (run["held_out"], run["attack"]):
            raise SystemExit(f"seed {run['seed']}: the facts drawn differ from the recorded ones; cannot pair")
        run["methods"].update(new["methods"])
        settings["methods"].update(added)
        order = list(methods(sorted({*options.rho, *(m["rho"] for m in settings["methods"].values() if "rho" in m)}),
                             options.rs_sigma))
        settings["methods"] = dict(sorted(settings["methods"].items(),
                                          key=lambda item: order.index(item[0]) if item[0] in order else len(order)))
        write(record, results)
    settings.setdefault("additions", []).append({
        "methods": list(added), "seeds": [run["seed"] for run in record["seeds"]], "machine": options.machine,
        "threads": options.threads, "device": options.device, "date": time.strftime("%Y-%m-%d"),
        "seconds": time.perf_counter() - started})
    write(record, results)
    summary(record)
