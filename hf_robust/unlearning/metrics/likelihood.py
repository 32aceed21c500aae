"""Token log-probabilities and what is built on them: per-sequence NLL and Min-k% membership scores."""

from __future__ import annotations

import torch

from ...modeling import eval_mode
from .inputs import check_fraction, check_positive_int, encode_rows


def model_device(model) -> torch.device:
    """Where the model's first parameter lives: where its inputs go."""
    return next(model.parameters()).device


def right_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both of shape (batch, longest); padding on the right, so positions stay 0..n-1."""
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


def token_log_probs(
    model, sequences: list[list[int]], batch_size: int, starts: list[int] | None = None
) -> list[torch.Tensor]:
    """log p(x_t | x_<t) of every token from `starts[i]` on (default 1), computed in float32.

    Args:
        sequences: token ids; sequence i must be longer than `starts[i]` and `starts[i] >= 1`.
        batch_size: sequences per forward pass (right-padded with an attention mask).

    Returns:
        One CPU float32 tensor per sequence, shape (len(sequence_i) - starts[i],).
    """
    check_positive_int(batch_size, "batch_size")
    starts = [1] * len(sequences) if starts is None else starts
    device = model_device(model)
    results = []
    with eval_mode(model), torch.no_grad():
        for first in range(0, len(sequences), batch_size):
            batch = sequences[first : first + batch_size]
            input_ids, attention_mask = right_padded(batch, pad_id=0)  # pad id is irrelevant: masked and never scored
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            for row, sequence in enumerate(batch):
                start = starts[first + row]
                # Row by row: a float32 (length, vocab) copy stays small even for large vocabularies.
                row_log_probs = torch.log_softmax(logits[row, start - 1 : len(sequence) - 1].float(), dim=-1)
                targets = input_ids[row, start : len(sequence)].to(device)
                results.append(row_log_probs.gather(-1, targets[:, None]).squeeze(-1).cpu())
    return results


def sequence_nll(model, tokenizer, texts_or_ids, batch_size: int = 8, max_length: int = 512) -> torch.Tensor:
    """Mean token negative log-likelihood of each sequence (the causal-LM loss of that sequence alone).

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`).
        tokenizer: Its tokenizer; may be None when `texts_or_ids` is already tokenised.
        texts_or_ids: list of strings, list of token-id lists, or a `Dataset` with `text` or `input_ids`.
        batch_size: sequences per forward pass.
        max_length: tokens kept per sequence (truncation from the right).

    Returns:
        float32 tensor of shape (num_sequences,): mean over tokens 2..n of -log p(x_t | x_<t).
    """
    sequences = encode_rows(tokenizer, texts_or_ids, "texts_or_ids", max_length)
    return torch.stack([-values.mean() for values in token_log_probs(model, sequences, batch_size)])


def forget_retain_nll(
    model, tokenizer, forget, retain, batch_size: int = 8, max_length: int = 512
) -> dict[str, float]:
    """{"forget_nll", "retain_nll"}: the mean over sequences of `sequence_nll` on each set."""
    return {
        "forget_nll": float(sequence_nll(model, tokenizer, forget, batch_size, max_length).mean()),
        "retain_nll": float(sequence_nll(model, tokenizer, retain, batch_size, max_length).mean()),
    }


def min_k_percent(model, tokenizer, texts, k: float = 0.2, batch_size: int = 8, max_length: int = 512) -> torch.Tensor:
    """Min-k% Prob membership score (Shi et al., 2024) of each text.

    The mean of the lowest k% token log-probabilities, over max(1, int(k * n)) of the n predicted tokens. Higher
    (closer to 0) means the text looks more like training data; unlearning should lower it on the forget set.

    Returns:
        float32 tensor of shape (num_texts,).
    """
    check_fraction(k, "k")
    sequences = encode_rows(tokenizer, texts, "texts", max_length)
    return torch.stack([min_k_score(values, k) for values in token_log_probs(model, sequences, batch_size)])


def min_k_score(values: torch.Tensor, k: float) -> torch.Tensor:
    """Mean of the max(1, int(k * n)) smallest of the n token log-probs in `values` (shape (n,))."""
    return torch.topk(values, max(1, int(k * values.numel())), largest=False).values.mean()
