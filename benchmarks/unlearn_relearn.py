"""Does SAM make NPO unlearning resist a relearning attack? NPO vs NPO+SAM, recovery of held-out forgotten data.

    python benchmarks/unlearn_relearn.py                          # tiny llama, random strings, 10 seeds (5-9 min)
    python benchmarks/unlearn_relearn.py --seeds 10 --rho 0.02,0.05 --threads 1  # several SAM radii
    python benchmarks/unlearn_relearn.py --model smollm2          # real SmolLM2-135M-Instruct, facts (15-30 min)

Tiny mode (`hf_robust.unlearning.demo.toy_relearning_experiment`, per seed): a tiny llama memorises 16 forget and
32 retain random token strings; NPO and NPO+SAM unlearn the forget strings from the same weights with the same steps,
learning rate and beta; a relearning attack (AdamW) fine-tunes each unlearned model on 8 of the forget strings; the
other 8, never seen by the attacker, measure forgetting (before the attack) and recovery (after). The comparison is
fair only at matched pre-attack forgetting: the table says whether the mean pre-attack forget NLLs agree within
MATCH_TOLERANCE (relative).

SmolLM2 mode: short facts (`SMOLLM2_FACTS`) the model really answers (greedy answer checked first); 16 of them are
forgotten (the model's own greedy answer is the forget text, loss on the answer tokens), the other known facts are
the retain set; the attack fine-tunes on 8 forgotten facts; accuracy and answer NLL are measured on the other 8.

On shared cores pass `--threads 1`: torch's threads fighting another process for the same cores made generation about
three times slower. Prints tables; asserts nothing. Every number printed is measured in this run.
"""

import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tables import mean_std, print_table  # noqa: E402 (benchmarks/ is on the path when run as a script)

MATCH_TOLERANCE = 0.10  # pre-attack forget NLLs of the methods count as matched within 10% of NPO's




def compare(names: list[str], pre: dict, recovery: dict, unit: str) -> None:
    """Matched forgetting (mean pre-attack forget NLL within MATCH_TOLERANCE of the first method's) and the per-seed
    (or per-run) difference of recovery against the first method."""
    base = names[0]
    for name in names[1:]:
        gap = statistics.mean(pre[name]) / statistics.mean(pre[base]) - 1
        matched = "matched" if abs(gap) <= MATCH_TOLERANCE else "NOT matched"
        differences = [mine - theirs for mine, theirs in zip(recovery[name], recovery[base])]
        fewer = sum(difference < 0 for difference in differences)
        print(f"{name} vs {base}: pre-attack forget NLL {gap:+.1%} ({matched}, tolerance ±{MATCH_TOLERANCE:.0%}); "
              f"recovery difference {mean_std(differences)} {unit}, less recovery in {fewer}/{len(differences)} runs")


# ------------------------------------------------------------------------------------------------------ tiny mode


def tiny(options) -> None:
    from hf_robust.unlearning.demo import TOY_RELEARNING, TOY_UNLEARNING, toy_relearning_experiment

    methods = {"npo": {"smoothing": "none"}}
    for rho in options.rho:
        methods[f"npo+sam ρ={rho:g}"] = {"smoothing": "sam", "rho": rho}
    unlearning = {"steps": options.steps} if options.steps else {}
    runs, started = [], time.perf_counter()
    for seed in range(options.seeds):
        runs.append(toy_relearning_experiment(seed=seed, methods=methods, unlearning=unlearning))
        print(f"seed {seed}: " + ", ".join(f"{name} recovery {runs[-1][name]['recovery']:.3f}" for name in methods),
              flush=True)
    settings = {**TOY_UNLEARNING, **unlearning}
    print(f"\ntiny llama (hidden 64, 2 layers) memorising 16 forget + 32 retain random strings of 16 tokens; "
          f"{options.seeds} seeds (0..{options.seeds - 1}), {time.perf_counter() - started:.0f} s")
    print(f"unlearning: NPO beta {settings['beta']}, retain weight {settings['retain_weight']}, {settings['steps']} "
          f"AdamW steps, lr {settings['learning_rate']} constant, batch {settings['batch_size']} (all forget rows)")
    print(f"attack: relearning_attack on 8 forget strings, {TOY_RELEARNING['steps']} AdamW steps, lr "
          f"{TOY_RELEARNING['learning_rate']}, batch {TOY_RELEARNING['batch_size']}; measured on the 8 held-out "
          "forget strings (NLL: mean token NLL; EM / ROUGE-L: greedy second half from the first half, model tokens)")
    memorised = [run["memorised"] for run in runs]
    rows = [["memorised (no unlearning)", mean_std(m.forget_nll for m in memorised), "", "",
             mean_std(m.forget_exact_match for m in memorised), mean_std(m.forget_rouge_l for m in memorised),
             mean_std(m.retain_nll for m in memorised), ""]]
    for name in methods:
        before, after = [run[name]["before"] for run in runs], [run[name]["after"] for run in runs]
        rows.append([
            name,
            mean_std(m.forget_nll for m in before),
            mean_std(m.forget_nll for m in after),
            mean_std(run[name]["recovery"] for run in runs),
            f"{mean_std(m.forget_exact_match for m in before)} → {mean_std(m.forget_exact_match for m in after)}",
            f"{mean_std(m.forget_rouge_l for m in before)} → {mean_std(m.forget_rouge_l for m in after)}",
            mean_std(m.retain_nll for m in before),
            mean_std(m.retain_nll for m in after),
        ])
    print()
    print_table(["method", "forget NLL unlearned", "forget NLL relearned", "recovery (NLL drop)",
                 "forget EM unlearned → relearned", "forget ROUGE-L unlearned → relearned", "retain NLL unlearned",
                 "retain NLL relearned"], rows)
    print("mean ± std over seeds; forget = the 8 held-out forget strings")
    pre = {name: [run[name]["before"].forget_nll for run in runs] for name in methods}
    recovery = {name: [run[name]["recovery"] for run in runs] for name in methods}
    compare(list(methods), pre, recovery, "nats")
    seconds = [run[name]["seconds"]["unlearn"] for run in runs for name in methods]
    print(f"time per seed: memorise {statistics.mean(run['seconds']['memorise'] for run in runs):.1f} s, "
          f"unlearn {statistics.mean(seconds):.1f} s per method")


# --------------------------------------------------------------------------------------------------- SmolLM2 mode

FORGET_FACTS = 16
SMOLLM2_UNLEARNING = {"learning_rate": 5e-5, "beta": 0.1, "retain_weight": 1.0, "batch_size": 8}
# The paper's attacker (AdamW, lr 1e-5, batch 4) on 8 forgotten facts, five passes over them.
SMOLLM2_RELEARNING = {"steps": 10, "learning_rate": 1e-5, "batch_size": 4, "max_length": 128}
ANSWER_TOKENS = 16
# SAM radius for 135M parameters: one Adam step at lr 5e-5 moves the weights by about 5e-5 * sqrt(1.35e8) ~ 0.6 in
# global L2 norm, so 0.1 is a sixth of a step (the tiny model's 0.02 is a tenth of its ~0.18 step).
SMOLLM2_RHO = 0.1


def prompt_ids(tokenizer, question: str) -> list[int]:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=True
    )["input_ids"]


def greedy_ids(model, tokenizer, prompt: list[int]) -> list[int]:
    import torch

    input_ids = torch.tensor([prompt])
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


def fact_measures(model, tokenizer, facts) -> dict[str, float]:
    """Greedy accuracy (answer word in the reply) and mean answer-token NLL of the model's own original replies."""
    from hf_robust.unlearning.metrics import token_log_probs

    model.eval()
    correct = sum(knows(tokenizer.decode(greedy_ids(model, tokenizer, fact["prompt"]), skip_special_tokens=True),
                        fact["answer"]) for fact in facts)
    sequences = [fact["prompt"] + fact["reply"] for fact in facts]
    values = token_log_probs(model, sequences, 8, [len(fact["prompt"]) for fact in facts])
    return {"accuracy": correct / len(facts), "nll": sum(float(-v.mean()) for v in values) / len(values)}


def smollm2(options) -> None:
    import tempfile

    from datasets import Dataset

    from hf_robust.testing import load_smollm2
    from hf_robust.unlearning import RelearnConfig, relearning_attack
    from hf_robust.unlearning.demo import toy_unlearn_config, unlearn
    from hf_robust.unlearning.toy import SMOLLM2_FACTS

    started = time.perf_counter()
    model, tokenizer = load_smollm2()
    facts = []
    for question, answer in SMOLLM2_FACTS:
        prompt = prompt_ids(tokenizer, question)
        reply = greedy_ids(model, tokenizer, prompt)
        if knows(tokenizer.decode(reply, skip_special_tokens=True), answer):
            reply = first_sentence(tokenizer, reply, answer) + [tokenizer.eos_token_id]
            facts.append({"question": question, "answer": answer, "prompt": prompt, "reply": reply})
    print(f"SmolLM2-135M-Instruct answers {len(facts)} of {len(SMOLLM2_FACTS)} facts correctly (greedy, answer word "
          f"in the first {ANSWER_TOKENS} tokens) ({time.perf_counter() - started:.0f} s)", flush=True)
    if len(facts) < FORGET_FACTS + 2:
        print(f"too few known facts for {FORGET_FACTS} forget + a retain set; stopping")
        return
    forget, retain = facts[:FORGET_FACTS], facts[FORGET_FACTS:]
    attack_facts, held_out = forget[: FORGET_FACTS // 2], forget[FORGET_FACTS // 2 :]

    def rows(chosen, with_labels=True):
        columns = {"input_ids": [fact["prompt"] + fact["reply"] for fact in chosen]}
        if with_labels:  # unlearning acts on the answer only, not on the chat prompt
            columns["labels"] = [[-100] * len(fact["prompt"]) + fact["reply"] for fact in chosen]
        return Dataset.from_dict(columns)

    print(f"forget: {len(forget)} facts (attack on {len(attack_facts)}, measured on {len(held_out)} held out: "
          + ", ".join(fact["answer"] for fact in held_out) + f"); retain: {len(retain)} facts", flush=True)
    settings = {**SMOLLM2_UNLEARNING, "steps": options.steps or 10}
    methods = {"npo": {"smoothing": "none"}}
    for rho in options.rho:
        methods[f"npo+sam ρ={rho:g}"] = {"smoothing": "sam", "rho": rho}
    measured = {"original": {"held_out": fact_measures(model, tokenizer, held_out),
                             "retain": fact_measures(model, tokenizer, retain)}}
    runs = {name: [] for name in methods}
    for seed in range(options.seeds):
        for name, method in methods.items():
            step_started = time.perf_counter()
            with tempfile.TemporaryDirectory() as output_dir:
                args = toy_unlearn_config(output_dir, seed, **{**settings, **method})
                unlearned = unlearn(model, tokenizer, rows(forget), rows(retain), args)
            unlearn_seconds = time.perf_counter() - step_started
            before = {"held_out": fact_measures(unlearned, tokenizer, held_out),
                      "retain": fact_measures(unlearned, tokenizer, retain)}
            attack = relearning_attack(
                unlearned, tokenizer, rows(attack_facts, with_labels=False),
                RelearnConfig(n_samples=len(attack_facts), seed=seed, **SMOLLM2_RELEARNING),
                eval_forget=rows(held_out, with_labels=False), return_model=True, max_new_tokens=8,
            )  # fmt: skip
            after = {"held_out": fact_measures(attack.model, tokenizer, held_out),
                     "retain": fact_measures(attack.model, tokenizer, retain)}
            runs[name].append({"before": before, "after": after, "seconds": unlearn_seconds})
            del unlearned, attack
            print(f"seed {seed} {name}: unlearned in {unlearn_seconds:.0f} s; held-out accuracy "
                  f"{before['held_out']['accuracy']:.2f} -> {after['held_out']['accuracy']:.2f} after the attack, "
                  f"answer NLL {before['held_out']['nll']:.3f} -> {after['held_out']['nll']:.3f}", flush=True)
    print(f"\nSmolLM2-135M-Instruct, full fine-tuning; {options.seeds} run(s); {time.perf_counter() - started:.0f} s")
    print(f"unlearning: NPO beta {settings['beta']}, retain weight {settings['retain_weight']} (NLL of the retain "
          f"facts' answers), {settings['steps']} AdamW steps, lr {settings['learning_rate']} constant, batch "
          f"{settings['batch_size']} forget + {settings['batch_size']} retain; loss on the answer tokens")
    print(f"attack: relearning_attack on {len(attack_facts)} forgotten facts (whole chat text), "
          f"{SMOLLM2_RELEARNING['steps']} AdamW steps, lr {SMOLLM2_RELEARNING['learning_rate']}, batch "
          f"{SMOLLM2_RELEARNING['batch_size']}; measured on the {len(held_out)} held-out forgotten facts")
    original = measured["original"]
    table = [["original", f"{original['held_out']['accuracy']:.3f}", "", f"{original['held_out']['nll']:.3f}", "",
              "", f"{original['retain']['accuracy']:.3f}", f"{original['retain']['nll']:.3f}"]]
    for name in methods:
        results = runs[name]
        table.append([
            name,
            mean_std(run["before"]["held_out"]["accuracy"] for run in results),
            mean_std(run["after"]["held_out"]["accuracy"] for run in results),
            mean_std(run["before"]["held_out"]["nll"] for run in results),
            mean_std(run["after"]["held_out"]["nll"] for run in results),
            mean_std(run["before"]["held_out"]["nll"] - run["after"]["held_out"]["nll"] for run in results),
            mean_std(run["before"]["retain"]["accuracy"] for run in results),
            mean_std(run["before"]["retain"]["nll"] for run in results),
        ])
    print()
    print_table(["method", "held-out accuracy unlearned", "held-out accuracy relearned", "answer NLL unlearned",
                 "answer NLL relearned", "recovery (NLL drop)", "retain accuracy unlearned",
                 "retain answer NLL unlearned"], table)
    print("held out = forgotten facts the attacker never saw; answer NLL: mean token NLL of the original reply")
    pre = {name: [run["before"]["held_out"]["nll"] for run in runs[name]] for name in methods}
    recovery = {name: [run["before"]["held_out"]["nll"] - run["after"]["held_out"]["nll"] for run in runs[name]]
                for name in methods}
    compare(list(methods), pre, recovery, "nats")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--seeds", type=int, default=None, help="tiny: seeds 0..N-1 (default 10); smollm2: runs "
                        "with different seeds of the unlearning pairing and the attack (default 1)")
    parser.add_argument("--steps", type=int, default=None, help="unlearning steps (default: tiny 100, smollm2 10)")
    parser.add_argument("--rho", type=lambda text: [float(value) for value in text.split(",")], default=None,
                        help="SAM radius, or several separated by commas (default: tiny 0.02, smollm2 0.1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    options = parser.parse_args()
    import datasets
    import torch
    from transformers.utils import logging

    if options.threads:
        torch.set_num_threads(options.threads)
    datasets.disable_progress_bar()
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*(use_cache|generation flags|max_length).*")
    from hf_robust.unlearning.demo import TOY_RHO

    if options.model == "tiny":
        options.seeds = options.seeds or 10
        options.rho = options.rho or [TOY_RHO]
        tiny(options)
    else:
        options.seeds = options.seeds or 1
        options.rho = options.rho or [SMOLLM2_RHO]
        smollm2(options)


if __name__ == "__main__":
    main()
