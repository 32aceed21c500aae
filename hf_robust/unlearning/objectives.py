"""Unlearning objectives as pure functions of per-sequence NLLs, logits or activations.

Every function returns one value per sequence (shape `(batch,)`), a SUM over that sequence's tokens or positions
where a mean is taken later: the trainer divides the batch sum by the matching count (tokens, sequences or
positions) of the whole accumulation window, so gradient accumulation and data parallelism give the big-batch result.
"""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL of each sequence, in float32.

    Args:
        logits: Tensor, shape (batch, seq, vocab).
        labels: Tensor, shape (batch, seq); -100 marks positions not scored. Position t is predicted from t-1.

    Returns:
        (nll, tokens): each shape (batch,); `nll` the sum of -log p(label) over scored tokens, `tokens` their count.
    """
    # Shift the labels, not the logits: slicing the logits would copy a (batch, seq, vocab) tensor on every call.
    next_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    token_nll = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), next_labels.reshape(-1), ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(next_labels.shape)
    return token_nll.sum(dim=1), (next_labels != IGNORE_INDEX).sum(dim=1)


def gradient_ascent_loss(nll: torch.Tensor) -> torch.Tensor:
    """GA (and GradDiff's forget term): -NLL. `nll` shape (batch,), summed over tokens; returns shape (batch,)."""
    return -nll


def npo_loss(nll: torch.Tensor, reference_nll: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: -(2/beta) log sigmoid(beta (NLL_theta - NLL_ref)), per sequence (Zhang et al., 2024).

    Args:
        nll, reference_nll: Tensor, shape (batch,): summed token NLL of each sequence under the model / reference.
        beta: inverse temperature (> 0).

    Returns:
        Tensor, shape (batch,). At NLL_theta = NLL_ref it is (2/beta) ln 2, with gradient -grad NLL_theta (GA's).
    """
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - reference_nll))


def simnpo_loss(nll: torch.Tensor, tokens: torch.Tensor, beta: float, delta: float = 0.0) -> torch.Tensor:
    """SimNPO: -(2/beta) log sigmoid(beta (NLL/|y| - delta)), reference-free and length-normalised (Fan et al., 2024).

    Args:
        nll: Tensor, shape (batch,), summed token NLL; tokens: Tensor, shape (batch,), scored-token counts.
        beta: inverse temperature (> 0); delta: reward margin.

    Returns:
        Tensor, shape (batch,).
    """
    return -(2.0 / beta) * F.logsigmoid(beta * (nll / tokens.clamp_min(1) - delta))


def kl_to_reference(logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed KL(p_ref || p_theta) of the next-token distributions at the scored positions, in float32.

    Args:
        logits, reference_logits: Tensor, shape (batch, seq, vocab).
        labels: Tensor, shape (batch, seq); only positions whose next label is not -100 count.

    Returns:
        Tensor, shape (batch,): the sum over scored positions (divide by their count for the token mean).
    """
    log_p = F.log_softmax(logits[:, :-1].float(), dim=-1)
    log_q = F.log_softmax(reference_logits[:, :-1].float(), dim=-1)
    per_position = (log_q.exp() * (log_q - log_p)).sum(dim=-1)
    return (per_position * (labels[:, 1:] != IGNORE_INDEX)).sum(dim=1)


def activation_mse(activations: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMU's squared error of layer activations to a target, summed over positions, averaged over hidden units.

    Args:
        activations: Tensor, shape (batch, seq, hidden).
        target: Tensor broadcastable to it: (hidden,) for the forget steering vector c*u, or (batch, seq, hidden)
            for the frozen model's retain activations.
        mask: Tensor, shape (batch, seq); 1 at attended positions.

    Returns:
        Tensor, shape (batch,): sum over attended positions of the hidden-mean squared error.
    """
    squared = (activations.float() - target.float()).pow(2).mean(dim=-1)
    return (squared * mask.to(squared.dtype)).sum(dim=1)


def random_unit_vector(size: int, seed: int) -> torch.Tensor:
    """RMU's fixed direction u: uniform in [0, 1)^size (as the reference RMU), normalised; shape (size,), float32."""
    vector = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm()


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in float32, or kept in float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def global_norm(tensors) -> torch.Tensor:
    """One L2 norm over all given tensors (None entries skipped), computed in (at least) float32; a scalar tensor."""
    tensors = [tensor for tensor in tensors if tensor is not None]
    if not tensors:
        return torch.zeros(())
    wide = [tensor for tensor in tensors if tensor.dtype in (torch.float32, torch.float64)]
    narrow = [tensor for tensor in tensors if tensor.dtype not in (torch.float32, torch.float64)]
    # One multi-tensor kernel for the float32/float64 tensors (hundreds of parameters); narrower ones are upcast.
    norms = (list(torch._foreach_norm(wide)) if wide else []) + [
        torch.linalg.vector_norm(at_least_float32(tensor)) for tensor in narrow]
    return torch.linalg.vector_norm(torch.stack([norm.to(norms[0].device) for norm in norms]))
