"""`push_robust_to_hub`: save a model as safetensors with its robustness card and upload the folder."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi, ModelCard
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import CLIPTextModel, CLIPTextModelWithProjection, PreTrainedModel

from .card import build_robustness_card, diffusers_usage
from .results import RobustnessResult, _check_text

TEXT_ENCODER_CLASSES = (CLIPTextModel, CLIPTextModelWithProjection)
# Diffusers pipeline component folders for text encoders: text_encoder, text_encoder_2, ...
TEXT_ENCODER_FOLDER = re.compile(r"text_encoder(_[0-9]+)?")
ACCEPTED_OBJECTS = (
    "a peft.PeftModel, a sentence_transformers.SentenceTransformer, a transformers CLIPTextModel or "
    "CLIPTextModelWithProjection with `subfolder` (e.g. 'text_encoder'), a dict {'text_encoder': model, "
    "'text_encoder_2': model} of those, or any other transformers.PreTrainedModel"
)


@dataclass
class PushResult:
    """What `push_robust_to_hub` did.

    Attributes:
        commit: What `HfApi.upload_folder` returned (a `CommitInfo`; `commit.commit_url` links the commit).
        folder: The folder that was uploaded, when `save_directory` was given; None when a temporary folder was
            used (it is deleted after the upload).
        card: The model card written as README.md.
    """

    commit: CommitInfo
    folder: Path | None
    card: ModelCard


def _model_kind(obj: Any, subfolder: str | None) -> tuple[str, dict[str, PreTrainedModel]]:
    """Which library `obj` belongs to, and for diffusers its text encoders by subfolder.

    Checked in order: PeftModel, SentenceTransformer, diffusers text encoder(s), transformers PreTrainedModel.
    peft and sentence_transformers are looked up in `sys.modules` only: an instance implies its module is loaded.
    """
    peft = sys.modules.get("peft")
    sentence_transformers = sys.modules.get("sentence_transformers")
    text_encoders: dict[str, PreTrainedModel] = {}
    if peft is not None and isinstance(obj, peft.PeftModel):
        kind = "peft"
    elif sentence_transformers is not None and isinstance(obj, sentence_transformers.SentenceTransformer):
        kind = "sentence-transformers"
    elif isinstance(obj, Mapping):
        if not obj:
            raise TypeError(f"`obj` is an empty dict; expected {ACCEPTED_OBJECTS}.")
        for folder, encoder in obj.items():
            if not isinstance(folder, str) or not TEXT_ENCODER_FOLDER.fullmatch(folder):
                raise TypeError(
                    f"`obj` dict keys must be diffusers text encoder folders like 'text_encoder', got {folder!r}."
                )
            if not isinstance(encoder, TEXT_ENCODER_CLASSES):
                raise TypeError(
                    f"`obj[{folder!r}]` must be a CLIPTextModel or CLIPTextModelWithProjection, "
                    f"got {type(encoder).__name__}."
                )
        kind, text_encoders = "diffusers", dict(obj)
    elif isinstance(obj, PreTrainedModel):
        kind = "transformers"
    else:
        raise TypeError(f"`obj` must be {ACCEPTED_OBJECTS}; got {type(obj).__name__}.")

    if subfolder is not None:
        _check_text(subfolder, "subfolder")
        if not TEXT_ENCODER_FOLDER.fullmatch(subfolder):
            raise ValueError(
                f"`subfolder` must name a diffusers text encoder folder like 'text_encoder', got {subfolder!r}."
            )
        if not isinstance(obj, TEXT_ENCODER_CLASSES):
            raise ValueError(
                f"`subfolder` applies to a CLIPTextModel or CLIPTextModelWithProjection only, "
                f"got {type(obj).__name__}."
            )
        kind, text_encoders = "diffusers", {subfolder: obj}
    return kind, text_encoders


def _check_repo_id(repo_id: Any) -> None:
    if not isinstance(repo_id, str):
        raise TypeError(f"`repo_id` must be a string like 'owner/name', got {type(repo_id).__name__}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"`repo_id` must look like 'name' or 'owner/name', got {repo_id!r}: {error}") from error


def _save_model(obj: Any, kind: str, text_encoders: Mapping[str, PreTrainedModel], folder: Path) -> None:
    """Write the weights as safetensors in the layout the library's loader expects."""
    if kind == "sentence-transformers":
        obj.save(str(folder), create_model_card=False, safe_serialization=True)
    elif kind == "diffusers":
        for subfolder, encoder in text_encoders.items():
            encoder.save_pretrained(folder / subfolder)
    else:  # peft writes adapter_model.safetensors + adapter_config.json; transformers model.safetensors
        obj.save_pretrained(folder)


def push_robust_to_hub(
    obj: Any,
    repo_id: str,
    results: Sequence[RobustnessResult],
    *,
    method: str,
    base_model: str | None = None,
    tokenizer: Any = None,
    save_directory: str | os.PathLike | None = None,
    subfolder: str | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    tags: Iterable[str] = (),
    paper: Mapping[str, str] | None = None,
    datasets: str | list[str] | None = None,
    description: str = "",
    create_repo: bool = True,
) -> PushResult:
    """Save `obj` as safetensors with a robustness card as README.md, and upload the folder to the Hub.

    Every argument is checked before anything is written or uploaded.

    Args:
        obj: The model. Dispatched in this order:
            - `peft.PeftModel`: adapter (adapter_model.safetensors, adapter_config.json), library "peft";
              `base_model` defaults to the adapter config's `base_model_name_or_path`;
            - `sentence_transformers.SentenceTransformer`: its `save` layout, library "sentence-transformers";
            - diffusers text encoders: a `CLIPTextModel` / `CLIPTextModelWithProjection` with `subfolder`, or a dict
              {"text_encoder": model, "text_encoder_2": model}; each saved into its subfolder, library "diffusers";
            - any other `transformers.PreTrainedModel`: `save_pretrained`, library "transformers".
        repo_id: "name" or "owner/name"; also the card's model name.
        results: The robustness measurements for the card (see `build_robustness_card`).
        method: Robustness method name, e.g. "cat"; tagged and named in the card.
        base_model: Hub id of the original model, recorded in the card.
        tokenizer: Saved with `save_pretrained` next to the weights (into `tokenizer/` for diffusers).
            Not accepted with a SentenceTransformer, which saves its own.
        save_directory: Folder to write and upload (kept afterwards). Everything already in it is uploaded too.
            Defaults to a temporary folder deleted after the upload.
        subfolder: Diffusers component folder for a single text encoder, e.g. "text_encoder".
        commit_message: Defaults to "Upload <method> model with robustness card".
        private: Passed to `HfApi.create_repo`.
        token: Hub token for `HfApi`.
        tags, paper, datasets, description: Passed to `build_robustness_card`.
        create_repo: Call `HfApi.create_repo(repo_id, exist_ok=True, private=private)` first.

    Returns:
        `PushResult` with the upload's `CommitInfo`, the kept folder (or None) and the card.
    """
    kind, text_encoders = _model_kind(obj, subfolder)
    _check_repo_id(repo_id)
    _check_text(method, "method")
    _check_text(commit_message, "commit_message", optional=True)
    if private is not None and not isinstance(private, bool):
        raise TypeError(f"`private` must be a bool or None, got {type(private).__name__}.")
    if not isinstance(create_repo, bool):
        raise TypeError(f"`create_repo` must be a bool, got {type(create_repo).__name__}.")
    if tokenizer is not None:
        if kind == "sentence-transformers":
            raise ValueError("`tokenizer` must be None for a SentenceTransformer: `save` writes its own tokenizer.")
        if not callable(getattr(tokenizer, "save_pretrained", None)):
            raise TypeError(f"`tokenizer` must have a save_pretrained method, got {type(tokenizer).__name__}.")
    if save_directory is not None:
        if not isinstance(save_directory, (str, os.PathLike)):
            raise TypeError(f"`save_directory` must be a path, got {type(save_directory).__name__}.")
        if Path(save_directory).exists() and not Path(save_directory).is_dir():
            raise ValueError(f"`save_directory` {str(save_directory)!r} exists and is not a folder.")
    if kind == "peft" and base_model is None:
        base_model = obj.peft_config[obj.active_adapter].base_model_name_or_path or None

    usage = None
    if kind == "diffusers":
        usage = diffusers_usage(
            {folder: type(encoder).__name__ for folder, encoder in text_encoders.items()}, repo_id, base_model
        )
    card = build_robustness_card(
        results,
        method=method,
        model_name=repo_id,
        base_model=base_model,
        library_name=kind,
        tags=tags,
        paper=paper,
        datasets=datasets,
        description=description,
        usage=usage,
    )
    commit_message = commit_message or f"Upload {method} model with robustness card"

    if save_directory is not None:
        folder_context = contextlib.nullcontext(save_directory)
    else:
        folder_context = tempfile.TemporaryDirectory(prefix="hf_robust_push_")
    with folder_context as folder_name:
        folder = Path(folder_name)
        folder.mkdir(parents=True, exist_ok=True)
        _save_model(obj, kind, text_encoders, folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder / "tokenizer" if kind == "diffusers" else folder)
        card.save(folder / "README.md")

        api = HfApi(token=token)
        if create_repo:
            repo_id = api.create_repo(repo_id, exist_ok=True, private=private).repo_id
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return PushResult(commit=commit, folder=Path(save_directory) if save_directory is not None else None, card=card)
