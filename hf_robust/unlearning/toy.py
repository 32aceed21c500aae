"""A toy memorisation task for unlearning: random token strings a tiny llama memorises, and simple facts for SmolLM2.

`toy_memorisation_data` draws forget and retain strings of random ordinary tokens of `tiny_tokenizer()` (its special
tokens excluded). They are stored as token ids (`input_ids`), not text: a random token sequence does not round-trip
through decode and byte-level BPE re-encoding (neighbouring tokens merge), while ids are exact, and every consumer
here (`UnlearnTrainer`, `relearning_attack`, `evaluate_unlearning`) takes `input_ids` columns as they are, adding no
special token. `toy_memorised_model` trains a tiny llama until it reproduces both sets, the starting point of the
unlearning benchmark (`benchmarks/unlearn_relearn.py`) and demo (`hf_robust.unlearning.demo`).

`SMOLLM2_FACTS` are short factual questions with short answers for the real SmolLM2-135M-Instruct.
"""

import math
import numbers

import torch
from datasets import Dataset

# (question, answer): common knowledge with a short answer. A benchmark keeps only those the model answers right.
SMOLLM2_FACTS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of England?", "London"),
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of China?", "Beijing"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Greece?", "Athens"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Australia?", "Canberra"),
    ("What is the capital of Portugal?", "Lisbon"),
    ("What is the capital of Austria?", "Vienna"),
    ("What is the capital of Ireland?", "Dublin"),
    ("What is the capital of Norway?", "Oslo"),
    ("What is the capital of Sweden?", "Stockholm"),
    ("What is the capital of Poland?", "Warsaw"),
    ("What is the capital of Kenya?", "Nairobi"),
    ("What is the capital of Peru?", "Lima"),
    ("What is the capital of Thailand?", "Bangkok"),
    ("What is the capital of the Netherlands?", "Amsterdam"),
    ("What is the capital of Belgium?", "Brussels"),
    ("What is the capital of Denmark?", "Copenhagen"),
    ("What is the capital of Finland?", "Helsinki"),
    ("What is the capital of Hungary?", "Budapest"),
    ("What is the capital of South Korea?", "Seoul"),
    ("What is the capital of Argentina?", "Buenos Aires"),
    ("What is the capital of Cuba?", "Havana"),
    ("What colour is the sky on a clear day?", "Blue"),
    ("What colour is grass?", "Green"),
    ("What colour is snow?", "White"),
    ("How many legs does a spider have?", "Eight"),
    ("How many days are there in a week?", "Seven"),
    ("How many continents are there?", "Seven"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("What is the closest star to the Earth?", "Sun"),
    ("What is the chemical symbol for gold?", "Au"),
    ("What is the chemical symbol for water?", "H2O"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("What gas do plants absorb from the air?", "Carbon dioxide"),
    ("What is the longest river in Africa?", "Nile"),
    ("Which planet is known as the Red Planet?", "Mars"),
]


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _ordinary_token_ids(tokenizer) -> list[int]:
    """Every id of `tokenizer` that is not a special token (bos, eos, pad are never drawn)."""
    special = set(tokenizer.all_special_ids)
    return [index for index in range(len(tokenizer)) if index not in special]


def toy_memorisation_data(
    seed: int = 0, n_forget: int = 16, n_retain: int = 32, length: int = 16
) -> tuple[Dataset, Dataset]:
    """Forget and retain sets of random token strings over the ordinary tokens of `tiny_tokenizer()`.

    Tokens are drawn uniformly (with replacement) from a `torch.Generator` seeded with `seed`, forget rows first,
    so the same arguments give the same rows. Each row is `length` token ids with no special token.

    Args:
        seed: Integer >= 0 seeding the draw.
        n_forget, n_retain: Rows of each set, >= 1 (use an even `n_forget` to split it in two halves).
        length: Tokens per row, >= 2 (the first token is never predicted, the rest are scored).

    Returns:
        (forget, retain): `datasets.Dataset`s with one column `input_ids` (lists of ints).
    """
    from ..testing.language import tiny_tokenizer

    seed = _check_int(seed, "seed", 0)
    n_forget, n_retain = _check_int(n_forget, "n_forget", 1), _check_int(n_retain, "n_retain", 1)
    length = _check_int(length, "length", 2)
    vocabulary = torch.tensor(_ordinary_token_ids(tiny_tokenizer()))
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(vocabulary), (n_forget + n_retain, length), generator=generator)
    rows = vocabulary[draws].tolist()
    return Dataset.from_dict({"input_ids": rows[:n_forget]}), Dataset.from_dict({"input_ids": rows[n_forget:]})


def _memorise(model, sequences: list[list[int]], steps: int, learning_rate: float, seed: int) -> list[float]:
    """Full-batch AdamW on the plain causal-LM NLL of `sequences` (all of equal length); returns the losses."""
    input_ids = torch.tensor(sequences)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    # Warm up, then decay: a constant large rate leaves the loss oscillating instead of reaching ~0.
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    losses = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            loss = model(input_ids=input_ids, labels=input_ids).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    model.eval()
    return losses


def toy_memorised_model(
    seed: int = 0, steps: int = 200, learning_rate: float = 1e-2, n_forget: int = 16, n_retain: int = 32,
    length: int = 16, **model_overrides,
):
    """A tiny llama (`tiny_causal_lm`, hidden 64, 2 layers by default) that has memorised `toy_memorisation_data`.

    Trained on the forget and retain rows together with full-batch AdamW (one-cycle schedule) on the causal-LM NLL,
    on CPU in float32; the defaults bring the mean NLL of both sets near 0 and greedy decoding reproduces the second
    half of each row from its first half (check with `evaluate_unlearning`). About ten seconds on one core.

    Args:
        seed: Seeds the data, the initialisation and training; the same seed gives the same model.
        steps: Optimizer steps, >= 1. learning_rate: Peak AdamW learning rate, > 0.
        n_forget, n_retain, length: As in `toy_memorisation_data`.
        **model_overrides: Config fields passed to `tiny_causal_lm`, e.g. `hidden_size=128`.

    Returns:
        (model, tokenizer, forget, retain): the model in eval mode, its tokenizer and the two datasets.
    """
    from ..testing import tiny_causal_lm

    steps = _check_int(steps, "steps", 1)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real) or not (
        math.isfinite(learning_rate) and learning_rate > 0
    ):
        raise ValueError(f"`learning_rate` must be a finite number > 0, got {learning_rate!r}.")
    forget, retain = toy_memorisation_data(seed, n_forget, n_retain, length)
    model, tokenizer = tiny_causal_lm("llama", seed=seed, **model_overrides)
    _memorise(model, list(forget["input_ids"]) + list(retain["input_ids"]), steps, learning_rate, seed)
    return model, tokenizer, forget, retain
