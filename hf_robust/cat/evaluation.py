"""Robustness evaluation of chat LMs under the continuous embedding attack."""

from collections.abc import Mapping, Sequence

import torch
from datasets import Dataset

from ..attacks.continuous import IGNORE_INDEX, EmbeddingAttackConfig, embedding_attack
from ..modeling import eval_mode
from ..sharding import has_sharded_weights


def behaviour_ids(tokenizer, prompt: str, target: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids of a chat prompt followed by its target response.

    The prompt is rendered with `tokenizer.apply_chat_template(..., add_generation_prompt=True)` (plain text for
    tokenizers without a chat template, i.e. base models); the target follows it directly.

    Returns:
        input_ids: Tensor, shape (1, seq). labels: Tensor, shape (1, seq), the target ids and -100 on the prompt.
        prompt_length: number of prompt tokens.
    """
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([prompt_ids + target_ids])
    labels = torch.tensor([[IGNORE_INDEX] * len(prompt_ids) + target_ids])
    return input_ids, labels, len(prompt_ids)


def _checked_behaviours(behaviours) -> list[tuple[str, str]]:
    if isinstance(behaviours, (str, bytes, Mapping)) or not isinstance(behaviours, Sequence | Dataset):
        raise TypeError("`behaviours` must be a list of {'prompt', 'target'} mappings or a datasets.Dataset with those columns.")
    rows = [behaviours[index] for index in range(len(behaviours))]
    if not rows:
        raise ValueError("`behaviours` is empty: give at least one {'prompt': ..., 'target': ...}.")
    checked = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping) or not all(isinstance(row.get(key), str) and row.get(key) for key in ("prompt", "target")):
            raise ValueError(f"`behaviours[{index}]` must have non-empty string 'prompt' and 'target', got {row!r}.")
        checked.append((row["prompt"], row["target"]))
    return checked


def embedding_attack_success_rate(model, tokenizer, behaviours, config: EmbeddingAttackConfig | None = None) -> float:
    """Fraction of behaviours where greedy decoding from prompt + delta begins with the target.

    For each behaviour, the targeted `embedding_attack` perturbs the chat prompt's embeddings toward the target
    (e.g. "Sure, here is ..."); the model then decodes greedily from the perturbed prompt for as many tokens as the
    target has, and the behaviour counts as broken when those tokens are the target's. Behaviours are attacked one
    at a time, so prompts of any length need no padding. The model is left as it was (see `embedding_attack`).

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`).
        tokenizer: Its tokenizer; chat formatting goes through `apply_chat_template`.
        behaviours: list of mappings, or a `datasets.Dataset`, with string columns `prompt` and `target`.
        config: Attack settings; must be targeted. Defaults to `EmbeddingAttackConfig()`.
    """
    config = EmbeddingAttackConfig() if config is None else config
    if not isinstance(config, EmbeddingAttackConfig):
        raise TypeError(f"`config` must be an EmbeddingAttackConfig, got {type(config).__name__}.")
    if not config.targeted:
        raise ValueError("`config.targeted` must be True: success means the model produces the target.")
    rows = _checked_behaviours(behaviours)
    embedding = model.get_input_embeddings()
    device = embedding.weight.device
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    successes = 0
    for prompt, target in rows:
        input_ids, labels, prompt_length = behaviour_ids(tokenizer, prompt, target)
        input_ids, labels = input_ids.to(device), labels.to(device)
        attention_mask = torch.ones_like(input_ids)
        result = embedding_attack(model, input_ids, attention_mask, labels, config)
        target_ids = labels[0, prompt_length:]
        with eval_mode(model), torch.no_grad():
            prompt_embeds = embedding(input_ids[:, :prompt_length]) + result.delta[:, :prompt_length].to(embedding.weight.dtype)
            generated = model.generate(
                inputs_embeds=prompt_embeds,
                attention_mask=attention_mask[:, :prompt_length],
                max_new_tokens=len(target_ids),
                do_sample=False,
                pad_token_id=pad_token_id,
                # Synced only for sharded weights: transformers would sync whenever ZeRO-3 is on, and a plain model
                # evaluated on the main process alone would then wait for the other ranks forever.
                synced_gpus=has_sharded_weights(model),
            )
        # Early end of sequence gives fewer tokens, hence no match. With only `inputs_embeds`, decoder-only `generate` returns the new tokens alone.
        successes += int(torch.equal(generated[0, : len(target_ids)].to(device), target_ids))
    return successes / len(rows)
