"""AdvUnlearn iteration time against plain ESD, on the same model, retain batch and k.

    python benchmarks/advunlearn_speed.py --threads 1                # the toy tiny SD components on CPU
    python benchmarks/advunlearn_speed.py --model path/to/sd15 --device cuda   # a diffusers SD 1.x / SDXL folder

One iteration = `AdvUnlearnTrainer.training_step` (partial DDIM sampling of z_t and the retain latents with the frozen
model, e_0 / e_c / e_r, then the attack if any, the ESD + retain loss and its backward) plus the optimizer step. The
rows differ only in the attack:

- ESD: attack_warmup >= the iterations timed, so the inner attack never runs (everything else is identical);
- AdvUnlearn, share_xt=True (ours): 30 attack steps (k soft tokens, Adam) on the iteration's z_t;
- AdvUnlearn, share_xt=False (reference-style): 30 attack steps, each on a freshly sampled z_t (a new partial DDIM
  run and concept prediction per step, as the reference does).

Every row runs the same draw of n (the number of DDIM steps of z_t) in the same order, so the rows see the same
sampling lengths. Times come from one process alternating the rows' iterations (`alternating_medians`). The research
note (§4) estimates the reference at about 36x ESD per iteration; the target is <= 8x. Prints a table; asserts
nothing.
"""

import argparse
import os
import tempfile

from speed_common import alternating_medians, timed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODES = {"ESD (no attack)": {"attack_warmup": 10 ** 9},
         "AdvUnlearn, share_xt=True (ours)": {"attack_warmup": 0, "share_xt": True},
         "AdvUnlearn, share_xt=False (reference-style)": {"attack_warmup": 0, "share_xt": False}}


def components(options):
    if options.model == "toy":
        from hf_robust.erasure.toy import toy_erasure_components

        return toy_erasure_components()
    from diffusers import DiffusionPipeline

    return dict(DiffusionPipeline.from_pretrained(options.model).components)


def build(options, settings):
    import torch

    from hf_robust.erasure import AdvUnlearnConfig, AdvUnlearnTrainer
    from hf_robust.erasure.toy import TOY_CONCEPT, TOY_RETAIN_PROMPTS

    toy = options.model == "toy"
    args = AdvUnlearnConfig(
        output_dir=tempfile.mkdtemp(), use_cpu=options.device == "cpu", bf16=options.bf16, report_to="none",
        save_strategy="no", disable_tqdm=True, seed=0, num_adv_tokens=options.k, attack_steps=options.attack_steps,
        retain_batch=options.retain_batch, ddim_steps=options.ddim_steps, learning_rate=1e-5, **settings,
    )
    trainer = AdvUnlearnTrainer(components(options), args, concepts=[TOY_CONCEPT if toy else options.concept],
                                retain_prompts=list(TOY_RETAIN_PROMPTS) if toy else None)
    trainer.create_optimizer_and_scheduler(num_training_steps=10 ** 6)
    trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's loop, which is not run here
    synchronize = torch.cuda.synchronize if options.device == "cuda" else (lambda: None)
    inputs = {"concept_index": torch.tensor([0])}

    def step() -> None:
        trainer.training_step(trainer.model, inputs)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.state.global_step += 1  # the next iteration draws the next n, as in training

    trainer.model.train()
    return timed(step, synchronize)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="'toy' or a diffusers pipeline folder / Hub id")
    parser.add_argument("--concept", default="nudity", help="concept of a --model folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the Trainer's)")
    parser.add_argument("--k", type=int, default=1, help="soft tokens")
    parser.add_argument("--attack_steps", type=int, default=30)
    parser.add_argument("--retain_batch", type=int, default=5)
    parser.add_argument("--ddim_steps", type=int, default=50)
    parser.add_argument("--steps", type=int, default=5, help="timed iterations per row (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on cores shared with other jobs)")
    options = parser.parse_args(argv)
    import torch

    torch.set_num_threads(options.threads)
    steps = {name: build(options, settings) for name, settings in MODES.items()}
    measured = alternating_medians(steps, options.warmup, options.steps)
    esd = measured["ESD (no attack)"]
    print(f"model {options.model}, device {options.device}{', bf16 autocast' if options.bf16 else ''}, "
          f"{options.threads} thread(s); k={options.k}, {options.attack_steps} attack steps, retain batch "
          f"{options.retain_batch}, {options.ddim_steps}-step DDIM schedule; median of {options.steps} alternating "
          "iterations (sampling length n drawn per iteration, the same sequence for every row)")
    width = max(len(name) for name in measured)
    print(f"| {'iteration':<{width}} | {'seconds':>8} | {'x ESD':>6} |")
    print(f"|{'-' * (width + 2)}|{'-' * 10}|{'-' * 8}|")
    for name, seconds in measured.items():
        print(f"| {name:<{width}} | {seconds:8.4f} | {seconds / esd:6.2f} |")
    print("\ntarget: AdvUnlearn (share_xt=True) <= 8x ESD (reference-style ~36x, research note §4)")


if __name__ == "__main__":
    main()
