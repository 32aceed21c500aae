"""`build_robustness_card`: a model card whose `model-index` holds the robustness results."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .results import RobustnessResult, _check_text

SUPPORTED_LIBRARIES = ("transformers", "peft", "diffusers", "sentence-transformers")
AUTO_CLASS_FOR_TASK = {"text-generation": "AutoModelForCausalLM"}
PEFT_AUTO_CLASS_FOR_TASK = {"text-generation": "AutoPeftModelForCausalLM"}


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

