"""The data side of `UnlearnTrainer`: forget/retain rows tokenised and truncated, each forget row paired with a
seeded random retain row, and the collator that pads both."""

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, concatenate_datasets

from .objectives import IGNORE_INDEX


def tokenized(dataset, name: str, tokenizer, max_length: int | None) -> Dataset:
    """`dataset` as `input_ids`/`labels` columns (labels = ids unless given), truncated, rows < 2 tokens dropped."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"`{name}` must be a datasets.Dataset with a `text` or `input_ids` column, "
                        f"got {type(dataset).__name__}.")
    columns = dataset.column_names
    if "input_ids" in columns:
        keep = ["input_ids"] + (["labels"] if "labels" in columns else [])

        def convert(row):
            ids = list(row["input_ids"])[:max_length]
            labels = list(row["labels"])[:max_length] if "labels" in row else ids
            if len(labels) != len(ids):
                raise ValueError(f"`{name}`: `labels` and `input_ids` differ in length in a row.")
            return {"input_ids": ids, "labels": labels}

        tokenized = dataset.select_columns(keep).map(convert)
    elif "text" in columns:
        if tokenizer is None:
            raise ValueError(
                f"`processing_class` (a tokenizer) is required to tokenise the `text` column of `{name}`.")
        if not all(isinstance(text, str) for text in dataset["text"]):
            raise ValueError(f"`{name}`: the `text` column must hold strings.")

        def tokenize(batch):
            ids = tokenizer(batch["text"], truncation=max_length is not None, max_length=max_length)["input_ids"]
            return {"input_ids": ids, "labels": ids}

        tokenized = dataset.map(tokenize, batched=True, remove_columns=columns)
    else:
        raise ValueError(f"`{name}` needs a `text` (raw strings) or `input_ids` (token ids) column; got {columns}.")
    kept = tokenized.filter(lambda row: sum(label != IGNORE_INDEX for label in row["labels"][1:]) > 0)
    if len(kept) == 0:
        raise ValueError(f"`{name}` has no row with a token to predict (at least 2 tokens after truncation).")
    if len(kept) < len(tokenized):
        warnings.warn(f"UnlearnTrainer: dropped {len(tokenized) - len(kept)} of {len(tokenized)} rows of `{name}` "
                      "with no token to predict.", stacklevel=3)
    return kept


def paired_dataset(forget: Dataset, retain: Dataset | None, seed: int) -> Dataset:
    """Columns `forget_input_ids`, `forget_labels` and, with `retain`, `retain_*` of a random retain row per forget
    row (drawn with replacement, seeded). Both inputs have `input_ids` and `labels` columns."""
    pairs = forget.rename_columns({"input_ids": "forget_input_ids", "labels": "forget_labels"})
    if retain is None:
        return pairs
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(len(retain), (len(forget),), generator=generator).tolist()
    partners = retain.select(indices).rename_columns({"input_ids": "retain_input_ids", "labels": "retain_labels"})
    return concatenate_datasets([pairs, partners.flatten_indices()], axis=1)


@dataclass
class UnlearnDataCollator:
    """Right-pads `forget_*` and `retain_*` rows: `{prefix}input_ids`, `{prefix}attention_mask`, `{prefix}labels`
    (-100 at padding), each of shape (batch, longest row of that prefix)."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {}
        for prefix in ("forget_", "retain_"):
            if f"{prefix}input_ids" not in examples[0]:
                continue
            ids = [list(example[f"{prefix}input_ids"]) for example in examples]
            labels = [list(example[f"{prefix}labels"]) for example in examples]
            length = max(len(row) for row in ids)

            def padded(rows, value):
                return torch.tensor([row + [value] * (length - len(row)) for row in rows])

            batch[f"{prefix}input_ids"] = padded(ids, self.pad_token_id)
            batch[f"{prefix}attention_mask"] = padded([[1] * len(row) for row in ids], 0)
            batch[f"{prefix}labels"] = padded(labels, IGNORE_INDEX)
        return batch


def pad_to(tensor: torch.Tensor, length: int, value: int = IGNORE_INDEX) -> torch.Tensor:
    if tensor.shape[1] >= length:
        return tensor
    return torch.cat([tensor, tensor.new_full((tensor.shape[0], length - tensor.shape[1]), value)], dim=1)


def stacked(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`stacked_input_ids`/`stacked_attention_mask`: forget rows then retain rows, right-padded to one length."""
    length = max(batch["forget_input_ids"].shape[1], batch["retain_input_ids"].shape[1])
    return {
        "stacked_input_ids": torch.cat([pad_to(batch[f"{prefix}input_ids"], length, 0) for prefix in
                                        ("forget_", "retain_")]),
        "stacked_attention_mask": torch.cat([pad_to(batch[f"{prefix}attention_mask"], length, 0) for prefix in
                                             ("forget_", "retain_")]),
    }
