"""The prompt strings of a sentence-transformer retriever, resolved once and passed as an explicit `prompt=`.

`model.encode(texts, prompt_name=None)` prepends the prompt named by `model.default_prompt_name` (if any); with a
`prompt_name` it prepends `model.prompts[prompt_name]`. GASLITE tokenises the passage itself (it optimises ids), so it
must know the exact string the index will prepend: `document_prompt(model)` is that string for passages and
`query_prompt(model)` for queries, by sentence-transformers' rule. An override replaces the model's prompt (e.g.
E5's "passage: " / "query: " for a checkpoint that defines no prompts; "" for none). Every encoding in
`hf_robust.retrieval` passes the resolved string as `prompt=`, so attack, baselines and evaluation agree.
"""

from typing import Any

__all__ = ["document_prompt", "document_prompt_name", "query_prompt", "query_prompt_name", "resolve_prompt"]


def document_prompt_name(model: Any) -> str | None:
    """The name of the prompt the model prepends to documents: "document" if non-blank in `model.prompts`, else
    "passage" if non-blank, else None (then `model.encode(prompt_name=None)` applies `model.default_prompt_name`'s
    prompt, if any: see `document_prompt`)."""
    prompts = getattr(model, "prompts", None) or {}
    return next((name for name in ("document", "passage") if (prompts.get(name) or "").strip()), None)


def query_prompt_name(model: Any) -> str | None:
    """The name of the prompt the model prepends to queries: "query" if non-blank in `model.prompts`, else None
    (then the default prompt applies, as in `model.encode`: see `query_prompt`)."""
    prompts = getattr(model, "prompts", None) or {}
    return "query" if (prompts.get("query") or "").strip() else None


def _encode_prompt(model: Any, name: str | None) -> str:
    """The string `model.encode(prompt_name=name)` prepends: `prompts[name]`, or for None the prompt named by
    `model.default_prompt_name` (sentence-transformers' rule), or "" when there is none."""
    prompts = getattr(model, "prompts", None) or {}
    if name is None:
        name = getattr(model, "default_prompt_name", None)
    return (prompts.get(name) or "") if name is not None else ""


def resolve_prompt(model: Any, kind: str, override: str | None = None, argument: str | None = None) -> str:
    """The prompt string for `kind` "document" or "query" texts ("" for none): `override` when it is a str, else
    what `model.encode(texts, prompt_name=document_prompt_name(model) / query_prompt_name(model))` prepends.
    `argument` names `override` in the error (default: "<kind>_prompt")."""
    if override is not None and not isinstance(override, str):
        raise TypeError(f"`{argument or kind + '_prompt'}` must be None (the model's own prompt) or a str, got "
                        f"{type(override).__name__}.")
    if override is not None:
        return override
    return _encode_prompt(model, document_prompt_name(model) if kind == "document" else query_prompt_name(model))


def document_prompt(model: Any, override: str | None = None) -> str:
    """The prompt string prepended to passages (attacked and indexed alike); "" for none.

    `override` when it is a str ("" = no prompt); else exactly what `model.encode(texts,
    prompt_name=document_prompt_name(model))` prepends: the model's "document" or "passage" prompt, else its
    `default_prompt_name` prompt, else "". Every encoding of passages in hf_robust.retrieval passes this string as an
    explicit `prompt=`, so the attack optimises the embedding that the index stores.
    """
    return resolve_prompt(model, "document", override)


def query_prompt(model: Any, override: str | None = None) -> str:
    """The prompt string prepended to queries; "" for none. `override` when it is a str; else what
    `model.encode(texts, prompt_name=query_prompt_name(model))` prepends (the "query" prompt, else the default one)."""
    return resolve_prompt(model, "query", override)
