"""Per-behaviour attacks of the evaluation: each takes rows {"index", "prompt", "target"} and returns one outcome
dict per row (see `runner.AttackOutcome.rows`), so that `evaluate_robustness`, the training commands, the callbacks and
the benchmarks count success the same way."""

import torch
from tqdm.auto import tqdm

from ..attacks.continuous import IGNORE_INDEX, EmbeddingAttackConfig
from ..checks import checked_behaviours
from ..modeling import added_to_input_embeddings, eval_mode
from ..sharding import has_sharded_weights
from .judges import judge_refusals


def behaviour_ids(tokenizer, prompt: str, target: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids of a chat prompt followed by its target response.

    The prompt is rendered with `tokenizer.apply_chat_template(..., add_generation_prompt=True)` (plain text for
    tokenizers without a chat template, i.e. base models); the target follows it directly.

    Returns:
        input_ids: Tensor, shape (1, seq). labels: Tensor, shape (1, seq), the target ids and -100 on the prompt.
        prompt_length: number of prompt tokens.
    """
    prompt_ids = tokenizer(_chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([prompt_ids + target_ids])
    labels = torch.tensor([[IGNORE_INDEX] * len(prompt_ids) + target_ids])
    return input_ids, labels, len(prompt_ids)


def embedding_attack_success_rate(model, tokenizer, behaviours, config: EmbeddingAttackConfig | None = None,
                                  batch_size: int = 8, judge=None, max_new_tokens: int = 64) -> float:
    """Fraction of behaviours the targeted embedding attack breaks (`embedding_rows`).

    A behaviour is broken when, at some iterate of `embedding_attack` within `config.steps`, the model's greedy reply
    to the perturbed chat prompt starts with the target: every target token is the argmax of its prediction (an
    attacker stops at the first iterate that works). With `judge`, also when the judge finds no refusal in the greedy
    reply (`max_new_tokens`) under the last iterate. The model is left as it was.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`).
        tokenizer: Its tokenizer; chat formatting goes through `apply_chat_template`.
        behaviours: list of mappings, or a `datasets.Dataset`, with string columns `prompt` and `target`.
        config: Attack settings; must be targeted. Defaults to `EmbeddingAttackConfig()`.
        batch_size: Behaviours attacked together (independent rows of one batch). >= 1.
        judge: None (target forcing alone), or a callable (prompts, responses) -> list of bools, True = refused,
            e.g. `RefusalJudge()`. On a model that cannot refuse in words (a tiny test model) every reply passes it.
    """
    config = EmbeddingAttackConfig() if config is None else config
    if not isinstance(config, EmbeddingAttackConfig):
        raise TypeError(f"`config` must be an EmbeddingAttackConfig, got {type(config).__name__}.")
    if not config.targeted:
        raise ValueError("`config.targeted` must be True: success means the model produces the target.")
    rows = [{"index": index, "prompt": prompt, "target": target}
            for index, (prompt, target) in enumerate(checked_behaviours(behaviours))]
    with eval_mode(model):
        outcomes = embedding_rows(model, tokenizer, rows, config, batch_size, tqdm(disable=True), judge,
                                  max_new_tokens)
    return sum(outcome["success"] for outcome in outcomes) / len(outcomes)


def refusal_rate(model, tokenizer, prompts: list[str], judge=None, max_new_tokens: int = 64,
                 batch_size: int = 8) -> tuple[float, list[dict]]:
    """(fraction refused, one row per prompt) of greedy answers to plain requests: over-refusal on benign requests,
    or clean refusal on harmful ones. `judge` as in `clean_rows` (`RefusalJudge()` by default)."""
    from .judges import RefusalJudge

    if isinstance(prompts, str) or not prompts or not all(isinstance(prompt, str) and prompt for prompt in prompts):
        raise ValueError("`prompts` must be a non-empty list of non-empty strings.")
    rows = [{"index": index, "prompt": prompt} for index, prompt in enumerate(prompts)]
    with eval_mode(model):
        outcomes = clean_rows(model, tokenizer, rows, judge or RefusalJudge(), max_new_tokens, batch_size,
                              tqdm(disable=True))
    return sum(row["refused"] for row in outcomes) / len(outcomes), outcomes


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def clean_rows(model, tokenizer, rows, judge, max_new_tokens: int, batch_size: int, bar) -> list[dict]:
    device = model.get_input_embeddings().weight.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues after the last token
    outcomes = []
    try:
        for chunk in _chunks(rows, batch_size):
            texts = [_chat_prompt(tokenizer, row["prompt"]) for row in chunk]
            encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(device)
            with torch.no_grad():
                # Synced only for sharded weights: transformers would sync whenever ZeRO-3 is on, and a plain model
                # evaluated on the main process alone would then wait for the other ranks forever.
                generated = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                           pad_token_id=pad_id, synced_gpus=has_sharded_weights(model))
            responses = tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
            refused = judge_refusals([row["prompt"] for row in chunk], responses, judge)
            for row, response, refusal in zip(chunk, responses, refused):
                outcomes.append({"index": row["index"], "prompt": row["prompt"], "success": not refusal,
                                 "refused": refusal, "response": response})
                bar.update(1)
            bar.set_postfix(asr=f"{sum(o['success'] for o in outcomes) / len(outcomes):.0%}")
    finally:
        tokenizer.padding_side = side
    return outcomes


def _chat_prompt(tokenizer, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
    return prompt


def embedding_rows(model, tokenizer, rows, config, batch_size: int, bar, judge=None,
                   max_new_tokens: int = 64) -> list[dict]:
    """Rows of the targeted embedding attack. "target_success": at some iterate every target token is the argmax;
    with `judge`, also "response" (the greedy reply under the returned, last iterate) and "refused" (the judge on it),
    and a row counts as broken ("success") on either, so that a reply which complies without the target's wording
    counts too. "first_success" is the first target-forcing iterate, else the last one for a judged success."""
    from ..attacks.continuous import embedding_attack

    device = model.get_input_embeddings().weight.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outcomes = []
    for chunk in _chunks(rows, batch_size):
        pieces = [behaviour_ids(tokenizer, row["prompt"], row["target"]) for row in chunk]
        length = max(ids.shape[1] for ids, _, _ in pieces)
        # Right padding: rows are independent in the attack (its loss is a sum of per-row losses).
        input_ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), length), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for i, (ids, row_labels, _) in enumerate(pieces):
            input_ids[i, : ids.shape[1]], labels[i, : ids.shape[1]] = ids[0], row_labels[0]
            attention_mask[i, : ids.shape[1]] = 1
        result = embedding_attack(model, input_ids.to(device), attention_mask.to(device), labels.to(device), config)
        norms = result.delta.norm(dim=-1).amax(dim=1) / max(result.radius, torch.finfo(torch.float32).tiny)
        if judge is not None:
            prompts = [ids[0, :prompt_length].tolist() for ids, _, prompt_length in pieces]
            responses = replies_under_perturbation(model, tokenizer, prompts, result.delta, max_new_tokens)
            refused = judge_refusals([row["prompt"] for row in chunk], responses, judge)
        last = result.success_history.shape[0] - 1  # the returned iterate
        for i, row in enumerate(chunk):
            successes = result.success_history[:, i].nonzero().flatten()
            first = int(successes[0]) if successes.numel() else None
            outcome = {"index": row["index"], "prompt": row["prompt"], "target_success": first is not None}
            if judge is not None:
                outcome.update(response=responses[i], refused=refused[i])
                first = last if first is None and not refused[i] else first
            outcomes.append({**outcome, "success": first is not None, "first_success": first,
                             "loss_history": result.row_losses[:, i].tolist(),
                             "delta_norm_fraction": float(norms[i])})
            bar.update(1)
        bar.set_postfix(asr=f"{sum(o['success'] for o in outcomes) / len(outcomes):.0%}")
    return outcomes


def replies_under_perturbation(model, tokenizer, prompt_ids: list[list[int]], delta: torch.Tensor,
                               max_new_tokens: int) -> list[str]:
    """Greedy replies to token-id prompts whose embeddings are perturbed by `delta`.

    Args:
        prompt_ids: One list of prompt token ids per row.
        delta: Tensor, shape (batch, seq, hidden), as `embedding_attack` returns it for right-padded rows: row i's
            prompt perturbation sits at positions [0, len(prompt_ids[i])); later positions are ignored.
    """
    device = model.get_input_embeddings().weight.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    length = max(map(len, prompt_ids))
    # Left padding, as generation continues after the last token; delta moves with its prompt.
    input_ids = torch.full((len(prompt_ids), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    shifted = delta.new_zeros(len(prompt_ids), length, delta.shape[-1])
    for i, ids in enumerate(prompt_ids):
        input_ids[i, length - len(ids) :], attention_mask[i, length - len(ids) :] = torch.tensor(ids), 1
        shifted[i, length - len(ids) :] = delta[i, : len(ids)]
    with torch.no_grad(), added_to_input_embeddings(model, shifted.to(device), first_forward_only=True) as applied:
        generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                   max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                                   synced_gpus=has_sharded_weights(model))
    if not applied:
        raise RuntimeError("generation never embedded the prompt, so the perturbation was not applied.")
    return tokenizer.batch_decode(generated[:, length:], skip_special_tokens=True)


def gcg_rows(model, tokenizer, rows, config, bar) -> list[dict]:
    from ..attacks.gcg import gcg_attack

    outcomes = []
    for row in rows:
        result = gcg_attack(model, tokenizer, row["prompt"], row["target"], config)
        outcomes.append({"index": row["index"], "prompt": row["prompt"], "success": result.success,
                         "first_success": result.iterations if result.success else None,
                         "loss_history": result.history, "suffix": result.suffix})
        bar.update(1)
        bar.set_postfix(asr=f"{sum(o['success'] for o in outcomes) / len(outcomes):.0%}")
    return outcomes


def universal_rows(model, tokenizer, rows, config) -> list[dict]:
    from ..attacks.gcg import universal_gcg_attack

    result = universal_gcg_attack(model, tokenizer, [{"prompt": r["prompt"], "target": r["target"]} for r in rows],
                                  config)
    return [{"index": row["index"], "prompt": row["prompt"], "success": success,
             "first_success": result.iterations if success else None, "loss_history": result.history,
             "loss": loss, "suffix": result.suffix}
            for row, success, loss in zip(rows, result.successes, result.losses)]
