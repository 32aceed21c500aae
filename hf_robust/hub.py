"""Robustness model cards and Hub pushes.

Measured robustness lands in the card's standard `model-index` metadata through huggingface_hub's
`ModelCardData` / `EvalResult`, so the Hub, leaderboards and `ModelCard.load(...).data.eval_results` read it
like any other evaluation. One `RobustnessResult` becomes one `EvalResult`:

    RobustnessResult          EvalResult (model-index)
    task                 ->   task_type       (task.type)
    dataset              ->   dataset_name    (dataset.name)
    dataset_type         ->   dataset_type    (dataset.type)
    split                ->   dataset_split   (dataset.split)
    metric               ->   metric_type     (metrics[].type)
    value                ->   metric_value    (metrics[].value)
    attack               ->   metric_config   (metrics[].config), also in metric_name "<metric> under <attack>"
    attack_config        ->   metric_args     (metrics[].args)
    attack_preset        ->   metric_args["preset"], also in metric_name "<metric> under <attack> (<preset>)"

The attack and its settings sit on the metric, not on the dataset, because huggingface_hub groups results by
(task, dataset type, config, split, revision) and keeps the dataset fields of the first result of each group only.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import CLIPTextModel, CLIPTextModelWithProjection, PreTrainedModel

__all__ = [
    "RobustnessResult",
    "PushResult",
    "build_robustness_card",
    "robustness_results_from_card",
    "push_robust_to_hub",
    "SUPPORTED_LIBRARIES",
]

SUPPORTED_LIBRARIES = ("transformers", "peft", "diffusers", "sentence-transformers")
TEXT_ENCODER_CLASSES = (CLIPTextModel, CLIPTextModelWithProjection)
# Diffusers pipeline component folders for text encoders: text_encoder, text_encoder_2, ...
TEXT_ENCODER_FOLDER = re.compile(r"text_encoder(_[0-9]+)?")
ACCEPTED_OBJECTS = (
    "a peft.PeftModel, a sentence_transformers.SentenceTransformer, a transformers CLIPTextModel or "
    "CLIPTextModelWithProjection with `subfolder` (e.g. 'text_encoder'), a dict {'text_encoder': model, "
    "'text_encoder_2': model} of those, or any other transformers.PreTrainedModel"
)
AUTO_CLASS_FOR_TASK = {"text-generation": "AutoModelForCausalLM"}
PEFT_AUTO_CLASS_FOR_TASK = {"text-generation": "AutoPeftModelForCausalLM"}
PRESET_KEY = "preset"  # the metric args key holding `RobustnessResult.attack_preset`


def _check_text(value: Any, name: str, *, optional: bool = False) -> None:
    """Raise TypeError/ValueError naming `name` unless `value` is a non-empty string (or None when optional)."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a string, got {type(value).__name__}.")
    if not value.strip():
        raise ValueError(f"`{name}` must be a non-empty string.")


def _plain_setting(value: Any, path: str) -> Any:
    """Return `value` as plain YAML data (str, int, float, bool, None, list, dict with str keys).

    Tuples become lists, numpy-style scalars become Python numbers and dict entries whose value is None are left
    out (huggingface_hub drops them from `model-index`), so that the card's YAML (written with `yaml.dump`, read
    with `yaml.safe_load`) gives the same value back.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain_setting(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"`{path}` keys must be strings, got {key!r}.")
            if item is not None:
                plain[key] = _plain_setting(item, f"{path}[{key!r}]")
        return plain
    raise TypeError(
        f"`{path}` must hold only str, int, float, bool, None, lists and dicts, got {type(value).__name__}."
    )


@dataclass
class RobustnessResult:
    """One robustness measurement: a metric of an attack run against the model on a dataset.

    Args:
        attack: Attack that was run, e.g. "embedding_attack", "gcg", "relearning", "gaslite".
        metric: Metric identifier, e.g. "attack_success_rate", "forget_nll", "top10_appeared".
        value: Measured value; any finite real number, stored as float.
        dataset: Dataset name shown on the card, e.g. "AdvBench".
        dataset_type: Dataset identifier (a Hub dataset id where there is one); defaults to `dataset`.
        task: Hub task identifier, e.g. "text-generation", "text-to-image", "sentence-similarity".
        split: Dataset split the attack was run on, if any.
        attack_config: The attack's settings (steps, epsilon, ...), so a reader knows how it was measured.
            Plain YAML data only; tuples are stored as lists and None entries left out. The key "preset" is
            reserved for `attack_preset`.
        attack_preset: Name of the evaluation preset that produced the value (`hf_robust.evaluation.presets`, e.g.
            "strong"), or None for a custom attack.
    """

    attack: str
    metric: str
    value: float
    dataset: str
    dataset_type: str | None = None
    task: str = "text-generation"
    split: str | None = None
    attack_config: dict[str, Any] = field(default_factory=dict)
    attack_preset: str | None = None

    def __post_init__(self) -> None:
        for name in ("attack", "metric", "dataset", "task"):
            _check_text(getattr(self, name), name)
        _check_text(self.dataset_type, "dataset_type", optional=True)
        _check_text(self.split, "split", optional=True)
        _check_text(self.attack_preset, "attack_preset", optional=True)
        if self.dataset_type is None:
            self.dataset_type = self.dataset
        if isinstance(self.value, bool) or not isinstance(self.value, numbers.Real):
            raise TypeError(f"`value` must be a real number, got {type(self.value).__name__}.")
        self.value = float(self.value)
        if not math.isfinite(self.value):
            raise ValueError(f"`value` must be finite, got {self.value}.")
        if not isinstance(self.attack_config, Mapping):
            raise TypeError(f"`attack_config` must be a dict, got {type(self.attack_config).__name__}.")
        if PRESET_KEY in self.attack_config:
            raise ValueError(f"`attack_config` must not have the key {PRESET_KEY!r}: it is reserved for `attack_preset` "
                             "on the card.")
        self.attack_config = _plain_setting(self.attack_config, "attack_config")

    def to_eval_result(self) -> EvalResult:
        """The huggingface_hub `EvalResult` that stores this result in a card's `model-index`."""
        preset = {PRESET_KEY: self.attack_preset} if self.attack_preset else {}
        return EvalResult(
            task_type=self.task,
            dataset_type=self.dataset_type,
            dataset_name=self.dataset,
            dataset_split=self.split,
            metric_type=self.metric,
            metric_value=self.value,
            metric_name=f"{self.metric} under {self.attack}" + (f" ({self.attack_preset})" if preset else ""),
            metric_config=self.attack,
            metric_args={**preset, **self.attack_config} or None,
        )

    @classmethod
    def from_eval_result(cls, eval_result: EvalResult) -> RobustnessResult:
        """Read back a result written by `to_eval_result` (the attack is the metric's `config`)."""
        if not eval_result.metric_config:
            raise ValueError(
                f"`eval_result` for metric {eval_result.metric_type!r} has no metric config naming the attack, "
                "so it is not a robustness result."
            )
        settings = dict(eval_result.metric_args or {})
        preset = settings.pop(PRESET_KEY, None)
        return cls(
            attack=eval_result.metric_config,
            metric=eval_result.metric_type,
            value=eval_result.metric_value,
            dataset=eval_result.dataset_name,
            dataset_type=eval_result.dataset_type,
            task=eval_result.task_type,
            split=eval_result.dataset_split,
            attack_config=settings,
            attack_preset=preset,
        )


def robustness_results_from_card(card: ModelCard | str) -> list[RobustnessResult]:
    """The robustness results in a card's `model-index`.

    Args:
        card: A `ModelCard` or the text of a README.md.

    Results come in model-index order, which huggingface_hub groups by (task, dataset type, split): results written
    interleaved come back grouped. Evaluation results without an attack (plain metrics from other tools) are skipped.
    """
    if isinstance(card, str):
        card = ModelCard(card)
    if not isinstance(card, ModelCard):
        raise TypeError(f"`card` must be a ModelCard or README text, got {type(card).__name__}.")
    eval_results = card.data.eval_results or []
    return [RobustnessResult.from_eval_result(result) for result in eval_results if result.metric_config]


def _check_results(results: Any) -> list[RobustnessResult]:
    if isinstance(results, (str, bytes)) or not isinstance(results, Sequence):
        raise TypeError(f"`results` must be a list of RobustnessResult, got {type(results).__name__}.")
    if len(results) == 0:
        raise ValueError("`results` must hold at least one RobustnessResult.")
    for index, result in enumerate(results):
        if not isinstance(result, RobustnessResult):
            raise TypeError(f"`results[{index}]` must be a RobustnessResult, got {type(result).__name__}.")
    # model-index keeps one dataset name per (task, dataset type, split): a second name would be dropped silently.
    names: dict[tuple, str] = {}
    for result in results:
        key = (result.task, result.dataset_type, result.split)
        if names.setdefault(key, result.dataset) != result.dataset:
            raise ValueError(
                f"`results` give dataset type {result.dataset_type!r} two names ({names[key]!r} and "
                f"{result.dataset!r}); model-index stores one name per dataset type and split."
            )
    return list(results)


def _check_tags(tags: Any) -> list[str]:
    if isinstance(tags, str) or not isinstance(tags, Iterable):
        raise TypeError(f"`tags` must be a list of strings, got {type(tags).__name__}.")
    tags = list(tags)
    for index, tag in enumerate(tags):
        _check_text(tag, f"tags[{index}]")
    return tags


def _check_paper(paper: Any) -> dict[str, str] | None:
    """A trl-style `_paper` dict {"title", "id" (arXiv id), "citation" (BibTeX)}; None or {} means no paper."""
    if paper is None or (isinstance(paper, Mapping) and not paper):
        return None
    if not isinstance(paper, Mapping):
        raise TypeError(f"`paper` must be a dict with keys title, id, citation, got {type(paper).__name__}.")
    unknown = set(paper) - {"title", "id", "citation"}
    if unknown:
        raise ValueError(f"`paper` has unknown keys {sorted(unknown)}; allowed: title, id, citation.")
    _check_text(paper.get("title"), "paper['title']")
    _check_text(paper.get("id"), "paper['id']", optional=True)
    _check_text(paper.get("citation"), "paper['citation']", optional=True)
    return dict(paper)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _settings_cell(attack_config: dict[str, Any]) -> str:
    if not attack_config:
        return "defaults"
    return ", ".join(_markdown_cell(f"`{key}={value}`") for key, value in attack_config.items())


def _usage_snippet(library_name: str, model_name: str, base_model: str | None, task: str) -> str:
    """Python code that loads the model with its library."""
    if library_name == "transformers":
        auto_class = AUTO_CLASS_FOR_TASK.get(task, "AutoModel")
        return f'from transformers import {auto_class}\n\nmodel = {auto_class}.from_pretrained("{model_name}")'
    if library_name == "peft":
        auto_class = PEFT_AUTO_CLASS_FOR_TASK.get(task, "AutoPeftModel")
        return (
            f"from peft import {auto_class}\n\n"
            "# Loads the base model named in adapter_config.json, then this adapter.\n"
            f'model = {auto_class}.from_pretrained("{model_name}")'
        )
    if library_name == "sentence-transformers":
        return (
            "from sentence_transformers import SentenceTransformer\n\n"
            f'model = SentenceTransformer("{model_name}")\n'
            'embeddings = model.encode(["a query", "a passage"])'
        )
    return diffusers_usage({"text_encoder": "CLIPTextModel"}, model_name, base_model)


def diffusers_usage(components: Mapping[str, str], model_name: str, base_model: str | None) -> str:
    """Load each text encoder from its subfolder and, given the base pipeline, plug them into it."""
    class_names = sorted(set(components.values()))
    lines = [f"from transformers import {', '.join(class_names)}"]
    if base_model:
        lines.insert(0, "from diffusers import DiffusionPipeline")
    lines.append("")
    for folder, class_name in components.items():
        lines.append(f'{folder} = {class_name}.from_pretrained("{model_name}", subfolder="{folder}")')
    if base_model:
        arguments = ", ".join(f"{folder}={folder}" for folder in components)
        lines.append(f'pipeline = DiffusionPipeline.from_pretrained("{base_model}", {arguments})')
    return "\n".join(lines)


def build_robustness_card(
    results: Sequence[RobustnessResult],
    *,
    method: str,
    model_name: str,
    base_model: str | None = None,
    library_name: str = "transformers",
    tags: Iterable[str] = (),
    paper: Mapping[str, str] | None = None,
    datasets: str | list[str] | None = None,
    description: str = "",
    usage: str | None = None,
) -> ModelCard:
    """A model card whose YAML `model-index` holds the robustness results.

    Args:
        results: The measurements, one `RobustnessResult` each (at least one).
        method: Robustness method that produced the model, e.g. "cat", "npo", "advunlearn"; also a tag.
        model_name: Model name for `model-index` (the repo id when pushing) and for the usage snippet.
        base_model: Hub id of the model this one was made from.
        library_name: One of `SUPPORTED_LIBRARIES`; picks the usage snippet.
        tags: Extra Hub tags; "hf-robust" and `method` are always added.
        paper: trl-style `_paper` dict {"title", "id" (arXiv id), "citation" (BibTeX)}, cited in the card.
        datasets: Hub ids of the datasets the model was trained on (card metadata `datasets`).
        description: Markdown paragraph describing the model; a sentence naming the method by default.
        usage: Python code for the usage section; by default it loads the model with `library_name`.

    Returns:
        `huggingface_hub.ModelCard`; `str(card)` is the README.md text.
    """
    results = _check_results(results)
    _check_text(method, "method")
    _check_text(model_name, "model_name")
    _check_text(base_model, "base_model", optional=True)
    if library_name not in SUPPORTED_LIBRARIES:
        raise ValueError(f"`library_name` must be one of {SUPPORTED_LIBRARIES}, got {library_name!r}.")
    tags = _check_tags(tags)
    paper = _check_paper(paper)
    if datasets is not None:
        dataset_list = [datasets] if isinstance(datasets, str) else datasets
        if not isinstance(dataset_list, (list, tuple)):
            raise TypeError(f"`datasets` must be a string or a list of strings, got {type(datasets).__name__}.")
        for index, dataset in enumerate(dataset_list):
            _check_text(dataset, f"datasets[{index}]")
        datasets = list(dataset_list)
    if not isinstance(description, str):
        raise TypeError(f"`description` must be a string, got {type(description).__name__}.")
    _check_text(usage, "usage", optional=True)

    tasks = {result.task for result in results}
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        library_name=library_name,
        pipeline_tag=tasks.pop() if len(tasks) == 1 else None,
        datasets=datasets,
        tags=["hf-robust", method, *tags],
        eval_results=[result.to_eval_result() for result in results],
    )

    sections = [f"# {model_name}"]
    intro = description.strip() or f"This model was made robust with **{method}** using the hf-robust library."
    if base_model:
        intro += f" It is derived from [{base_model}](https://huggingface.co/{base_model})."
    sections.append(intro)

    rows = [
        "| Attack | Metric | Value | Dataset | Split | Preset | Attack settings |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        cells = [result.attack, result.metric, f"{result.value:.4g}", result.dataset, result.split or "-",
                 result.attack_preset or "-"]
        cells = [_markdown_cell(cell) for cell in cells] + [_settings_cell(result.attack_config)]
        rows.append("| " + " | ".join(cells) + " |")
    sections.append(
        "## Robustness evaluation\n\n"
        "Each row is one attack run against this model. The same numbers are in the card metadata "
        "(`model-index`): the attack is the metric `config`, its settings are the metric `args` (with the "
        "evaluation preset, if any, under `preset`).\n\n" + "\n".join(rows)
    )

    code = usage if usage is not None else _usage_snippet(library_name, model_name, base_model, results[0].task)
    sections.append(f"## Usage\n\n```python\n{code.strip()}\n```")

    if paper:
        link = paper["title"]
        if paper.get("id"):
            link = f"[{link}](https://huggingface.co/papers/{paper['id']})"
        citation = f"This model was trained with {method}, introduced in {link}."
        if paper.get("citation"):
            citation += f"\n\n```bibtex\n{paper['citation'].strip()}\n```"
        sections.append(f"## Citation\n\n{citation}")

    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


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
