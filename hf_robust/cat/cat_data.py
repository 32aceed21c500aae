"""CAT's training rows: adversarial rows tokenised through the chat template (harmful target and refusal on the same
prompt), mixed with trl-prepared utility rows, and padded by `CATDataCollator`."""

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, Features, Sequence, Value, interleave_datasets

from ..attacks.continuous import IGNORE_INDEX

ADVERSARIAL_COLUMNS = ("prompt", "target", "refusal")
FEATURES = Features(
    {
        "input_ids": Sequence(Value("int64")),
        "labels": Sequence(Value("int64")),
        "refusal_input_ids": Sequence(Value("int64")),
        "refusal_labels": Sequence(Value("int64")),
        "adversarial": Value("bool"),
    }
)


def _chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
        )
        return list(encoded["input_ids"])
    # A base model without a chat template: the plain concatenation, as trl does for non-conversational data.
    text = "".join(message["content"] for message in messages)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def completion_row(tokenizer, prompt: str, completion: str, max_length: int | None) -> tuple[list[int], list[int]]:
    """Ids of the chat `prompt` + assistant `completion`, and labels that are -100 up to where the completion starts.

    The completion starts where the tokenised prompt and prompt + completion diverge (trl's rule), so a template that
    renders the prompt differently inside the conversation still gets exact labels. `max_length` keeps the start.
    """
    user = [{"role": "user", "content": prompt}]
    prompt_ids = _chat_ids(tokenizer, user, add_generation_prompt=True)
    full_ids = _chat_ids(tokenizer, [*user, {"role": "assistant", "content": completion}], add_generation_prompt=False)
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    labels = [IGNORE_INDEX] * start + full_ids[start:]
    if max_length is not None:
        full_ids, labels = full_ids[:max_length], labels[:max_length]
    return full_ids, labels


def _has_target(labels: list[int]) -> bool:
    # Position 0 is never predicted by a causal LM, so a target there alone counts as truncated away.
    return any(label != IGNORE_INDEX for label in labels[1:])


def check_adversarial_dataset(dataset) -> None:
    """Raises, naming `adversarial_dataset`, unless it is a non-empty Dataset of non-empty strings in
    `ADVERSARIAL_COLUMNS`."""
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"`adversarial_dataset` must be a datasets.Dataset with columns {list(ADVERSARIAL_COLUMNS)}, "
            f"got {type(dataset).__name__}."
        )
    missing = [column for column in ADVERSARIAL_COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"`adversarial_dataset` lacks column(s) {missing}; it needs string columns {list(ADVERSARIAL_COLUMNS)}."
        )
    if len(dataset) == 0:
        raise ValueError("`adversarial_dataset` is empty.")
    for index, row in enumerate(dataset.select_columns(list(ADVERSARIAL_COLUMNS))):
        bad = [column for column in ADVERSARIAL_COLUMNS if not isinstance(row[column], str) or not row[column]]
        if bad:
            raise ValueError(f"`adversarial_dataset` row {index}: {bad} must be non-empty strings.")


def tokenize_adversarial(dataset: Dataset, tokenizer, max_length: int | None) -> Dataset:
    """Each row as the harmful target's ids/labels and the refusal's, on the same chat prompt; rows whose target or
    refusal `max_length` truncates away are dropped with a warning."""

    def tokenize(row):
        input_ids, labels = completion_row(tokenizer, row["prompt"], row["target"], max_length)
        refusal_input_ids, refusal_labels = completion_row(tokenizer, row["prompt"], row["refusal"], max_length)
        return {"input_ids": input_ids, "labels": labels, "refusal_input_ids": refusal_input_ids,
                "refusal_labels": refusal_labels, "adversarial": True}

    tokenized = dataset.map(tokenize, remove_columns=dataset.column_names, features=FEATURES)
    kept = tokenized.filter(lambda row: _has_target(row["labels"]) and _has_target(row["refusal_labels"]))
    if len(kept) < len(tokenized):
        warnings.warn(
            f"CATTrainer: dropped {len(tokenized) - len(kept)} of {len(tokenized)} adversarial rows whose target "
            f"or refusal is truncated away by max_length={max_length}.",
            stacklevel=4,  # the CATTrainer(...) call
        )
    if len(kept) == 0:
        raise ValueError(f"`adversarial_dataset`: no row keeps a target within max_length={max_length}.")
    return kept


def mix_rows(adversarial: Dataset | None, utility: Dataset, fraction: float, seed: int,
             stopping_strategy: str) -> Dataset:
    """Tokenised adversarial rows (`tokenize_adversarial`) and trl-prepared `utility` rows, each row adversarial with
    probability `fraction` (`datasets.interleave_datasets`, seeded)."""
    if fraction == 0:
        return utility
    if fraction == 1:
        return adversarial
    utility = utility.select_columns(["input_ids", "labels"]).map(
        lambda _: {"refusal_input_ids": [], "refusal_labels": [], "adversarial": False}, features=FEATURES
    )
    return interleave_datasets([adversarial, utility], probabilities=[fraction, 1 - fraction], seed=seed,
                               stopping_strategy=stopping_strategy)


@dataclass
class CATDataCollator:
    """Pads CAT rows to the right: `input_ids`/`attention_mask`/`labels` (away rows carry the harmful target, utility
    rows their SFT labels), `refusal_*` for the toward copies (empty for utility rows), and `adversarial` (batch,)."""

    pad_token_id: int

    def _pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        length = max(1, max(len(row) for row in rows))
        return torch.tensor([row + [value] * (length - len(row)) for row in rows], dtype=torch.long)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {}
        for prefix in ("", "refusal_"):
            ids = [list(example.get(f"{prefix}input_ids", [])) for example in examples]
            batch[f"{prefix}input_ids"] = self._pad(ids, self.pad_token_id)
            batch[f"{prefix}attention_mask"] = self._pad([[1] * len(row) for row in ids], 0)
            batch[f"{prefix}labels"] = self._pad([list(example.get(f"{prefix}labels", [])) for example in examples],
                                                 IGNORE_INDEX)
        batch["adversarial"] = torch.tensor([bool(example.get("adversarial", False)) for example in examples])
        return batch
