"""Where a GCG suffix sits in a chat input, found by tokenizing the whole rendered text once.

The user message is `prompt + suffix_text`, rendered by `tokenizer.apply_chat_template(..., add_generation_prompt=
True)` and followed by the target. The suffix text starts with the space that separates it from the prompt, so a
byte-level BPE tokenizer gives `['ĠFrance', 'Ġ!', 'Ġ!', ...]` exactly as it does for the rendered text; tokenizing the
text before the suffix on its own would give `['ĠFrance', 'Ġ']`, ids the text never produces. The suffix token span is
read from the offsets of the whole text; a token that straddles the prompt/suffix or suffix/template boundary is an
error (the suffix would then own part of the prompt).

A candidate suffix (its token ids) is valid when the whole sequence round-trips in context: decoding
`prefix + suffix + after + target` keeps the fixed text verbatim and re-tokenizing the decoded text gives the same
ids. Its text is the part of the decoded sequence between the fixed pieces.
"""

from dataclasses import dataclass
from typing import Any

PLACEHOLDER = "<<hf_robust_gcg_suffix>>"


@dataclass(frozen=True)
class SuffixLayout:
    """One behaviour's input around the suffix. Text: before_text + suffix + after_text + target_text.

    Attributes:
        prompt: The user request.
        before_text / after_text: The rendered chat text before and after the suffix (the user message is
            `prompt + suffix`, so `before_text` ends with the prompt).
        target_text: The wanted start of the reply.
        prefix_ids / after_ids / target_ids: list[int]. Token ids of the pieces, as the whole text tokenizes.
    """

    prompt: str
    before_text: str
    after_text: str
    target_text: str
    prefix_ids: list[int]
    after_ids: list[int]
    target_ids: list[int]

    def ids(self, suffix_ids: list[int]) -> list[int]:
        return self.prefix_ids + list(suffix_ids) + self.after_ids + self.target_ids

    def suffix_text(self, tokenizer: Any, suffix_ids: list[int]) -> str | None:
        """The text of `suffix_ids` in context, or None when the sequence does not round-trip."""
        ids = self.ids(suffix_ids)
        text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        tail = self.after_text + self.target_text
        if not (text.startswith(self.before_text) and text.endswith(tail)):
            return None
        if len(text) < len(self.before_text) + len(tail):
            return None
        if tokenizer(text, add_special_tokens=False)["input_ids"] != ids:
            return None
        return text[len(self.before_text) : len(text) - len(tail)]

    def prompt_text(self, suffix_text: str) -> str:
        """The rendered prompt the model answers: everything before the target."""
        return self.before_text + suffix_text + self.after_text


def render_around_suffix(tokenizer: Any, prompt: str) -> tuple[str, str]:
    """(before, after): the chat-rendered text of the user message `prompt + <suffix>` split around the suffix.
    Without a chat template the prompt is plain text: (prompt, "")."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt, ""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{prompt}{PLACEHOLDER}"}], add_generation_prompt=True, tokenize=False
    )
    if rendered.count(PLACEHOLDER) != 1:
        raise ValueError("`tokenizer.chat_template` must render the user message content verbatim exactly once.")
    return tuple(rendered.split(PLACEHOLDER))


def layout_suffix(tokenizer: Any, prompt: str, suffix_text: str, target: str) -> tuple[SuffixLayout, list[int]]:
    """Tokenize `render(prompt + suffix_text) + target` once and split the ids at the suffix and target.

    Returns:
        (layout, suffix_ids): the fixed pieces and the suffix's token ids in context.

    Raises:
        ValueError: the suffix or the target tokenize to nothing, or a token straddles a boundary of the suffix or of
            the target (the message names the boundary).
    """
    before, after = render_around_suffix(tokenizer, prompt)
    text = before + suffix_text + after + target
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    suffix_start, suffix_end = len(before), len(before) + len(suffix_text)
    target_start = suffix_end + len(after)

    def first_token_from(position: int, name: str) -> int:
        for index, (start, end) in enumerate(offsets):
            if start < position < end:
                raise ValueError(
                    f"A token spans the {name} boundary of {text[max(0, position - 20):position + 20]!r}: the "
                    f"{name} cannot be tokenized on its own. Change `suffix_init` or the target's first characters."
                )
            if start >= position and end > start:
                return index
        return len(ids)

    suffix_from = first_token_from(suffix_start, "prompt/suffix")
    after_from = first_token_from(suffix_end, "suffix end")
    target_from = first_token_from(target_start, "target start")
    if after_from == suffix_from:
        raise ValueError(f"The suffix {suffix_text!r} tokenizes to no tokens; give a non-blank `suffix_init`.")
    if target_from == len(ids):
        raise ValueError(f"`target` {target!r} tokenizes to no tokens.")
    layout = SuffixLayout(
        prompt=prompt,
        before_text=before,
        after_text=after,
        target_text=target,
        prefix_ids=ids[:suffix_from],
        after_ids=ids[after_from:target_from],
        target_ids=ids[target_from:],
    )
    return layout, ids[suffix_from:after_from]
