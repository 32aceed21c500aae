"""Does the base SmolLM2-135M-Instruct answer the benign requests (not refuse, not babble)?

    python benchmarks/benign_check.py               # the first 20 requests, greedy, 48 new tokens (~2-3 min on CPU)
    python benchmarks/benign_check.py --count 40

A sanity pass before the over-refusal benchmark: a benign request the untuned model already refuses or cannot answer
would measure the base model, not the safety tuning. Prints request -> answer and the `RefusalJudge` count; asserts
nothing. The first rows of `BENIGN_REQUESTS` take the kinds in turn, so 20 rows cover every kind.
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20, help="How many requests, from the first.")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the machine is shared).")
    arguments = parser.parse_args()

    import torch

    from hf_robust.evaluation import BENIGN_REQUESTS, RefusalJudge
    from hf_robust.testing import load_smollm2

    torch.set_num_threads(arguments.threads)
    model, tokenizer = load_smollm2()
    requests = BENIGN_REQUESTS[: arguments.count]
    answers = []
    start = time.perf_counter()
    for request, kind in requests:
        input_ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": request}], add_generation_prompt=True, return_tensors="pt", return_dict=True,
        )
        with torch.no_grad():
            output = model.generate(**input_ids, max_new_tokens=arguments.max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        answer = tokenizer.decode(output[0, input_ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        answers.append(answer)
        print(f"[{kind}] {request}\n    -> {answer!r}\n", flush=True)
    refused = RefusalJudge()([request for request, _ in requests], answers)
    print(f"{sum(refused)} of {len(requests)} answers judged refusals by RefusalJudge "
          f"({time.perf_counter() - start:.0f} s for generation)")
    for (request, kind), answer, is_refusal in zip(requests, answers, refused):
        if is_refusal:
            print(f"  refused [{kind}] {request} -> {answer!r}")


if __name__ == "__main__":
    main()
