"""`hf-robust demo`: every landed method on an embedded default, each printing a before/after figure.

Each method issue appends one section (a function taking no argument, ≤ 2 minutes on CPU) to `SECTIONS`.
"""

import os
import time

# The demo never touches the network: models come from configs or from PyPI packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def real_models_section() -> None:
    """The two real models the methods are measured on, loaded offline from their PyPI packages."""
    import torch

    from .testing import load_minilm, load_smollm2

    retriever = load_minilm()
    query = "How do I bake sourdough bread?"
    passages = [
        "Mix flour, water and starter, let the dough rise overnight, then bake at 230 C.",
        "The new electric car charges to 80 percent in twenty minutes.",
        "Stocks fell sharply after the central bank raised interest rates.",
    ]
    scores = retriever.similarity(
        retriever.encode([query], convert_to_tensor=True), retriever.encode(passages, convert_to_tensor=True)
    )[0]
    print(f"all-MiniLM-L6-v2: cosine of {query!r} to three passages")
    for score, passage in sorted(zip(scores.tolist(), passages), reverse=True):
        print(f"  {score:+.3f}  {passage}")

    started = time.perf_counter()
    model, tokenizer = load_smollm2()
    question = "What is the capital of France?"
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"SmolLM2-135M-Instruct (loaded in {time.perf_counter() - started:.0f} s): "
          f"{question!r} -> {answer.strip()!r}")


def cat_section() -> None:
    """CAT on the toy refusal task: embedding-attack success before and after adversarial training."""
    from .cat.demo import cat_demo_section

    cat_demo_section()


def unlearning_section() -> None:
    """NPO vs NPO+SAM on memorised random strings: what a relearning attack brings back."""
    from .unlearning.demo import unlearning_demo_section

    unlearning_demo_section()


def erasure_section() -> None:
    """ESD vs AdvUnlearn on the toy erasure task: concept leakage under prompt attacks, and retain error."""
    from .erasure.demo import erasure_demo_section

    erasure_demo_section()


def gaslite_section() -> None:
    """GASLITE on all-MiniLM-L6-v2: one adversarial passage enters the top 10 of held-out concept queries."""
    from .retrieval.demo import gaslite_demo_section

    gaslite_demo_section()


SECTIONS = [
    ("Real models, offline", real_models_section),
    ("CAT: continuous adversarial training (toy refusal task)", cat_section),
    ("Unlearning that resists relearning: NPO vs NPO+SAM (toy memorisation task)", unlearning_section),
    ("Concept erasure: ESD vs AdvUnlearn under prompt attacks (toy diffusion model)", erasure_section),
    ("GASLITE: an adversarial passage against all-MiniLM-L6-v2 (shipped corpus and concept)", gaslite_section),
]


def run_demo() -> int:
    for title, section in SECTIONS:
        print(f"\n== {title} ==")
        started = time.perf_counter()
        section()
        print(f"({time.perf_counter() - started:.0f} s)")
    return 0
