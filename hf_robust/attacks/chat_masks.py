"""Which token positions belong to the user's turns of a chat, for attacks that may only perturb the user's text."""

from typing import Any

import torch


def _message_text(message: Any, name: str) -> str | None:
    if not isinstance(message, dict) or "role" not in message:
        raise ValueError(f"`{name}` must hold conversations: lists of {{'role': ..., 'content': ...}} dicts.")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or None
    raise ValueError(f"`{name}`: user_turn_mask supports string message contents only, got {type(content).__name__}.")


def _user_content_spans(tokenizer: Any, conversation: list[dict], template_kwargs: dict) -> list[tuple[int, int]]:
    """Character spans of the user messages' contents in the rendered conversation.

    The conversation is rendered twice by the tokenizer's own chat template: as is, and with every content replaced
    by a unique placeholder. The template text around the placeholders, with the contents put back (verbatim, or
    stripped for templates that trim), must rebuild the first rendering exactly; the spans are then exact.
    """
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, **template_kwargs)
    placeholders, skeleton_conversation = [], []
    for index, message in enumerate(conversation):
        text = _message_text(message, "conversations")
        if text is None:
            skeleton_conversation.append(message)
            continue
        placeholder = f"@@hf-robust-content-{index}@@"
        skeleton_conversation.append({**message, "content": placeholder})
        placeholders.append((placeholder, text, message["role"] == "user"))
    skeleton = tokenizer.apply_chat_template(skeleton_conversation, tokenize=False, **template_kwargs)
    for transform in (lambda text: text, str.strip):
        pieces, spans, cursor, length = [], [], 0, 0
        for placeholder, text, is_user in placeholders:
            at = skeleton.find(placeholder, cursor)
            if at < 0 or skeleton.count(placeholder) != 1:
                break
            pieces.append(skeleton[cursor:at])
            length += at - cursor
            text = transform(text)
            if is_user:
                spans.append((length, length + len(text)))
            pieces.append(text)
            length += len(text)
            cursor = at + len(placeholder)
        else:
            pieces.append(skeleton[cursor:])
            if "".join(pieces) == rendered:
                return spans
    raise ValueError(
        "user_turn_mask: the chat template does not insert the message contents verbatim (or stripped), so the "
        "user-turn tokens cannot be located; build `perturb_mask` yourself."
    )


def user_turn_mask(
    tokenizer: Any,
    conversations: list[list[dict]],
    *,
    padding: bool | str = True,
    truncation: bool = False,
    max_length: int | None = None,
    **template_kwargs: Any,
) -> Any:
    """Tokenize chats with the tokenizer's chat template and mark the tokens of the user messages' contents.

    The mask is what `embedding_attack(..., perturb_mask=...)` takes with `perturb="user_turn"`. It covers the
    tokens overlapping the text of "user" messages; role headers, template tokens, system and assistant messages are
    outside it. The template is only used through `tokenizer.apply_chat_template` (no template strings here), and
    the mask is aligned with the `input_ids` returned next to it: use those ids, or the mask may not line up.

    Args:
        tokenizer: A fast tokenizer (character offsets are needed) with a chat template.
        conversations: A list of conversations, each a list of {"role", "content": str} messages; one conversation
            alone is also accepted.
        padding, truncation, max_length: Passed to the tokenizer; padding follows `tokenizer.padding_side`.
        **template_kwargs: Passed to `apply_chat_template` (e.g. `add_generation_prompt=True`).

    Returns:
        `BatchEncoding` with `input_ids` and `attention_mask` (Tensor, shape (batch, seq)) and `user_turn_mask`
        (Tensor, shape (batch, seq), bool; False at padding).

    Raises:
        TypeError: the tokenizer is not a fast tokenizer.
        ValueError: malformed `conversations`, or a template that rewrites message contents.
    """
    if not isinstance(conversations, (list, tuple)) or len(conversations) == 0:
        raise ValueError("`conversations` must be a non-empty list of conversations.")
    if isinstance(conversations[0], dict):
        conversations = [conversations]
    for conversation in conversations:
        if not isinstance(conversation, (list, tuple)) or len(conversation) == 0:
            raise ValueError("`conversations` must be a list of non-empty lists of messages.")
        for message in conversation:
            _message_text(message, "conversations")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("`tokenizer` must be a fast tokenizer: user_turn_mask needs character offsets.")
    conversations = [list(conversation) for conversation in conversations]
    spans = [_user_content_spans(tokenizer, conversation, template_kwargs) for conversation in conversations]
    encoded = tokenizer.apply_chat_template(
        conversations, tokenize=True, return_dict=True, return_tensors="pt",
        padding=padding, truncation=truncation, max_length=max_length, **template_kwargs,
    )
    mask = torch.zeros(encoded["input_ids"].shape, dtype=torch.bool)
    for row, row_spans in enumerate(spans):
        for position, (start, end) in enumerate(encoded.encodings[row].offsets):
            # A token belongs to the user turn when its characters overlap a user content span.
            mask[row, position] = any(start < span_end and end > span_start for span_start, span_end in row_spans)
    encoded["user_turn_mask"] = mask & encoded["attention_mask"].bool()
    return encoded
